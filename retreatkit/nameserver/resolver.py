"""The slow path and its policy: local names, blocks, forwarding, caching, serve-stale."""

from __future__ import annotations

import asyncio
import struct
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from retreatkit.nameserver import answers, wire
from retreatkit.nameserver.cache import STALE_TTL, Cache, Entry
from retreatkit.nameserver.policy import Policy, Record
from retreatkit.nameserver.upstream import UpstreamFailed, Upstreams, make_query

STALE_WAIT = 1.8  # RFC 8767: how long a client waits for a refresh before getting stale data
LOCAL_ZONES = ("retreat.lan", "home.arpa", "internal", "localhost")
CANARY = "use-application-dns.net"  # RFC 8484 deployments: tells browsers to keep to our DNS


@dataclass
class Stats:
    queries: int = 0
    cache_hits: int = 0
    blocked: int = 0
    local: int = 0
    stale: int = 0
    forwarded: int = 0
    servfail: int = 0
    refused: int = 0
    rate_limited: int = 0
    formerr: int = 0
    rebinding_dropped: int = 0
    domains: Counter[str] = field(default_factory=Counter)
    blocked_domains: Counter[str] = field(default_factory=Counter)
    clients: Counter[str] = field(default_factory=Counter)
    recent: deque[tuple[float, str, str, str, str]] = field(
        default_factory=lambda: deque(maxlen=200)
    )

    def note(self, client: str, name: str, rdtype: str, outcome: str) -> None:
        self.domains[name] += 1
        self.clients[client] += 1
        self.recent.append((round(time.time(), 3), client, name, rdtype, outcome))

    def trim(self, keep: int = 1000) -> None:
        """Top-N counters stay bounded however many names the LAN asks for."""
        for counter in (self.domains, self.blocked_domains, self.clients):
            if len(counter) > keep * 2:
                top = counter.most_common(keep)
                counter.clear()
                counter.update(dict(top))


@dataclass(frozen=True, slots=True)
class Question:
    name: str  # lowercase, no final dot
    rdtype: int
    dnssec: bool
    cd: bool


