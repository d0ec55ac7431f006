"""What the nameserver answers itself: blocklists, the allowlist, local names (no I/O)."""

from __future__ import annotations

import ipaddress
import re
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field

# a whole domain in one match: labels of [a-z0-9_] runs joined by hyphens (so none
# starts or ends with one), written to match without backtracking; label length is
# checked apart, and only for names long enough to break it
_LABEL_RE = r"[a-z0-9_]+(?:-+[a-z0-9_]+)*"
_DOMAIN = re.compile(rf"(?:{_LABEL_RE}\.)*{_LABEL_RE}")


def _domain_ok(name: str) -> bool:
    if len(name) > 253 or _DOMAIN.fullmatch(name) is None:
        return False
    return len(name) <= 63 or all(len(label) <= 63 for label in name.split("."))


_NULL_HOSTS = {"0.0.0.0", "127.0.0.1", "::", "::1", "0:0:0:0:0:0:0:0"}
# names a hosts file maps for itself, never worth blocking
_HOSTS_NOISE = {
    "localhost", "localhost.localdomain", "local", "broadcasthost", "ip6-localhost",
    "ip6-loopback", "ip6-localnet", "ip6-mcastprefix", "ip6-allnodes", "ip6-allrouters",
    "ip6-allhosts", "0.0.0.0",
}  # fmt: skip


def normalize(name: str) -> str | None:
    """A domain in our canonical form (lowercase, no trailing dot), or None if malformed."""
    name = name.strip().rstrip(".").lower()
    if not name or len(name) > 253:
        return None
    if name.startswith("*."):
        name = name[2:]
    return name if _domain_ok(name) else None


def parse_line(line: str) -> str | bool | None:
    """One blocklist line in hosts, plain-domain or adblock `||domain^` form.

    Returns the domain, None for a line with nothing to block (blank, comment,
    header), or False for a line that is malformed (counted, then skipped).
    Written for speed: a million-line list must load in well under two seconds.
    """
    text = line.strip()
    if not text or text[0] in "#![":
        return None
    if "#" in text:
        if "##" in text or "#@#" in text or "#?#" in text or "#$#" in text:
            return False  # cosmetic adblock rules hide page elements: not a DNS rule
        text = text.split("#", 1)[0].strip()  # a hosts file's trailing comment
    if text[0] == "|":
        return _adblock(text)
    parts = text.split()
    if len(parts) == 1:
        name = parts[0]
        if name in _HOSTS_NOISE:
            return None
        if name[0] in "@/-":
            return False
    else:
        if parts[0] not in _NULL_HOSTS:
            return False
        name = parts[1]
        if name in _HOSTS_NOISE:
            rest = [p for p in parts[2:] if p not in _HOSTS_NOISE]
            if not rest:
                return None
            name = rest[0]
    name = name.lower()
    if name[-1] == ".":
        name = name.rstrip(".")
    if name[:2] == "*.":
        name = name[2:]
    return name if _domain_ok(name) else False


def _adblock(text: str) -> str | bool:
    # only whole-domain rules: `||ads.example^` with no path and no options other
    # than $important; cosmetic and path rules are not DNS rules
    if not text.startswith("||"):
        return False
    rule, _, options = text[2:].partition("$")
    if options and options not in ("important", "all"):
        return False
    if not rule.endswith("^") or "/" in rule or "*" in rule:
        return False
    return normalize(rule[:-1]) or False


