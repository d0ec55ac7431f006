"""Blocklists: hosts, plain-domain and adblock lines read as their authors mean them (no I/O)."""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Literal, TextIO

# a whole domain in one match: labels of [a-z0-9_] runs joined by hyphens (so none
# starts or ends with one), written to match without backtracking; label length is
# checked apart, and only for names long enough to break it
_LABEL_RE = r"[a-z0-9_]+(?:-+[a-z0-9_]+)*"
_DOMAIN = re.compile(rf"(?:{_LABEL_RE}\.)*{_LABEL_RE}")
# the common line, `0.0.0.0 name`, found many lines at a time (see `_add_block`). The
# name has _DOMAIN's shape, written as the regex engine runs fastest: both cases in the
# classes (IGNORECASE makes it 2.5 times slower) and one group level; label lengths
# are checked after
_NULL_LINE = re.compile(
    r"^(?:0\.0\.0\.0|127\.0\.0\.1|::1?|0:0:0:0:0:0:0:0)[ \t]+"
    r"([A-Za-z0-9_]+(?:(?:\.|-+)[A-Za-z0-9_]+)*)$\n?",
    re.MULTILINE | re.ASCII,
)
BLOCK_LINES = 8192  # lines per block: big enough that the per-block calls vanish
# a line longer than this (its ending included), or a hosts line naming more names, is
# a bad line: no list needs one, and one 32 MB line would be held, split and joined whole
MAX_LINE = 4096
MAX_NAMES = 256
# cosmetic adblock rules (element hiding, scriptlets, CSS): `domains##selector`, `#@#`,
# `#?#`, `#$#`, `#%#` and their `@` exceptions; the domains before the mark have no space
# (`0.0.0.0 ads.example ## note` is a hosts line with a comment)
_COSMETIC = re.compile(r"[^\s#]*#@?[?$%]?#")

Kind = Literal["block", "subdomains", "except"]
BLOCK: Kind = "block"  # the name and every name under it
SUBDOMAINS: Kind = "subdomains"  # only the names under it (`||*.name^`)
EXCEPT: Kind = "except"  # never blocked, whatever another line says (`@@||name^`)
Rules = tuple[tuple[Kind, str], ...]


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


def parse_line(line: str) -> Rules | Literal[False] | None:
    """One blocklist line in hosts, plain-domain or adblock form, as (kind, domain) rules.

    None for a line with nothing for a DNS server: blank, comment, header, or an adblock
    rule only a browser can apply (a cosmetic rule, a URL path, request-type options).
    False for a line that is malformed (counted, then skipped). A hosts line names as
    many domains as it lists (`0.0.0.0 a.example b.example`); a UTF-8 byte order mark
    is not text.
    """
    text = line.strip().lstrip("\ufeff")
    if not text or text[0] in "#![":
        return None
    if "#" in text:
        if _COSMETIC.match(text):
            # cosmetic adblock rules hide page elements: well formed, for browsers only;
            # EasyList-style lists are half made of them, and they are not junk
            return None
        text = text.split("#", 1)[0].strip()  # a hosts file's trailing comment
        if not text:
            return None
    if text[0] in "|@":
        return _adblock(text)
    parts = text.split(maxsplit=MAX_NAMES + 1)
    if len(parts) > MAX_NAMES + 1:
        return False
    if len(parts) == 1:
        if parts[0].lower() in _HOSTS_NOISE:
            return None
        if parts[0][0] in "/-":
            return False
        names = parts
    else:
        if parts[0] not in _NULL_HOSTS:
            return False
        names = [p for p in parts[1:] if p.lower() not in _HOSTS_NOISE]
        if not names:
            return None
    rules: Rules = tuple((BLOCK, n) for n in (_host_name(p) for p in names) if n is not None)
    return rules or False


def _host_name(name: str) -> str | None:
    name = name.lower()
    if name[-1] == ".":
        name = name.rstrip(".")
    if name[:2] == "*.":
        name = name[2:]
    return name if name and _domain_ok(name) else None