class Resolver:
    def __init__(
        self,
        policy: Policy,
        upstreams: Upstreams,
        cache: Cache | None = None,
        block_mode: str = "null",
        clock: Callable[[], float] = time.monotonic,
        stale_wait: float = STALE_WAIT,
    ) -> None:
        self.policy = policy
        self.generation = 0
        self.upstreams = upstreams
        self.cache = cache or Cache()
        self.block_mode = block_mode
        self.clock = clock
        self.stale_wait = stale_wait
        self.stats = Stats()
        self._inflight: dict[Question, asyncio.Future[dns.message.Message]] = {}
        self.hit_keys: Counter[bytes] = Counter()  # fast-path hits, named only when asked
        self.on_status: list[Callable[[], None]] = []  # fold in counts kept elsewhere

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        self.generation += 1
        self.cache.purge_local()

    # -- the fast path -------------------------------------------------------------------

    def fast(self, data: bytes) -> tuple[bytes | None, wire.Query | None]:
        """A cached answer for a plain query, or (None, parsed query or None)."""
        query = wire.parse(data)
        if query is None:
            return None, None
        entry = self.cache.get(query.key)
        if entry is None:
            return None, query
        now = self.clock()
        if entry.local:
            if entry.generation != self.generation:
                return None, query
            out = entry.template.render(query, data, None)
        elif now < entry.expires:
            out = entry.template.render(query, data, int(entry.expires - now))
        else:
            return None, query
        return out, query

    # -- the slow path -------------------------------------------------------------------

    async def resolve(self, data: bytes, client: str, max_size: int | None) -> bytes | None:
        """The answer to any query bytes, or None to stay silent (not a query at all)."""
        self.stats.queries += 1
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return self._formerr(data)
        if query.flags & dns.flags.QR:
            return None  # a response sent to us: never answer those (reflection loops)
        if query.opcode() != dns.opcode.QUERY:
            return self._finish(answers.error(query, dns.rcode.NOTIMP), max_size)
        if len(query.question) != 1:
            self.stats.formerr += 1
            return self._finish(answers.error(query, dns.rcode.FORMERR), max_size)
        response = await self._answer(query, data, client)
        return self._finish(response, max_size)

    def _formerr(self, data: bytes) -> bytes | None:
        self.stats.formerr += 1
        if len(data) < 12 or data[2] & 0x80:
            return None
        # header only, our ID echoed, QR and FORMERR set: the client learns it was us
        (qid,) = struct.unpack_from(">H", data)
        return struct.pack(">HHHHHH", qid, 0x8001, 0, 0, 0, 0)

    async def _answer(
        self, query: dns.message.Message, data: bytes, client: str
    ) -> dns.message.Message | bytes:
        q = query.question[0]
        name = q.name.to_text(omit_final_dot=True).lower()
        rdtype_text = dns.rdatatype.to_text(q.rdtype)
        if q.rdclass != dns.rdataclass.IN:
            self.stats.refused += 1
            self.stats.note(client, name, rdtype_text, "refused")
            return answers.error(query, dns.rcode.REFUSED)
        if q.rdtype == dns.rdatatype.ANY:
            self.stats.note(client, name, rdtype_text, "any")
            return answers.minimal_any(query)
        own = self._own_answer(query, name)
        if own is not None:
            response, outcome = own
            self.stats.note(client, name, rdtype_text, outcome)
            if outcome == "blocked":
                self.stats.blocked += 1
                self.stats.blocked_domains[name] += 1
            else:
                self.stats.local += 1
            self._cache_local(data, response)
            return response
        return await self._forward(query, data, client, name, rdtype_text)

    def _own_answer(
        self, query: dns.message.Message, name: str
    ) -> tuple[dns.message.Message, str] | None:
        policy = self.policy
        q = query.question[0]
        records = policy.local(name)
        if records is not None:
            return answers.local(query, records), "local"
        if q.rdtype == dns.rdatatype.PTR and name in policy.reverse:
            return answers.ptr(query, policy.reverse[name]), "local"
        if name == "localhost" or name.endswith(".localhost"):
            address = "127.0.0.1" if q.rdtype != dns.rdatatype.AAAA else "::1"
            rtype = "AAAA" if q.rdtype == dns.rdatatype.AAAA else "A"
            return answers.local(query, [Record(name, rtype, address)]), "local"
        if name == CANARY or answers.reverse_is_private(q.name):
            return answers.nxdomain(query), "local"
        if any(name == z or name.endswith("." + z) for z in LOCAL_ZONES):
            return answers.nxdomain(query), "local"
        listed = policy.blocked(name)
        if listed is not None:
            return answers.blocked(query, self.block_mode, listed), "blocked"
        return None

    def _cache_local(self, data: bytes, response: dns.message.Message) -> None:
        parsed = wire.parse(data)
        if parsed is None:
            return
        encoded = response.to_wire()
        offsets, question_end, _ = wire.ttl_offsets(encoded)
        template = wire.Template(bytearray(encoded), offsets, question_end)
        self.cache.put_local(parsed.key, template, answers.LOCAL_TTL, self.generation)

    async def _forward(
        self, query: dns.message.Message, data: bytes, client: str, name: str, rdtype: str
    ) -> dns.message.Message | bytes:
        q = query.question[0]
        dnssec = bool(query.ednsflags & dns.flags.DO)
        question = Question(name, q.rdtype, dnssec, bool(query.flags & dns.flags.CD))
        parsed = wire.parse(data)
        entry = self.cache.get(parsed.key) if parsed else None
        now = self.clock()
        if entry is not None and not entry.local and parsed is not None and now < entry.expires:
            # fresh, but too big for the fast path's UDP reply
            self.stats.cache_hits += 1
            self.stats.note(client, name, rdtype, "cached")
            return entry.template.render(parsed, data, int(entry.expires - now))
        refresh = self._refresh(question, query, parsed)
        stale_ok = entry is not None and not entry.local and now < entry.stale_until
        try:
            if stale_ok:
                # the refresh goes on after a stale answer, and caches what it gets
                reply = await asyncio.wait_for(asyncio.shield(refresh), self.stale_wait)
            else:
                reply = await refresh
        except (UpstreamFailed, TimeoutError) as exc:
            if stale_ok and entry is not None and parsed is not None:
                self.stats.stale += 1
                self.stats.note(client, name, rdtype, "stale")
                return self._stale(entry, parsed, data)
            self.stats.servfail += 1
            self.stats.note(client, name, rdtype, f"servfail: {exc}")
            return answers.error(query, dns.rcode.SERVFAIL)
        self.stats.forwarded += 1
        self.stats.note(client, name, rdtype, "forwarded")
        fresh = self.cache.get(parsed.key) if parsed else None
        if fresh is not None and parsed is not None and not fresh.local:
            return fresh.template.render(parsed, data, fresh.ttl_at(self.clock()))
        # not cacheable, or asked with other EDNS flags than the first asker
        return answers.from_upstream(query, reply, self.policy.allowed(name))[0]

    async def _fetch(
        self, question: Question, query: dns.message.Message, parsed: wire.Query | None
    ) -> dns.message.Message:
        """Ask upstream; cache the answer as built for the first asker's query."""
        upstream_query = make_query(query.question[0].name, question.rdtype, question.dnssec)
        if question.cd:
            upstream_query.flags |= dns.flags.CD
        reply = await self.upstreams.ask(upstream_query)
        response, ttl, dropped = answers.from_upstream(
            query, reply, self.policy.allowed(question.name)
        )
        if dropped:
            self.stats.rebinding_dropped += 1
        if parsed is not None and not reply.flags & dns.flags.TC:
            encoded = response.to_wire()
            offsets, question_end, _ = wire.ttl_offsets(encoded)
            template = wire.Template(bytearray(encoded), offsets, question_end)
            self.cache.put(parsed.key, template, ttl, self.clock(), self.generation)
        return reply

    def _stale(self, entry: Entry, parsed: wire.Query, data: bytes) -> bytes:
        return entry.template.render(parsed, data, STALE_TTL)

    def _refresh(
        self, question: Question, query: dns.message.Message, parsed: wire.Query | None
    ) -> asyncio.Future[dns.message.Message]:
        """One upstream query per question, however many clients ask at once."""
        running = self._inflight.get(question)
        if running is not None:
            return running
        future = asyncio.ensure_future(self._fetch(question, query, parsed))
        self._inflight[question] = future
        future.add_done_callback(lambda f: self._done(question, f))
        return future

    def _done(self, question: Question, future: asyncio.Future[dns.message.Message]) -> None:
        self._inflight.pop(question, None)
        if not future.cancelled():
            future.exception()  # retrieved: a failure nobody waited for is not an error

    def _finish(self, response: dns.message.Message | bytes, max_size: int | None) -> bytes:
        encoded = response.to_wire() if isinstance(response, dns.message.Message) else response
        if max_size is not None and len(encoded) > max_size:
            return truncate(encoded)
        return encoded

    def status(self) -> dict[str, Any]:
        for fold in self.on_status:
            fold()
        s = self.stats
        for key, count in self.hit_keys.items():
            s.domains[key_name(key)] += count
        self.hit_keys.clear()
        s.trim()
        return {
            "queries": s.queries,
            "cache_hits": s.cache_hits,
            "blocked": s.blocked,
            "local": s.local,
            "stale_served": s.stale,
            "forwarded": s.forwarded,
            "servfail": s.servfail,
            "refused": s.refused,
            "rate_limited": s.rate_limited,
            "formerr": s.formerr,
            "rebinding_dropped": s.rebinding_dropped,
            "spoofed_replies_ignored": self.upstreams.spoofs.ignored,
            "cache_entries": len(self.cache),
            "blocklist_entries": len(self.policy.blocklist),
            "blocklist_bad_lines": self.policy.blocklist.bad_lines,
            "upstreams": [
                {
                    "address": u.address,
                    "healthy": u.healthy(time.monotonic()),
                    "queries": u.queries,
                    "errors": u.errors,
                    "latency_ms": round(u.latency_ms, 2),
                }
                for u in self.upstreams.servers
            ],
            "top_domains": s.domains.most_common(10),
            "top_blocked": s.blocked_domains.most_common(10),
            "top_clients": s.clients.most_common(10),
            "recent": list(s.recent)[-50:],
        }


def key_name(key: bytes) -> str:
    """The query name inside a cache key (the key starts with the name in wire form)."""
    labels, pos = [], 0
    while pos < len(key) and key[pos]:
        labels.append(key[pos + 1 : pos + 1 + key[pos]].decode("ascii", "replace"))
        pos += 1 + key[pos]
    return ".".join(labels)


def truncate(encoded: bytes) -> bytes:
    """Header and question only, TC set: the client asks again over TCP."""
    _id, flags, qd, _an, _ns, _ar = wire.HEADER.unpack_from(encoded)
    pos = 12
    for _ in range(qd):
        pos = wire._skip_name(encoded, pos) + 4
    header = wire.HEADER.pack(_id, flags | wire.FLAG_TC, qd, 0, 0, 0)
    return header + encoded[12:pos]