@dataclass
class Blocklist:
    """Domains blocked with their subdomains; built whole, then swapped in.

    Kept as a sorted array of 64-bit hashes, not a set of strings: a million
    entries take 8 MB instead of ~110 MB. A lookup is a binary search per
    suffix, and only cache misses look (answers, blocks included, are cached).
    A false match needs a 64-bit hash collision.
    """

    hashes: array[int] = field(default_factory=lambda: array("q"))
    bad_lines: int = 0
    sources: dict[str, int] = field(default_factory=dict)  # source -> entries
    _pending: list[int] = field(default_factory=list)

    def add_lines(self, source: str, lines: Iterable[str]) -> None:
        count = 0
        pending = self._pending
        append = pending.append
        domain = _DOMAIN.fullmatch
        for line in lines:
            # the common line first, inline: `0.0.0.0 name`, a clean lowercase name
            parts = line.split()
            if len(parts) == 2 and parts[0] in _NULL_HOSTS:
                name = parts[1].lower()
                if len(name) <= 63 and name not in _HOSTS_NOISE and domain(name):
                    append(hash(name))
                    count += 1
                    continue
            found = parse_line(line)
            if found is None:
                continue
            if found is False:
                self.bad_lines += 1
                continue
            append(hash(found))
            count += 1
        self.sources[source] = count

    def seal(self) -> Blocklist:
        """Sort and deduplicate what was added; returns self, ready for lookups."""
        pending = self._pending
        pending.extend(self.hashes)
        pending.sort()  # duplicates may stay: bisect finds one of them all the same
        self.hashes = array("q", pending)
        self._pending = []
        return self

    @classmethod
    def merge(cls, parts: Iterable[Blocklist]) -> Blocklist:
        merged = cls()
        for part in parts:
            merged._pending.extend(part.hashes)
            merged.bad_lines += part.bad_lines
            merged.sources.update(part.sources)
        return merged.seal()

    def __len__(self) -> int:
        return len(self.hashes)

    def __contains__(self, domain: str) -> bool:
        key = hash(domain)
        at = bisect_left(self.hashes, key)
        return at < len(self.hashes) and self.hashes[at] == key


def suffixes(name: str) -> Iterable[str]:
    """`a.b.c` -> `a.b.c`, `b.c`, `c`."""
    yield name
    start = name.find(".")
    while start != -1:
        yield name[start + 1 :]
        start = name.find(".", start + 1)


@dataclass(frozen=True, slots=True)
class Record:
    name: str
    rtype: str  # A, AAAA or CNAME
    value: str


def parse_record(text: str) -> Record:
    """`NAME=ADDRESS` (A or AAAA by the address) or `NAME=CNAME:TARGET`."""
    name, eq, value = text.partition("=")
    domain = normalize(name)
    if not eq or domain is None:
        raise ValueError(f"expected NAME=ADDRESS, got {text!r}")
    value = value.strip()
    if value.lower().startswith("cname:"):
        target = normalize(value[6:])
        if target is None:
            raise ValueError(f"bad CNAME target in {text!r}")
        return Record(domain, "CNAME", target)
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"expected an IP address in {text!r}") from None
    return Record(domain, "A" if address.version == 4 else "AAAA", str(address))


class Policy:
    """Local records first, then the allowlist, then the blocklist."""

    def __init__(
        self,
        records: Iterable[Record] = (),
        allow: Iterable[str] = (),
        blocklist: Blocklist | None = None,
    ) -> None:
        self.records: dict[str, list[Record]] = {}
        self.reverse: dict[str, str] = {}
        for record in records:
            self.records.setdefault(record.name, []).append(record)
            if record.rtype in ("A", "AAAA"):
                ptr = ipaddress.ip_address(record.value).reverse_pointer
                self.reverse.setdefault(ptr, record.name)
        self.allow = {d for d in (normalize(a) for a in allow) if d}
        self.blocklist = blocklist or Blocklist()

    def with_blocklist(self, blocklist: Blocklist) -> Policy:
        new = Policy.__new__(Policy)
        new.records, new.reverse, new.allow = self.records, self.reverse, self.allow
        new.blocklist = blocklist
        return new

    def local(self, name: str) -> list[Record] | None:
        return self.records.get(name)

    def allowed(self, name: str) -> bool:
        return any(s in self.allow for s in suffixes(name))

    def blocked(self, name: str) -> str | None:
        """The blocklist entry that blocks `name` (itself or a parent), unless allowed."""
        blocklist = self.blocklist
        for suffix in suffixes(name):
            if suffix in blocklist:
                return None if self.allowed(name) else suffix
        return None
