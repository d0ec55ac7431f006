"""What the nameserver answers itself: blocklists, the allowlist, local names (no I/O)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
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
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels):
        return None
    return name


def parse_line(line: str) -> str | bool | None:
    """One blocklist line in hosts, plain-domain or adblock `||domain^` form.

    Returns the domain, None for a line with nothing to block (blank, comment,
    header), or False for a line that is malformed (counted, then skipped).
    """
    stripped = line.strip()
    if not stripped or stripped.startswith(("#", "!", "[")):
        return None
    if any(marker in stripped for marker in ("##", "#@#", "#?#", "#$#")):
        return False  # cosmetic adblock rules hide page elements: not a DNS rule
    text = stripped.split("#", 1)[0].strip()  # a hosts file's trailing comment
    if text.startswith("||"):
        rule = text[2:]
        # only whole-domain rules: `||ads.example^` with no path and no options
        # other than $important; cosmetic and path rules are not DNS rules
        rule, _, options = rule.partition("$")
        if options and options not in ("important", "all"):
            return False
        if not rule.endswith("^") or "/" in rule or "*" in rule:
            return False
        return normalize(rule[:-1]) or False
    if text.startswith(("@@", "/", "-")):
        return False
    parts = text.split()
    if len(parts) >= 2:
        if parts[0] not in _NULL_HOSTS:
            return False
        names = [p for p in parts[1:] if p.lower() not in _HOSTS_NOISE]
        if not names:
            return None
        return normalize(names[0]) or False
    if parts[0].lower() in _HOSTS_NOISE:
        return None
    return normalize(parts[0]) or False


@dataclass
class Blocklist:
    """Domains blocked with their subdomains; built whole, then swapped in."""

    domains: set[str] = field(default_factory=set)
    bad_lines: int = 0
    sources: dict[str, int] = field(default_factory=dict)  # source -> entries

    def add_lines(self, source: str, lines: Iterable[str]) -> None:
        count = 0
        add = self.domains.add
        for line in lines:
            found = parse_line(line)
            if found is None:
                continue
            if found is False:
                self.bad_lines += 1
                continue
            assert isinstance(found, str)
            add(found)
            count += 1
        self.sources[source] = count


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
        domains = self.blocklist.domains
        for suffix in suffixes(name):
            if suffix in domains:
                return None if self.allowed(name) else suffix
        return None
