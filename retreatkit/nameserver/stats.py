"""What the nameserver counts: every answer on every path, top names bounded, recent queries.

Every answer counts once, in exactly one outcome, and goes once into the ring of recent
queries, so the ring's sequence number is the number of answers so far. The hottest
path only bumps an outcome, a client and the cache entry's own hit count; per-domain
counts fold those in once a second (tick), so they stay bounded whether or not anyone
reads them. Reading (top, recent) never changes anything.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from retreatkit.nameserver.wire import key_name, key_type

if TYPE_CHECKING:
    from retreatkit.nameserver.cache import Entry

# how a query was answered; a cache entry's kind is one of the first four
OUTCOMES = (
    "cached", "forwarded", "blocked", "local", "stale", "servfail", "refused",
    "rate_limited", "formerr",
)  # fmt: skip
CACHED, FORWARDED, BLOCKED, LOCAL, STALE, SERVFAIL, REFUSED, RATE_LIMITED, FORMERR = range(9)
KEEP = 1000  # names per top list kept between trims (trimmed at twice this)
RING = 4096  # recent queries kept for /nameserver/queries
TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
         33: "SRV", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 255: "ANY"}  # fmt: skip
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
          16: "BADVERS"}  # fmt: skip

# a ring item: (clock time, client, question: cache key or name, outcome, rcode, qtype
# (0: in the key), milliseconds); a cache hit is (clock time, client, entry): it costs
# the hottest path less to build
Item = tuple[float, str, "bytes | str", int, int, int, float] | tuple[float, str, "Entry"]


class Stats:
    def __init__(self, keep: int = KEEP, ring: int = RING) -> None:
        self.counts = [0] * len(OUTCOMES)
        self.domains: Counter[str] = Counter()
        self.blocked_domains: Counter[str] = Counter()
        self.clients: Counter[str] = Counter()
        self.recent: deque[Item] = deque(maxlen=ring)
        self.dirty: list[Entry] = []  # entries with hits not yet in `domains`
        self.keep = keep
        self.rebinding_dropped = 0
        self.cname_blocked = 0

    @property
    def queries(self) -> int:
        return sum(self.counts)

    def hit(self, now: float, client: str, entry: Entry) -> None:
        """A cached answer (the servers inline this on their hottest path)."""
        self.counts[entry.kind] += 1
        self.clients[client] += 1
        if not entry.hits:
            self.dirty.append(entry)
        entry.hits += 1
        self.recent.append((now, client, entry))

    def answered(
        self,
        now: float,
        client: str,
        name: str,
        outcome: int,
        rcode: int = 0,
        qtype: int = 0,
        ms: float = 0.0,
        key: bytes | None = None,
    ) -> None:
        """Any other answer: one count, its domain, its client, one ring item."""
        self.counts[outcome] += 1
        self.clients[client] += 1
        if name:
            self.domains[name] += 1
            if outcome == BLOCKED:
                self.blocked_domains[name] += 1
        question = key if key is not None else name
        self.recent.append((now, client, question, outcome, rcode, qtype, ms))

    def tick(self) -> None:
        """Fold cached hits into per-domain counts and keep the top lists bounded."""
        for entry in self.dirty:
            name = key_name(entry.key)
            self.domains[name] += entry.hits
            if entry.kind == BLOCKED:
                self.blocked_domains[name] += entry.hits
            entry.hits = 0
        self.dirty.clear()
        for counter in (self.domains, self.blocked_domains, self.clients):
            if len(counter) > self.keep * 2:
                top = counter.most_common(self.keep)
                counter.clear()
                counter.update(dict(top))

    def top(self, which: str, n: int = 10) -> list[tuple[str, int]]:
        """The top `n` of domains, blocked or clients, hits not yet folded included."""
        counter = {"domains": self.domains, "blocked": self.blocked_domains,
                   "clients": self.clients}[which]  # fmt: skip
        if which == "clients" or not self.dirty:
            return counter.most_common(n)
        merged = counter.copy()
        for entry in self.dirty:
            if which == "domains" or entry.kind == BLOCKED:
                merged[key_name(entry.key)] += entry.hits
        return merged.most_common(n)

    def since(
        self, after: int, limit: int, at: Callable[[float], str]
    ) -> tuple[int, list[dict[str, Any]]]:
        """Ring items with a sequence number above `after`, oldest first, at most `limit`;
        and the sequence number to ask after next time."""
        recent = self.recent
        last = self.queries
        first = last - len(recent) + 1  # the oldest item's sequence number
        start = max(after + 1, first)
        if after < 0:  # no cursor: the newest `limit`
            start = max(first, last - limit + 1)
        items = []
        for seq in range(start, min(last, start + limit - 1) + 1):
            items.append(_item(seq, recent[seq - first], at))
        return (items[-1]["seq"] if items else last), items


class Uncounted(Stats):
    """Counts no answer: for a question answered and counted once already, asked again
    because its answer was never sent (a TCP client had stopped reading, tcp.py)."""

    def hit(self, now: float, client: str, entry: Entry) -> None:
        pass

    def answered(
        self,
        now: float,
        client: str,
        name: str,
        outcome: int,
        rcode: int = 0,
        qtype: int = 0,
        ms: float = 0.0,
        key: bytes | None = None,
    ) -> None:
        pass

    @property
    def cname_blocked(self) -> int:
        return 0

    @cname_blocked.setter
    def cname_blocked(self, value: int) -> None:
        pass  # the block was counted with the answer


UNCOUNTED = Uncounted(keep=0, ring=0)


def _item(seq: int, item: Item, at: Callable[[float], str]) -> dict[str, Any]:
    question: bytes | str
    if len(item) == 3:
        when, client, entry = item
        question, outcome, rcode, qtype, ms = entry.key, entry.kind, entry.rcode, 0, 0.0
    else:
        when, client, question, outcome, rcode, qtype, ms = item
    if isinstance(question, bytes):
        name, qtype = key_name(question), key_type(question)
    else:
        name = question
    return {
        "seq": seq,
        "at": at(when),
        "client": client,
        "name": name,
        "type": TYPES.get(qtype, f"TYPE{qtype}") if qtype else "",
        "answer": OUTCOMES[outcome],
        "rcode": RCODES.get(rcode, str(rcode)),
        "ms": round(ms, 2),
    }
