"""UDP around the resolver: the hottest path inline, everything else handed to a task.

The hottest path answers the very bytes of a query answered before from a table of
exact answers, bounded by what its rows hold (EXACT_BYTES), counted as the cache counts
its entries: each row is the query's bytes, a copy of the answer, its own objects
(ROW_COST) and the cache entry it keeps alive, counted in full since the cache may have
dropped it. Bounded in rows alone (65,536), with ~1 KB answers it held 80 MB beside the
cache, uncounted.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from retreatkit.lognews import News
from retreatkit.nameserver import wire
from retreatkit.nameserver.cache import Entry, cost
from retreatkit.nameserver.gate import LOG_AGAIN, MAX_LOGGED, Gate
from retreatkit.nameserver.resolver import Resolver
from retreatkit.nameserver.stats import RATE_LIMITED, REFUSED

log = logging.getLogger("retreatkit.nameserver")

EXACT_BYTES = 8 * 1024 * 1024  # what the exact-bytes answers hold; past that, it starts over
ROW_COST = 256  # bytes a row holds besides the query, the answer and the cache entry
MAX_SLOW = 2048  # slow-path queries in progress at once; past that, new ones are dropped


class _Exact:
    __slots__ = ("answer", "cost", "entry", "generation", "until")

    def __init__(
        self, answer: bytes, until: float, generation: int, entry: Entry, cost: int
    ) -> None:
        self.answer = answer  # everything after the ID
        self.until = until  # when its TTLs would change, or it expires
        self.generation = generation
        self.entry = entry
        self.cost = cost  # the bytes it holds (the module docstring)


class UDPServer(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver, gate: Gate) -> None:
        self.resolver = resolver
        self.gate = gate
        self.clock = resolver.clock
        self.transport: asyncio.DatagramTransport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.slow = 0
        self.busy = News(LOG_AGAIN, MAX_LOGGED)  # dropping queries, said in the log once in a while
        self.tasks: set[asyncio.Future[None]] = set()  # the loop keeps only weak references
        # answers by the exact query bytes after the ID, good while their TTLs stand and
        # under the policy they were made under
        self.exact: dict[bytes, _Exact] = {}
        self.exact_bytes = 0  # what its rows hold

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        # looked up once: get_running_loop() is a getpid() system call each time (3.11)
        self.loop = asyncio.get_running_loop()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        ip = addr[0]
        gate, resolver, transport = self.gate, self.resolver, self.transport
        assert transport is not None
        stats = resolver.stats
        now = self.clock()
        if now >= resolver.next_tick:
            resolver.tick(now)
        # the gate's verdicts are cached per address: a dict lookup, not a call
        if not (gate.known.get(ip) or gate.allowed(ip)):
            query = wire.parse(data)
            if query is not None:  # REFUSED is no bigger than the query: nothing to amplify
                stats.answered(now, ip, "", REFUSED, 5, key=query.key)
                transport.sendto(wire.echo(data, query, rcode=5), addr)
            return
        if gate.rate and gate.over_limit(ip, int(now)):
            query = wire.parse(data)
            if query is not None:
                stats.answered(now, ip, "", RATE_LIMITED, 0, key=query.key)
                do = bool(query.key[-1] & wire.KEY_DO)
                transport.sendto(wire.truncated(wire.echo(data, query), query.edns, do), addr)
            return
        # the hottest path: these very bytes (but the ID) were answered, and still stand
        tail = data[2:]
        seen = self.exact.get(tail)
        if seen is not None and now < seen.until and seen.generation == resolver.generation:
            entry = seen.entry
            # stats.hit, inline
            stats.counts[entry.kind] += 1
            stats.clients[ip] += 1
            if not entry.hits:
                stats.dirty.append(entry)
            entry.hits += 1
            stats.recent.append((now, ip, entry))
            transport.sendto(data[:2] + seen.answer, addr)
            return
        query = wire.parse(data)
        if query is not None:
            found = resolver.hit(query, data, now)
            if found is not None and len(found[0]) <= query.udp_size:
                out, entry = found
                stats.hit(now, ip, entry)
                transport.sendto(out, addr)
                self._remember(tail, out, entry, now)
                return
        if self.slow >= MAX_SLOW:
            if self.busy.news("", now):
                log.warning(
                    "%d queries are in progress: new ones are dropped until some are"
                    " answered (a slow uplink, or a flood)", MAX_SLOW,
                )  # fmt: skip
            return
        self.slow += 1
        assert self.loop is not None
        task = self.loop.create_task(self._slow(data, addr, ip, query))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _remember(self, tail: bytes, out: bytes, entry: Entry, now: float) -> None:
        exact = self.exact
        size = len(tail) + len(out) + ROW_COST + cost(entry)
        old = exact.pop(tail, None)
        if old is not None:
            self.exact_bytes -= old.cost
        if self.exact_bytes + size > EXACT_BYTES:
            exact.clear()
            self.exact_bytes = 0
        exact[tail] = _Exact(out[2:], entry.fresh_until(now), self.resolver.generation, entry, size)
        self.exact_bytes += size

    async def _slow(self, data: bytes, addr: Any, ip: str, query: wire.Query | None) -> None:
        try:
            size = query.udp_size if query is not None else 512
            out = await self.resolver.resolve(data, ip, size, query)
            if out is not None and self.transport is not None:
                self.transport.sendto(out, addr)
        except Exception:  # one bad query must never take the server down
            log.exception("query from %s failed", ip)
        finally:
            self.slow -= 1
