"""Who answers a name: local data, the blocklists, a conditional forward, or the upstreams.

A Policy never changes; a change (lists reloaded, blocking paused, a record added)
makes a new one, and the resolver compares generations so the very next query, cached
or not, is answered under it. No I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from retreatkit.nameserver.blocklist import Blocklist, normalize, suffixes
from retreatkit.nameserver.local import Found, LocalNames, Record

CANARY = "use-application-dns.net"  # RFC 8484 deployments: tells browsers to keep to our DNS
TYPE_PTR = 12

# RFC 1918 / 6598 / 3927 / 4193 / 4291: reverse names that never leave the LAN
_PRIVATE_NETS = [
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.168.0.0/16", "::1/128", "::/128", "fc00::/7", "fe80::/10",
    )
]  # fmt: skip

LOCAL, PTR, NODATA, NXDOMAIN = "local", "ptr", "nodata", "nxdomain"
BLOCKED, FORWARD = "blocked", "forward"


@dataclass(frozen=True, slots=True)
class Route:
    """The decision for one name. `zone` is the forward rule's domain ("" for the default
    upstreams), the blocking rule, the PTR target or the apex of a negative answer."""

    kind: str
    zone: str = ""
    found: Found | None = None
    rebind_ok: bool = False  # private addresses may be answered (allowed or forwarded)


DEFAULT = Route(FORWARD)


@dataclass(frozen=True, eq=False)
class Policy:
    local: LocalNames = field(default_factory=LocalNames)
    allow: frozenset[str] = frozenset()
    blocklist: Blocklist = field(default_factory=Blocklist)
    forward: Mapping[str, tuple[tuple[str, int], ...]] = field(default_factory=dict)
    paused: bool = False

    @classmethod
    def build(
        cls,
        records: Iterable[Record] = (),
        allow: Iterable[str] = (),
        blocklist: Blocklist | None = None,
        forward: Mapping[str, tuple[tuple[str, int], ...]] | None = None,
    ) -> Policy:
        return cls(
            LocalNames(records),
            frozenset(d for d in (normalize(a) for a in allow) if d),
            blocklist or Blocklist(),
            dict(forward or {}),
        )

    def with_blocklist(self, blocklist: Blocklist) -> Policy:
        return replace(self, blocklist=blocklist)

    def with_records(self, records: Iterable[Record]) -> Policy:
        return replace(self, local=LocalNames(records, self.local.zones))

    def with_pause(self, paused: bool) -> Policy:
        return replace(self, paused=paused)

    def allowed(self, name: str) -> bool:
        return any(s in self.allow for s in suffixes(name))

    def blocked(self, name: str) -> str | None:
        """The rule that blocks `name`, unless allowed or blocking is paused."""
        if self.paused:
            return None
        listed = self.blocklist.match(name)
        if listed is None or self.allowed(name):
            return None
        return listed

    def forward_zone(self, name: str) -> str | None:
        forward = self.forward
        if not forward:
            return None
        for suffix in suffixes(name):
            if suffix in forward:
                return suffix
        return None

    def lan_only(self, name: str) -> bool:
        """A name only the LAN can answer: under a local zone (retreat.lan, home.arpa,
        internal, localhost), an mDNS name (.local), or one of a single label, which a
        stub may ask of LLMNR. Not a local record of a public name (a cache's override,
        `*.steamcontent.com`), nor a forwarded zone (a public domain may be one): public
        names point at those as they always did."""
        return self.local.zone_of(name) is not None or "." not in name or name.endswith(".local")

    def route(self, name: str, rdtype: int) -> Route:
        found = self.local.find(name)
        if found is not None and found.exists:
            return Route(LOCAL, found.apex, found)  # local data wins over every list
        if rdtype == TYPE_PTR and name in self.local.reverse:
            return Route(PTR, self.local.reverse[name])
        if name == CANARY:
            return Route(NXDOMAIN, CANARY)
        listed = self.blocked(name)
        if listed is not None:
            return Route(BLOCKED, listed)
        zone = self.forward_zone(name)
        if zone is not None:
            # the venue's own names behind its router: private addresses are their point
            return Route(FORWARD, zone, rebind_ok=True)
        if found is not None:
            return Route(NXDOMAIN, found.apex)
        if reverse_is_private(name):
            # a local address's reverse name exists (its PTR): other types are NODATA
            kind = NODATA if name in self.local.reverse else NXDOMAIN
            return Route(kind, _reverse_apex(name))
        return Route(FORWARD, "", rebind_ok=self.allowed(name)) if self.allow else DEFAULT


_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the IPv4 address in the last 32 bits


def is_private(address: str) -> bool:
    """A private address, or an IPv6 address that carries a private IPv4 one: mapped
    (`::ffff:192.168.1.1`, which a dual-stack socket connects to over IPv4), NAT64's
    well-known prefix, 6to4 (2002::/16) and the deprecated IPv4-compatible form (::/96).
    No public name has a reason to point at those (RFC 6052 3.1 and RFC 3056 forbid
    private addresses in them), and a translator or tunnel may take them to the LAN."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        packed = ip.packed
        if ip.ipv4_mapped is not None or ip in _NAT64 or packed[:12] == bytes(12):
            ip = ipaddress.IPv4Address(packed[12:])
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
    return any(ip in net for net in _PRIVATE_NETS if net.version == ip.version)


def reverse_is_private(name: str) -> bool:
    """A reverse name inside a private network's reverse zone (RFC 6303): it has no
    business going upstream. The address's labels are read from the zone down, as far as
    they go: a partial name (`16.172.in-addr.arpa`), a name under an address (DNS-SD's
    `b._dns-sd._udp.0.1.168.192.in-addr.arpa`) or one that cannot exist (`999.1.0.10`)
    is private when the network its labels name is."""
    for suffix, bits, base, parse in (
        (".in-addr.arpa", 8, 4, _octet),
        (".ip6.arpa", 4, 32, _nibble),
    ):
        if name.endswith(suffix):
            labels = name.removesuffix(suffix).split(".")[::-1][:base]
            value, known = 0, 0
            for label in labels:
                part = parse(label)
                if part is None:
                    break
                value, known = (value << bits) | part, known + 1
            if not known:
                return False
            prefix = known * bits
            total = base * bits
            network = ipaddress.ip_network((value << (total - prefix), prefix))
            return any(
                network.network_address in net and network.prefixlen >= net.prefixlen
                for net in _PRIVATE_NETS
            )
    return False


def _octet(label: str) -> int | None:
    # as the reverse tree writes them: no leading zeros, at most 255
    return (
        int(label) if label.isdigit() and str(int(label)) == label and int(label) <= 255 else None
    )


def _nibble(label: str) -> int | None:
    return int(label, 16) if len(label) == 1 and label in "0123456789abcdef" else None


def _reverse_apex(name: str) -> str:
    """The RFC 6303 zone a private reverse name sits in: its negative answer's SOA."""
    labels = name.split(".")[:-2]  # without in-addr.arpa / ip6.arpa
    if name.endswith(".in-addr.arpa"):
        first = labels[-1] if labels else ""
        keep = 1 if first in ("10", "127", "0") else 2
        return ".".join([*labels[-keep:], "in-addr", "arpa"])
    nibbles = labels[::-1]
    keep = 3 if nibbles[:2] == ["f", "e"] else 2 if nibbles[:1] == ["f"] else len(nibbles)
    return ".".join([*labels[len(labels) - keep :], "ip6", "arpa"])
