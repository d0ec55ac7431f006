"""UDP and TCP (RFC 7766) around the resolver; LAN-only, with a per-client rate limit."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
import time
from collections import Counter
from typing import Any, cast

from retreatkit.nameserver import wire
from retreatkit.nameserver.resolver import Resolver, truncate

log = logging.getLogger("retreatkit.nameserver")

LAN = ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
       "100.64.0.0/10", "::1/128", "fc00::/7", "fe80::/10")  # fmt: skip
TCP_IDLE = 10.0
TCP_MAX_CONNECTIONS = 256
TCP_MAX_PENDING = 32  # pipelined queries in progress on one connection
EXACT_MAX = 65536  # exact-bytes answers kept; past that the table starts over
MAX_SLOW = 2048  # slow-path queries in progress at once; past that, new ones are dropped
_RUNNING: set[asyncio.Future[None]] = set()  # the loop keeps only weak references to tasks


class Gate:
    """Who may ask, and how fast. Over the limit a UDP client gets an empty truncated
    answer (it retries over TCP, which cannot be spoofed), so a NAT full of people is
    slowed, not cut off (the RRL "slip")."""

    def __init__(self, networks: list[str], rate: int) -> None:
        self.networks = [ipaddress.ip_network(n) for n in networks]
        self.rate = rate
        self.known: dict[str, bool] = {}
        self._window = 0
        self._counts: Counter[str] = Counter()

    def allowed(self, ip: str) -> bool:
        known = self.known.get(ip)
        if known is None:
            try:
                address = ipaddress.ip_address(ip.split("%")[0])
            except ValueError:
                return False
            if address.version == 6 and address.ipv4_mapped:
                address = address.ipv4_mapped
            known = any(address in net for net in self.networks if net.version == address.version)
            if len(self.known) > 65536:
                self.known.clear()
            self.known[ip] = known
        return known

    def over_limit(self, ip: str, window: int) -> bool:
        if window != self._window:
            self._window = window
            self._counts.clear()
        self._counts[ip] += 1
        return self._counts[ip] > self.rate


class _Exact:
    __slots__ = ("answer", "generation", "hits", "key", "second")

    def __init__(self, answer: bytes, second: int, generation: int, key: bytes) -> None:
        self.answer = answer
        self.second = second
        self.generation = generation
        self.key = key
        self.hits = 0


class UDPServer(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver, gate: Gate) -> None:
        self.resolver = resolver
        self.gate = gate
        self.transport: asyncio.DatagramTransport | None = None
        self.slow = 0
        # answers by the exact query bytes after the ID, good for the second they were
        # made in (TTLs count down by the second) and the policy they were made under
        self.exact: dict[bytes, _Exact] = {}
        resolver.on_status.append(self.flush_hits)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        ip = addr[0]
        gate, resolver, transport = self.gate, self.resolver, self.transport
        assert transport is not None
        # the gate's verdicts are cached per address: a dict lookup, not a call
        if not (gate.known.get(ip) or gate.allowed(ip)):
            resolver.stats.refused += 1
            query = wire.parse(data)
            if query is not None:  # REFUSED is no bigger than the query: nothing to amplify
                transport.sendto(_echo(data, query, rcode=5), addr)
            return
        stats = resolver.stats
        second = int(time.monotonic())
        if gate.rate and gate.over_limit(ip, second):
            stats.rate_limited += 1
            query = wire.parse(data)
            if query is not None:
                transport.sendto(truncate(_echo(data, query)), addr)
            return
        # the hottest path: these very bytes (but the ID) were answered this second
        tail = data[2:]
        seen = self.exact.get(tail)
        if seen is not None and seen.second == second and seen.generation == resolver.generation:
            seen.hits += 1  # folded into queries, hits and top domains when /status asks
            stats.clients[ip] += 1
            transport.sendto(data[:2] + seen.answer, addr)
            return
        out, query = resolver.fast(data)
        if out is not None and query is not None and len(out) <= query.udp_size:
            stats.queries += 1
            stats.cache_hits += 1
            stats.clients[ip] += 1
            resolver.hit_keys[query.key] += 1
            transport.sendto(out, addr)
            self._remember(tail, out, query.key, second)
            return
        if self.slow >= MAX_SLOW:
            return
        self.slow += 1
        size = query.udp_size if query is not None else 512
        task = asyncio.ensure_future(self._slow(data, addr, ip, size))
        _RUNNING.add(task)
        task.add_done_callback(_RUNNING.discard)

    def _remember(self, tail: bytes, out: bytes, key: bytes, second: int) -> None:
        exact = self.exact
        old = exact.get(tail)
        if old is not None and old.hits:
            self._fold(old)
        if old is None and len(exact) >= EXACT_MAX:
            self.flush_hits()
            exact.clear()
        exact[tail] = _Exact(out[2:], second, self.resolver.generation, key)

    def flush_hits(self) -> None:
        """Fold the per-entry hit counts into the resolver's counts and top domains."""
        for entry in self.exact.values():
            if entry.hits:
                self._fold(entry)

    def _fold(self, entry: _Exact) -> None:
        stats = self.resolver.stats
        stats.queries += entry.hits
        stats.cache_hits += entry.hits
        self.resolver.hit_keys[entry.key] += entry.hits
        entry.hits = 0

    async def _slow(self, data: bytes, addr: Any, ip: str, size: int) -> None:
        try:
            out = await self.resolver.resolve(data, ip, size)
            if out is not None and self.transport is not None:
                self.transport.sendto(out, addr)
        except Exception:  # one bad query must never take the server down
            log.exception("query from %s failed", ip)
        finally:
            self.slow -= 1


