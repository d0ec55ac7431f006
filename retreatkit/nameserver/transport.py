"""Upstream queries on the wire: UDP from a pool of random ports, TCP when a reply is cut.

RFC 5452 and the DNSpooq fixes (CVE-2020-25684/5/6), the way dnsmasq keeps them with
a pool of random sockets: every socket is connected to one upstream, so the kernel
drops datagrams from any other address or port (and answers a port scan with
ICMP, as for a closed port); its port is the kernel's random pick; it carries at
most USES queries and lives at most LIFETIME seconds, then a fresh socket takes
over. Each query has an ID from a CSPRNG (the caller's), and a reply counts only
with that ID on that socket and our question repeated; anything else is ignored, and
the real reply is still awaited.

What is ignored is counted as one of two kinds. `late`: a reply repeating the ID and
question of one of the last RECENT queries we sent that upstream, from any of our
sockets, but not of one waiting on this socket: the reply to a query we stopped
waiting for (its time was up, or another upstream answered first), a second reply to
one, or dnsmasq with no route out, which answers a question it still holds from
before REFUSED with our earlier query's ID, sent to the port the question came from
this time (another of ours). `spoofs`: a datagram that matches nothing we sent that
upstream lately (an ID we never sent, our ID with another question, no reply at all):
forged, or garbled. Counted as spoofed, a slow uplink or a venue router without its
route out looked like an attack in /status. Only the check by ID, socket and question
decides what is used; the two counts just tell apart what it turned away.

A socket per query (an asyncio endpoint each) cost more CPU than the rest of a
cache miss together; a pool of plain sockets read with loop.add_reader does not.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Sequence

from retreatkit.config import host_port_text
from retreatkit.nameserver import trace, wire
from retreatkit.nameserver.errors import BadReply, UpstreamFailed
from retreatkit.nameserver.race import staggered
from retreatkit.nameserver.upstream import Answer, Upstream

USES = 16  # queries per socket, then a new random port
RECENT = 1024  # queries per upstream whose replies count as late, not spoofed
LIFETIME = 10.0  # seconds a socket takes new queries
MAX_REPLY = 65535
_ID = struct.Struct(">H")


class _Socket:
    __slots__ = ("fd", "opened", "pending", "recent", "retired", "sock", "uses")

    def __init__(self, sock: socket.socket, opened: float, recent: dict[int, bytes]) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.opened = opened
        self.uses = 0
        self.retired = False
        self.pending: dict[int, tuple[asyncio.Future[bytes], bytes]] = {}
        self.recent = recent  # its upstream's last queries from any socket: ID -> question


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
        self.spoofs = 0  # replies ignored that match nothing we sent their upstream lately
        self.late = 0  # replies ignored that repeat a recent query of ours no longer waiting
        self._current: dict[tuple[str, int], _Socket] = {}
        # by upstream: ID -> question of the last RECENT queries sent to it, oldest first
        self._recent: dict[tuple[str, int], dict[int, bytes]] = {}
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
        recent = s.recent
        recent.pop(qid, None)  # an ID drawn again: its newest question, counted as newest
        recent[qid] = question
        if len(recent) > RECENT:
            del recent[next(iter(recent))]
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
            s = _Socket(sock, now, self._recent.setdefault(address, {}))
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
        if len(data) < 12 or not data[2] & 0x80:
            self.spoofs += 1  # not a reply at all
            if trace.on():
                trace.log.debug("ignored %d bytes from %s: not a DNS reply (spoofed, or garbled)",
                                len(data), _peer(s))  # fmt: skip
            return
        qid = _ID.unpack_from(data)[0]
        waiting = s.pending.get(qid)
        if waiting is not None and not waiting[0].done() and wire.repeats(data, waiting[1]):
            waiting[0].set_result(data)
            return
        sent = s.recent.get(qid)
        if sent is not None and wire.repeats(data, sent):
            self.late += 1  # a reply of the upstream's to a query of ours: never an answer
            if trace.on():
                trace.log.debug("ignored a late reply from %s: ID %d, %s, asked before and no"
                                " longer waited on", _peer(s), qid, _name(data))  # fmt: skip
        else:
            self.spoofs += 1
            if trace.on():
                trace.log.debug(
                    "ignored a reply from %s: ID %d, %s, matches no question we sent it"
                    " (spoofed, or garbled)", _peer(s), qid, _name(data),
                )  # fmt: skip

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


def _peer(s: _Socket) -> str:
    """The upstream a socket is connected to (a system call: for DEBUG lines only)."""
    try:
        host, port = s.sock.getpeername()[:2]
    except OSError:
        return "an upstream"
    return f"upstream {host_port_text(host, port)}"


def _name(data: bytes) -> str:
    """The question a reply names, escaped (it is whatever the sender put there)."""
    try:
        name = wire.read_name(data, 12)
    except (ValueError, IndexError):
        return "no question we can read"
    return f"for {trace.shown(name)}"


def _expire(future: asyncio.Future[bytes]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())