def _adblock(text: str) -> Rules | Literal[False] | None:
    # only whole-domain rules: `||ads.example^` with no path and no options other than
    # $important; `||*.ads.example^` for the names under it; `@@||name^` exceptions.
    # A URL rule (`|https://`, a path, `$third-party`, `$script`) is for a browser, which
    # sees the page and the request: nothing a DNS server can apply, and not malformed
    kind: Kind = BLOCK
    if text.startswith("@@"):
        kind, text = EXCEPT, text[2:]
    if not text.startswith("||"):
        return None
    rule, _, options = text[2:].partition("$")
    if options and options not in ("important", "all"):
        return None
    if not rule.endswith("^") or "/" in rule:
        return None
    rule = rule[:-1]
    if rule.startswith("*."):
        if kind == EXCEPT:
            return False
        kind, rule = SUBDOMAINS, rule[2:]
    if "*" in rule:
        return False
    name = normalize(rule)
    return ((kind, name),) if name else False


def bounded(stream: TextIO) -> Iterator[str]:
    """A text file's lines, each read as at most MAX_LINE + 1 characters: a longer line
    is its start (a bad line to `add_lines`), the rest skipped, never held whole."""
    while line := stream.readline(MAX_LINE + 1):
        if len(line) > MAX_LINE and line[-1] != "\n":
            while (rest := stream.readline(MAX_LINE + 1)) and rest[-1] != "\n":
                pass
        yield line


def key(name: str) -> float:
    """A name's place in the sorted arrays: its string hash as a float.

    Python sorts a list of floats about three times faster than one of 64-bit ints,
    and a million-entry list spends most of its load sorting. The float keeps the
    hash's top 53 bits (its sign and exponent too): a false match needs the hashes of
    two names to agree in those.
    """
    return float(hash(name))


RANGES = 16  # key ranges sorted one at a time: the sort's float objects are 1/16 of a list
_SPAN = 2.0**64 / RANGES  # keys are 64-bit hashes, evenly spread (SipHash)
_BOUNDS = tuple(-(2.0**63) + _SPAN * i for i in range(1, RANGES))


class _Pending:
    """Keys added and not yet sorted, kept as raw doubles in RANGES arrays by value.

    Sorting a million doubles at once makes a million float objects (32 MB with the
    list), and the arenas they lie in stay with the process after they are freed (a
    reload in the background left RSS 20 MB higher each time). Sorted a range at a
    time, the floats of one range (2 MB) are made, freed and their arenas reused by the
    next; the ranges, in order, are the whole list sorted.
    """

    __slots__ = ("ranges",)

    def __init__(self) -> None:
        self.ranges = [array("d") for _ in range(RANGES)]

    def append(self, value: float) -> None:
        self.ranges[bisect_left(_BOUNDS, value)].append(value)

    def add_sorted(self, values: Sequence[float]) -> None:
        """Add keys already in order: each range's share is one slice."""
        start = 0
        for bucket, bound in zip(self.ranges, _BOUNDS, strict=False):
            end = bisect_left(values, bound, start)
            bucket.extend(values[start:end])
            start = end
        self.ranges[-1].extend(values[start:])

    def in_order(self) -> array[float]:
        """Every key, in order (duplicates may stay: bisect finds one all the same); the
        ranges are emptied on the way, each before the next is sorted."""
        out = array("d")
        for at in range(RANGES):
            ordered = sorted(self.ranges[at])
            self.ranges[at] = array("d")
            out.extend(ordered)
            _fill_float_free_list()
            del ordered
        return out