def _echo(data: bytes, query: wire.Query, rcode: int = 0) -> bytes:
    """A header + question answer skeleton for a query (QR and RA set)."""
    flags = ((query.flags | wire.FLAG_QR | 0x0080) & ~wire.FLAG_AA & ~0x000F) | rcode
    return wire.HEADER.pack(query.id, flags, 1, 0, 0, 0) + data[12 : query.question_end]


class TCPServer(asyncio.Protocol):
    """Two-byte length framing, pipelining, an idle timeout; answers are never cut to UDP size."""

    connections = 0

    def __init__(self, resolver: Resolver, gate: Gate) -> None:
        self.resolver = resolver
        self.gate = gate
        self.transport: asyncio.Transport | None = None
        self.ip = "?"
        self._buf = bytearray()
        self._pending = 0
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.ip = str((self.transport.get_extra_info("peername") or ("?",))[0])
        TCPServer.connections += 1
        if not self.gate.allowed(self.ip) or TCPServer.connections > TCP_MAX_CONNECTIONS:
            self.resolver.stats.refused += 1
            self.transport.abort()
            return
        self._touch()

    def connection_lost(self, exc: Exception | None) -> None:
        TCPServer.connections -= 1
        if self._idle is not None:
            self._idle.cancel()

    def _touch(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(TCP_IDLE, self._expire)

    def _expire(self) -> None:
        if self.transport is not None and self._pending == 0:
            self.transport.close()
        else:
            self._touch()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._touch()
        while len(self._buf) >= 2:
            (length,) = struct.unpack_from(">H", self._buf)
            if len(self._buf) < 2 + length:
                break
            message = bytes(self._buf[2 : 2 + length])
            del self._buf[: 2 + length]
            if self._pending >= TCP_MAX_PENDING:
                assert self.transport is not None
                self.transport.pause_reading()
            self._pending += 1
            task = asyncio.ensure_future(self._answer(message))
            _RUNNING.add(task)
            task.add_done_callback(_RUNNING.discard)

    async def _answer(self, message: bytes) -> None:
        try:
            out, query = self.resolver.fast(message)
            if out is not None and query is not None:
                stats = self.resolver.stats
                stats.queries += 1
                stats.cache_hits += 1
                stats.clients[self.ip] += 1
                self.resolver.hit_keys[query.key] += 1
            else:
                out = await self.resolver.resolve(message, self.ip, None)
            if out is not None and self.transport is not None and not self.transport.is_closing():
                self.transport.write(struct.pack(">H", len(out)) + out)
        except Exception:
            log.exception("TCP query from %s failed", self.ip)
        finally:
            self._pending -= 1
            if self.transport is not None and self._pending < TCP_MAX_PENDING:
                self.transport.resume_reading()
