"""Upstream queries on the wire: UDP from a pool of random ports, TCP when a reply is cut.

RFC 5452 and the DNSpooq fixes (CVE-2020-25684/5/6), the way dnsmasq keeps them with
a pool of random sockets: every socket is connected to one upstream, so the kernel
drops datagrams from any other address or port (and answers a port scan with
ICMP, as for a closed port); its port is the kernel's random pick; it carries at
most USES queries and lives at most LIFETIME seconds, then a fresh socket takes
over. Each query has an ID from a CSPRNG (the caller's), and a reply counts only
with that ID on that socket and our question repeated. Anything else is counted
as spoofed and ignored, and the real reply is still awaited; but the reply to a
query we stopped waiting for (its time was up, or another upstream answered first)
is only late: it is dropped without counting, or a slow uplink would look like an
attack in /status.

A socket per query (an asyncio endpoint each) cost more CPU than the rest of a
cache miss together; a pool of plain sockets read with loop.add_reader does not.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Sequence

from retreatkit.nameserver import wire
from retreatkit.nameserver.errors import BadReply, UpstreamFailed
from retreatkit.nameserver.race import staggered
from retreatkit.nameserver.upstream import Answer, Upstream

USES = 16  # queries per socket, then a new random port
LIFETIME = 10.0  # seconds a socket takes new queries
MAX_REPLY = 65535
_ID = struct.Struct(">H")


class _Socket:
    __slots__ = ("fd", "late", "opened", "pending", "retired", "sock", "uses")

    def __init__(self, sock: socket.socket, opened: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.opened = opened
        self.uses = 0
        self.retired = False
        self.pending: dict[int, tuple[asyncio.Future[bytes], bytes]] = {}
        self.late: dict[int, bytes] = {}  # queries given up on: ID -> question (<= USES)


class Pool:
    """The upstream transport of one nameserver (not shared between servers)."""

    def __init__(
        self,
        uses: int = USES,
        lifetime: float = LIFETIME,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.uses = uses
        self.clock = clock
        self.lifetime = lifetime
        self.spoofs = 0  # replies ignored: wrong ID, wrong question, not a reply
        self._current: dict[tuple[str, int], _Socket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # looked up once (a getpid each)
        self._open_sockets: set[_Socket] = set()

    async def query(
        self, upstream: Upstream, data: bytes, question: bytes, tcp: bool, timeout: float
    ) -> bytes:
        if tcp:
            return await self._tcp(upstream, data, question, timeout)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        (qid,) = _ID.unpack_from(data)
        s = self._socket(loop, (upstream.host, upstream.port), qid)
        future: asyncio.Future[bytes] = loop.create_future()
        s.pending[qid] = (future, question)
        s.uses += 1
        timer = loop.call_later(timeout, _expire, future)
        try:
            try:
                s.sock.send(data)
            except OSError as exc:
                raise UpstreamFailed(f"cannot send: {exc.strerror or exc}") from None
            return await future
        finally:
            timer.cancel()
            s.pending.pop(qid, None)
            if not future.done() or future.cancelled() or future.exception() is not None:
                s.late[qid] = question
            if s.retired and not s.pending:
                self._close(loop, s)

    async def race(
        self, attempts: Sequence[Callable[[], Awaitable[Answer | None]]], delay: float
    ) -> tuple[Answer | None, list[int]]:
        """Upstreams asked one after another, the slow ones still heard."""
        return await staggered(attempts, delay)

    def _socket(
        self, loop: asyncio.AbstractEventLoop, address: tuple[str, int], qid: int
    ) -> _Socket:
        s = self._current.get(address)
        now = self.clock()
        if s is not None and (s.uses >= self.uses or now - s.opened > self.lifetime
                              or qid in s.pending):  # fmt: skip
            s.retired = True
            if not s.pending:
                self._close(loop, s)
            s = None
        if s is None:
            family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.connect(address)  # binds a random port (the kernel's choice)
            except OSError as exc:
                sock.close()
                raise UpstreamFailed(f"cannot reach {address[0]}: {exc.strerror or exc}") from None
            s = _Socket(sock, now)
            loop.add_reader(s.fd, self._readable, s)
            self._current[address] = s
            self._open_sockets.add(s)
        return s

    def _readable(self, s: _Socket) -> None:
        # one datagram per call: readiness is level-triggered, so the loop calls again
        # while more wait, and no call ends in a failed recv (an exception, in Python)
        try:
            data = s.sock.recv(MAX_REPLY)
        except BlockingIOError:
            return
        except OSError as exc:  # ICMP port unreachable and friends, for this socket
            failure = UpstreamFailed(f"unreachable: {exc.strerror or exc}")
            for future, _ in s.pending.values():
                if not future.done():
                    future.set_exception(failure)
            return
        qid = _ID.unpack_from(data)[0] if len(data) >= 12 else -1
        waiting = s.pending.get(qid)
        if waiting is None or waiting[0].done() or not data[2] & 0x80:
            late = s.late.get(qid)
            if late is not None and wire.repeats(data, late):
                del s.late[qid]  # the reply we stopped waiting for: late, not forged
                return
            self.spoofs += 1
            return
        future, question = waiting
        if not wire.repeats(data, question):
            self.spoofs += 1
            return
        future.set_result(data)

    def _close(self, loop: asyncio.AbstractEventLoop, s: _Socket) -> None:
        if s not in self._open_sockets:
            return
        self._open_sockets.discard(s)
        loop.remove_reader(s.fd)
        s.sock.close()
        for address, current in list(self._current.items()):
            if current is s:
                del self._current[address]

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for s in list(self._open_sockets):
            for future, _ in s.pending.values():
                if not future.done():
                    future.set_exception(UpstreamFailed("the nameserver is stopping"))
            self._close(loop, s)

    async def _tcp(self, upstream: Upstream, data: bytes, question: bytes, timeout: float) -> bytes:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
            try:
                writer.write(struct.pack(">H", len(data)) + data)
                await writer.drain()
                (length,) = struct.unpack(">H", await reader.readexactly(2))
                reply = await reader.readexactly(length)
            except asyncio.IncompleteReadError:
                raise BadReply("the TCP reply stopped short") from None
            finally:
                writer.close()
        if reply[:2] != data[:2] or not wire.repeats(reply, question):
            raise BadReply("mismatched TCP reply")
        return reply


def _expire(future: asyncio.Future[bytes]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())
