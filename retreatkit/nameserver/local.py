"""Local names: the event's own records, their zones, wildcards and reverse names (no I/O).

What a local name answers follows the authoritative rules, so stubs cache it right:
a name with no data of the asked type but other data, or with names under it, is
NODATA, not NXDOMAIN (RFC 8020: NXDOMAIN means nothing exists below); a negative
answer carries the SOA of the zone's apex (RFC 2308 3); `*.zone` names every name
under `zone` that has no node of its own (RFC 4592).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from retreatkit.nameserver.blocklist import normalize, suffixes
from retreatkit.nameserver.errors import BadRecord, CnameLoop

# zones whose unknown names we answer ourselves (RFC 6761, RFC 8375, the event's own)
LOCAL_ZONES = ("retreat.lan", "home.arpa", "internal", "localhost")
MAX_CHAIN = 8  # CNAME hops we follow within local names


@dataclass(frozen=True, slots=True)
class Record:
    name: str  # lowercase, no final dot; `*.zone` for a wildcard
    rtype: str  # A, AAAA or CNAME
    value: str


def parse_record(text: str) -> Record:
    """`NAME=ADDRESS` (A or AAAA by the address) or `NAME=cname:TARGET`; NAME may be
    `*.zone` (every name under zone)."""
    name, eq, value = text.partition("=")
    if not eq:
        raise BadRecord(f"expected NAME=ADDRESS, got {text!r}")
    return make_record(name, value)


# what the admin endpoint takes: the name in the path, the value in the body
API_FORM = "PUT /nameserver/records/NAME, NAME like wiki.retreat.lan or *.retreat.lan"


def make_record(name: str, value: str, form: str = "NAME=ADDRESS") -> Record:
    """A record from its name and value given apart; `form` is what a bad name is told
    to look like, in the words of where it came from (a flag, the admin endpoint)."""
    name = name.strip()
    wildcard = name.startswith("*.")
    domain = normalize(name[2:] if wildcard else name)
    # each message names the part that is wrong, not the whole: the admin endpoint (and
    # the dashboard's Names screen) takes a name and a value the user gave apart
    if domain is None or "*" in (name[2:] if wildcard else name):
        raise BadRecord(f"not a name: {name!r} (expected {form})")
    owner = "*." + domain if wildcard else domain
    value = value.strip()
    if value.lower().startswith("cname:"):
        target = normalize(value[6:])
        if target is None or value[6:].strip().startswith("*"):
            raise BadRecord(f"bad CNAME target {value[6:].strip()!r} for {owner}")
        return Record(owner, "CNAME", target)
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise BadRecord(
            f"expected an IP address or cname:TARGET for {owner}, got {value!r}"
        ) from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        # `%eth0` names an interface of one machine: no other machine can reach it
        raise BadRecord(
            f"expected an IP address without %{address.scope_id} for {owner}, got {value!r}"
        )
    return Record(owner, "A" if address.version == 4 else "AAAA", str(address))


@dataclass(frozen=True, slots=True)
class Found:
    """What local data says about a name: records for it (wildcards made concrete), or
    that it exists without them (NODATA), or that it does not (NXDOMAIN); and the apex
    whose SOA a negative answer carries."""

    records: tuple[Record, ...]
    exists: bool
    apex: str


class LocalNames:
    def __init__(self, records: Iterable[Record] = (), zones: Iterable[str] = LOCAL_ZONES) -> None:
        self.records: dict[str, list[Record]] = {}
        for record in records:
            self.records.setdefault(record.name, []).append(record)
        self.zones = tuple(zones)
        # names that exist without records of their own: parents of records inside a
        # zone, up to its apex (`retreat.lan` itself), and the parent of each wildcard
        self.empty: set[str] = set()
        for owner in self.records:
            name = owner[2:] if owner.startswith("*.") else owner
            apex = self.zone_of(name)
            if owner.startswith("*."):
                self.empty.add(name)
            if apex is None:
                continue
            for parent in list(suffixes(name))[1:]:
                if len(parent) < len(apex):
                    break
                self.empty.add(parent)
        self.empty.update(self.zones)
        # every name whose suffixes lead to local data: one walk rejects all the others
        self.known = {o for o in self.records if not o.startswith("*.")} | self.empty
        self.reverse: dict[str, str] = {
            "1.0.0.127.in-addr.arpa": "localhost",
            ipaddress.ip_address("::1").reverse_pointer: "localhost",
        }
        for record in self.all():
            if record.rtype in ("A", "AAAA") and not record.name.startswith("*."):
                ptr = ipaddress.ip_address(record.value).reverse_pointer
                self.reverse.setdefault(ptr, record.name)

    def all(self) -> list[Record]:
        return [r for records in self.records.values() for r in records]

    def zone_of(self, name: str) -> str | None:
        for zone in self.zones:
            if name == zone or name.endswith("." + zone):
                return zone
        return None

    def find(self, name: str) -> Found | None:
        """Local data for `name`, or None when it is not ours to answer."""
        if not self._maybe(name):
            return None
        own = self.records.get(name)
        zone = self.zone_of(name)
        if own is not None:
            return Found(tuple(own), True, zone or name)
        if name == "localhost" or name.endswith(".localhost"):  # RFC 6761 6.3
            return Found(
                (Record(name, "A", "127.0.0.1"), Record(name, "AAAA", "::1")), True, "localhost"
            )
        if name in self.empty:
            return Found((), True, zone or name)
        wild = self._wildcard(name)
        if wild is not None:
            return wild
        if zone is not None:
            return Found((), False, zone)
        return None

    def _maybe(self, name: str) -> bool:
        """Whether any suffix of `name` leads to local data: one walk rejects the rest."""
        known = self.known
        if name in known:
            return True
        dot = name.find(".")
        while dot != -1:
            if name[dot + 1 :] in known:
                return True
            dot = name.find(".", dot + 1)
        return False

    def _wildcard(self, name: str) -> Found | None:
        # the closest encloser: the nearest parent that exists; its `*.` child, if any,
        # answers for `name` (RFC 4592 3.3.1)
        for parent in list(suffixes(name))[1:]:
            wild = self.records.get("*." + parent)
            if wild is not None:
                made = tuple(Record(name, r.rtype, r.value) for r in wild)
                return Found(made, True, self.zone_of(parent) or parent)
            if parent in self.records or parent in self.empty:
                return None
        return None

    def chase(self, name: str, rtype: str) -> tuple[list[Record], str | None]:
        """The records answering (name, rtype) with CNAMEs followed through local names;
        and the last target when the chain leaves local data (for the resolver to ask).
        CnameLoop when the chain comes back to a name it passed."""
        out: list[Record] = []
        seen = {name}
        current = name
        for _ in range(MAX_CHAIN):
            found = self.find(current)
            if found is None:
                return out, current if out else None
            cnames = [r for r in found.records if r.rtype == "CNAME"]
            if cnames and rtype != "CNAME":
                out.append(cnames[0])
                current = cnames[0].value
                if current in seen:
                    path = " -> ".join([name, *(r.value for r in out)])
                    raise CnameLoop(f"CNAME loop: {path}")
                seen.add(current)
                continue
            out += [r for r in found.records if r.rtype == rtype]
            return out, None
        return out, None

    def check_loops(self) -> None:
        """CnameLoop if any local CNAME, a wildcard's too, leads into a loop: records are
        checked before they are taken, so a loop is refused, never answered."""
        for owner, records in self.records.items():
            if any(r.rtype == "CNAME" for r in records):
                self.chase(owner, "A")
