"""Upstream queries: a fresh random port and ID per query, strict reply matching, failover.

RFC 5452 and the DNSpooq fixes: each query goes out from a new socket (the kernel
picks a random source port), with an ID from a CSPRNG; a reply counts only when it
comes from the server's address and port (the socket is connected), carries our ID
and repeats our question. Anything else is ignored and counted, never accepted.
"""

from __future__ import annotations

import asyncio
import secrets
import struct
import time
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from retreatkit.nameserver.wire import UDP_PAYLOAD

ATTEMPT_TIMEOUT = 1.5
RETRY_AFTER = 30.0  # RFC 8767: recheck a failing upstream after ~30 s
MAX_REPLY = 65535


class UpstreamFailed(Exception):
    """No upstream gave a usable answer."""


@dataclass
class Upstream:
    host: str
    port: int = 53
    failures: int = 0
    down_until: float = 0.0
    queries: int = 0
    errors: int = 0
    latency_ms: float = 0.0  # moving average

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def healthy(self, now: float) -> bool:
        return now >= self.down_until

    def record(self, ok: bool, elapsed: float) -> None:
        self.queries += 1
        if ok:
            self.failures = 0
            self.down_until = 0.0
            ms = elapsed * 1000
            self.latency_ms = ms if self.latency_ms == 0 else 0.8 * self.latency_ms + 0.2 * ms
        else:
            self.errors += 1
            self.failures += 1
            if self.failures >= 3:
                self.down_until = time.monotonic() + RETRY_AFTER


@dataclass
class Spoofs:
    ignored: int = 0


class _Datagram(asyncio.DatagramProtocol):
    def __init__(self, expect: dns.message.Message, spoofs: Spoofs) -> None:
        self.expect = expect
        self.spoofs = spoofs
        self.reply: asyncio.Future[dns.message.Message] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if self.reply.done():
            return
        if len(data) < 12 or struct.unpack_from(">H", data)[0] != self.expect.id:
            self.spoofs.ignored += 1
            return
        try:
            reply = dns.message.from_wire(data, ignore_trailing=True)
        except dns.exception.DNSException:
            self.spoofs.ignored += 1
            return
        if not _matches(self.expect, reply):
            self.spoofs.ignored += 1
            return
        self.reply.set_result(reply)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(UpstreamFailed(f"upstream unreachable: {exc}"))


def _matches(query: dns.message.Message, reply: dns.message.Message) -> bool:
    if reply.id != query.id or not reply.flags & dns.flags.QR or len(reply.question) != 1:
        return False
    q, r = query.question[0], reply.question[0]
    return q.name == r.name and q.rdtype == r.rdtype and q.rdclass == r.rdclass


@dataclass
class Upstreams:
    servers: list[Upstream]
    spoofs: Spoofs = field(default_factory=Spoofs)
    timeout: float = ATTEMPT_TIMEOUT

    async def ask(self, query: dns.message.Message) -> dns.message.Message:
        """Try healthy upstreams in order (all, if none is healthy); SERVFAIL fails over."""
        now = time.monotonic()
        order = [u for u in self.servers if u.healthy(now)] or list(self.servers)
        last = "no upstream configured"
        for upstream in order:
            started = time.monotonic()
            try:
                reply = await self._one(upstream, query)
            except (UpstreamFailed, TimeoutError, OSError, dns.exception.DNSException) as exc:
                upstream.record(False, 0.0)
                last = f"{upstream.address}: {exc or type(exc).__name__}"
                continue
            if reply.rcode() in (dns.rcode.SERVFAIL, dns.rcode.REFUSED):
                upstream.record(False, 0.0)
                last = f"{upstream.address}: {dns.rcode.to_text(reply.rcode())}"
                continue
            upstream.record(True, time.monotonic() - started)
            return reply
        raise UpstreamFailed(last)

    async def _one(self, upstream: Upstream, query: dns.message.Message) -> dns.message.Message:
        query.id = secrets.randbits(16)
        loop = asyncio.get_running_loop()
        wire = query.to_wire()
        transport, proto = await loop.create_datagram_endpoint(
            lambda: _Datagram(query, self.spoofs), remote_addr=(upstream.host, upstream.port)
        )
        try:
            transport.sendto(wire)
            async with asyncio.timeout(self.timeout):
                reply = await proto.reply
        finally:
            transport.close()
        if reply.flags & dns.flags.TC:
            return await self._tcp(upstream, query)
        return reply

    async def _tcp(self, upstream: Upstream, query: dns.message.Message) -> dns.message.Message:
        query.id = secrets.randbits(16)
        wire = query.to_wire()
        async with asyncio.timeout(self.timeout * 2):
            reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
            try:
                writer.write(struct.pack(">H", len(wire)) + wire)
                await writer.drain()
                (length,) = struct.unpack(">H", await reader.readexactly(2))
                reply = dns.message.from_wire(await reader.readexactly(length))
            finally:
                writer.close()
        if not _matches(query, reply):
            raise UpstreamFailed("mismatched TCP reply")
        return reply


def make_query(name: dns.name.Name, rdtype: int, dnssec: bool) -> dns.message.Message:
    query = dns.message.make_query(
        name,
        dns.rdatatype.RdataType.make(rdtype),
        dns.rdataclass.IN,
        use_edns=0,
        payload=UDP_PAYLOAD,
        want_dnssec=dnssec,
    )
    query.flags |= dns.flags.RD
    return query