@dataclass
class Blocklist:
    """Domains blocked with their subdomains, domains whose subdomains are blocked, and
    exceptions; built whole, then swapped in.

    Kept as sorted arrays of hash keys (see `key`), not sets of strings: a million
    entries take 8 MB instead of ~110 MB. A lookup is a binary search per suffix, and
    only cache misses look.
    """

    hashes: array[float] = field(default_factory=lambda: array("d"))
    subdomains: array[float] = field(default_factory=lambda: array("d"))
    exceptions: array[float] = field(default_factory=lambda: array("d"))
    bad_lines: int = 0
    head: str = ""  # the start of the first line with text: what `not_a_list` looks at
    sources: dict[str, int] = field(default_factory=dict)  # source -> rules
    source_bad: dict[str, int] = field(default_factory=dict)  # source -> bad lines
    # added, not yet sorted: raw doubles in ranges of key, so no float object lives per
    # entry until seal() sorts them, one range at a time (see `_Pending`)
    _pending: _Pending = field(default_factory=lambda: _Pending())
    _pending_sub: _Pending = field(default_factory=lambda: _Pending())
    _pending_exc: _Pending = field(default_factory=lambda: _Pending())

    def add_lines(self, source: str, lines: Iterable[str]) -> None:
        """Add a list's lines, with or without their line endings; one longer than
        MAX_LINE is a bad line (`bounded` cuts a file's lines so, as it reads them)."""
        count = bad = 0
        it = iter(lines)
        while batch := list(islice(it, BLOCK_LINES)):
            if max(map(len, batch)) > MAX_LINE:
                kept = [line for line in batch if len(line) <= MAX_LINE]
                bad += len(batch) - len(kept)
                batch = kept
                if not batch:
                    continue
            if not self.head:
                texts = (line.lstrip("\ufeff").strip() for line in batch)
                self.head = next((text[:64] for text in texts if text), "")
            added, failed = self._add_block("\n".join(map(str.rstrip, batch)), len(batch))
            count, bad = count + added, bad + failed
        self.sources[source] = self.sources.get(source, 0) + count
        self.source_bad[source] = self.source_bad.get(source, 0) + bad
        self.bad_lines += bad

    def _add_block(self, block: str, lines: int) -> tuple[int, int]:
        """(rules added, bad lines) for `lines` lines joined by newlines.

        A big list is almost all `0.0.0.0 name` lines: one regex call splits them from
        the rest, and their names are lowered and hashed in C, with no Python code per
        line. Any other line goes through `parse_line`.
        """
        parts = _NULL_LINE.split(block)  # [other lines, name, other lines, name, ...]
        names = parts[1::2]
        matched, count, bad = len(names), 0, 0
        if names:
            names = "\n".join(names).lower().split("\n")
            if max(map(len, names)) > 63:  # a label may be too long: look closer
                kept = [n for n in names if len(n) <= 63 or _domain_ok(n)]
                bad, names = len(names) - len(kept), kept
            if not _HOSTS_NOISE.isdisjoint(names):  # `127.0.0.1 localhost`: no rule
                names = [n for n in names if n not in _HOSTS_NOISE]
            self._pending.add_sorted(sorted(map(float, map(hash, names))))
            count = len(names)
        if matched < lines:  # some lines are of another form
            for line in "".join(parts[::2]).split("\n"):
                added, failed = self._add_line(line)
                count, bad = count + added, bad + failed
        return count, bad

    def _add_line(self, line: str) -> tuple[int, int]:
        found = parse_line(line)
        if found is None:
            return 0, 0
        if found is False:
            return 0, 1
        for kind, name in found:
            target = (
                self._pending if kind == BLOCK
                else self._pending_sub if kind == SUBDOMAINS
                else self._pending_exc
            )  # fmt: skip
            target.append(key(name))
        return len(found), 0

    def seal(self) -> Blocklist:
        """Sort what was added; returns self, ready for lookups."""
        for name, pending in (
            ("hashes", self._pending), ("subdomains", self._pending_sub),
            ("exceptions", self._pending_exc),
        ):  # fmt: skip
            pending.add_sorted(getattr(self, name))
            setattr(self, name, array("d"))  # not kept beside the new one
            setattr(self, name, pending.in_order())
        self._pending, self._pending_sub, self._pending_exc = _Pending(), _Pending(), _Pending()
        return self

    @classmethod
    def merge(cls, parts: Iterable[Blocklist]) -> Blocklist:
        merged = cls()
        for part in parts:
            merged._pending.add_sorted(part.hashes)
            merged._pending_sub.add_sorted(part.subdomains)
            merged._pending_exc.add_sorted(part.exceptions)
            merged.bad_lines += part.bad_lines
            merged.sources.update(part.sources)
            merged.source_bad.update(part.source_bad)
        return merged.seal()

    def __len__(self) -> int:
        return len(self.hashes) + len(self.subdomains)

    def __contains__(self, domain: str) -> bool:
        return _has(self.hashes, key(domain))

    def match(self, name: str) -> str | None:
        """The rule that blocks `name` (itself, a parent, or `*.parent`), unless a list's
        own exception covers it. Every cache miss asks: a plain loop, no generators."""
        hashes, subdomains = self.hashes, self.subdomains
        size = len(hashes)
        listed = None
        suffix, dot = name, name.find(".")
        while True:
            at_key = float(hash(suffix))  # key(), inline
            at = bisect_left(hashes, at_key)
            if at < size and hashes[at] == at_key:
                listed = suffix
                break
            if suffix is not name and subdomains and _has(subdomains, at_key):
                listed = "*." + suffix
                break
            if dot == -1:
                return None
            suffix = name[dot + 1 :]
            dot = name.find(".", dot + 1)
        if self.exceptions and any(_has(self.exceptions, key(s)) for s in suffixes(name)):
            return None
        return listed


# What reads as lines but is not a blocklist: a captive portal's login page in the list's
# place (hotel Wi-Fi answers every web request with one until someone logs in), an error
# page, binary junk. Taken as a list it would replace the last good copy with next to
# nothing and unblock everything, silently; so it counts as a failed load instead. The rule:
# - the first text starts with `<` (HTML, XHTML, XML), or a URL's server calls its body
#   text/html: no line of a hosts, plain-domain or adblock list starts with `<`;
# - it has lines that are not rules and no rule at all (a one-line "please log in");
# - its lines that are not rules outnumber its rules more than MAX_BAD_RATIO to 1 (3 MB of
#   random bytes: 22806 such lines for 104 "rules").
# Lines with nothing for DNS count as neither: comments, and the cosmetic and URL rules
# of EasyList-style lists (half of such a list) leave it judged by its domain rules.
MAX_BAD_RATIO = 10
WEB_PAGE_TYPES = ("text/html", "application/xhtml+xml")


def not_a_list(part: Blocklist, source: str, content_type: str = "") -> str | None:
    """Why `part`, read from `source`, is not a blocklist; None when it is one."""
    rules, bad = part.sources.get(source, 0), part.source_bad.get(source, 0)
    if content_type.split(";")[0].strip().lower() in WEB_PAGE_TYPES:
        return f"not a blocklist: the server sent a web page ({content_type})"
    if part.head.startswith("<"):
        return "not a blocklist: it is a web page (a Wi-Fi login page in its place?)"
    if bad and not rules:
        return "not a blocklist: no line of it is a rule"
    if bad > MAX_BAD_RATIO * rules:
        return (
            f"not a blocklist: more than {MAX_BAD_RATIO} lines that are not rules for each"
            f" rule ({bad} to {rules})"
        )
    return None


def _fill_float_free_list() -> None:
    """Before a million sorted floats are freed: fill CPython's free list of floats.

    The first floats freed would go to that list (100 of them), each pinning the 1 MiB
    arena it lives in, and sorted floats lie all over their arenas: 30 MB for a million-
    entry list stayed with the process until the next full collection. With the list
    full, every one of them is freed to its arena, and the emptied arenas go back.
    """
    spare = [float(n) for n in range(128)]
    del spare


def _has(values: array[float], wanted: float) -> bool:
    at = bisect_left(values, wanted)
    return at < len(values) and values[at] == wanted


def suffixes(name: str) -> Iterator[str]:
    """`a.b.c` -> `a.b.c`, `b.c`, `c`."""
    yield name
    start = name.find(".")
    while start != -1:
        yield name[start + 1 :]
        start = name.find(".", start + 1)
