"""DNS over TCP (RFC 7766): framing, pipelining, fair limits and deadlines.

Wire format: each message is preceded by its length, two bytes, big-endian (RFC 1035
4.2.2). Answers are never cut to a UDP size: up to 65535 bytes.

A client that sends queries and never reads the answers must not fill our memory with
them (asyncio buffers whatever is written): at most MAX_PENDING queries are worked on
at once, however many one read brought; once MAX_UNSENT bytes of answers wait on the
client (asyncio's pause_writing), we read no more of its queries and write no more
answers: an answer that finds them waiting is not kept, its query goes back in line
and is answered once the client has read (counted once: in /status and the query log
it is the answer worked out first, not again for each time it went back). So what one
connection holds is MAX_UNSENT
and one answer (up to 64 KiB), however many answers were being worked on: before,
each of them was written, 2 MB a connection. A connection past its deadline is
aborted, not closed: closing waits to send what the client never reads, and such
sockets, no longer counted, kept their answers for good (16 connections every 12 s
took 32 MB more each time).

One LAN host must not be able to shut TCP off for everyone: connections are capped
per address as well as in all, and each connection has a deadline that only a query
answered moves (RFC 7766 6.2.3): a client that trickles a byte now and then, never
finishing a message, is closed when its deadline passes, however busy it keeps the
socket; so is one that sends empty messages (a length of 0) or anything else that is
no query, each counted as malformed. A connection with answers still being worked on
is left to finish them.

A client outside the LAN's networks gets REFUSED, as over UDP, not a reset it cannot
tell from a dead server: one answer to its first query, nothing resolved, then the
connection closes. Such connections have their own small cap, so outsiders can never
take the LAN's.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import Counter, deque
from collections.abc import Callable
from typing import cast

from retreatkit.lognews import News
from retreatkit.nameserver import wire
from retreatkit.nameserver.gate import LOG_AGAIN, MAX_LOGGED, Gate
from retreatkit.nameserver.resolver import Resolver
from retreatkit.nameserver.stats import FORMERR, REFUSED

log = logging.getLogger("retreatkit.nameserver")

IDLE = 10.0  # seconds a connection may go without a whole message
MAX_CONNECTIONS = 256
PER_ADDRESS = 16
MAX_PENDING = 32  # pipelined queries in progress on one connection; then reading pauses
MAX_UNSENT = 65536  # bytes of answers waiting on the client: then none are written
MAX_OUTSIDERS = 32  # connections from outside the LAN open at once, waiting for REFUSED
_LENGTH = struct.Struct(">H")
MAX_MESSAGE = 65535  # what two bytes of length can say


def too_big(out: bytes, query: wire.Query | None) -> bytes:
    """SERVFAIL for an answer over 65535 bytes, which no length prefix can carry (a
    65535-byte upstream reply without OPT, given our OPT): header, question, and our OPT
    if the client sent one."""
    edns = query is not None and query.edns
    do = query is not None and bool(query.key[-1] & wire.KEY_DO)
    head = wire.truncated(out, edns, do)
    (flags,) = _LENGTH.unpack_from(head, 2)
    flags = (flags & ~(wire.FLAG_TC | wire.FLAG_AA | 0x000F)) | 2
    return head[:2] + _LENGTH.pack(flags) + head[4:]


class Framer:
    """Bytes in, whole messages out, and the deadline they move (no I/O)."""

    def __init__(self, now: float, idle: float = IDLE) -> None:
        self.idle = idle
        self.deadline = now + idle
        self._buf = bytearray()

    def feed(self, data: bytes, now: float, limit: int | None = None) -> list[bytes]:
        """The whole messages so far, at most `limit` (the rest wait here for the next
        call: `feed(b"", now, n)` takes them)."""
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        while len(buf) >= 2 and (limit is None or len(out) < limit):
            (length,) = _LENGTH.unpack_from(buf)
            if len(buf) < 2 + length:
                break
            out.append(bytes(buf[2 : 2 + length]))
            del buf[: 2 + length]
        return out

    def answered(self, now: float) -> None:
        """A query was answered: only that buys more time (a message that is no query,
        or an empty one, does not)."""
        self.deadline = max(self.deadline, now + self.idle)

    def expired(self, now: float) -> bool:
        return now >= self.deadline


class Connections:
    """The TCP connections of one server: counts per address, and the sweep that ends
    the ones past their deadline. Never shared between servers."""

    def __init__(
        self,
        clock: Callable[[], float],
        idle: float = IDLE,
        limit: int = MAX_CONNECTIONS,
        per_address: int = PER_ADDRESS,
    ) -> None:
        self.clock = clock
        self.idle = idle
        self.limit = limit
        self.per_address = per_address
        self.open: set[TCPServer] = set()
        self.outsiders: set[TCPServer] = set()  # from outside the LAN: REFUSED, then closed
        self.by_address: Counter[str] = Counter()
        self.refused = 0
        # addresses told of in the log, for holding too many
        self.floods = News(LOG_AGAIN, MAX_LOGGED)
        self._loop: asyncio.AbstractEventLoop | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, looked up once (get_running_loop() is a getpid() call)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def admit(self, conn: TCPServer) -> bool:
        pool, limit = (self.outsiders, MAX_OUTSIDERS) if conn.outsider else (self.open, self.limit)
        if len(pool) >= limit and not conn.outsider:
            self._make_room(conn.ip)
        if len(pool) >= limit or self.by_address[conn.ip] >= self.per_address:
            self.refused += 1
            self._say_full(conn, limit)
            return False
        pool.add(conn)
        self.by_address[conn.ip] += 1
        return True

    def _make_room(self, ip: str) -> None:
        """A full server: the address holding the most connections gives up its idlest
        one, if it holds more than `ip` would with this one. Sixteen addresses (one
        laptop's IPv6 privacy addresses) holding their sixteen each kept every other host
        off TCP, which answers over 1232 bytes need, for as long as they asked now and
        then (RFC 7766 6.2.3: close idle connections under pressure)."""
        counts = Counter(c.ip for c in self.open)  # the LAN's only; full is rare
        held = max(counts.values())
        if held <= counts[ip] + 1:
            return  # as fair as it gets: the newcomer waits, as before
        idle = [c for c in self.open if counts[c.ip] == held and c.pending == 0]
        if not idle:
            return  # all of theirs are being answered: none is dropped mid-answer
        victim = min(idle, key=lambda c: (c.framer.deadline, c.ip))
        most = victim.ip
        if self.floods.news(f"fair {most}", self.clock()):
            log.warning(
                "%d TCP connections are open, the most at once, %d of them %s's: its idlest"
                " ones are closed for other hosts (%s was the first)",
                self.limit, held, most, ip,
            )  # fmt: skip
        victim.abort()

    def _say_full(self, conn: TCPServer, limit: int) -> None:
        """One line per address that fills its share (or per cap filled), not per refusal."""
        one = self.by_address[conn.ip] >= self.per_address
        key = conn.ip if one else ("outside" if conn.outsider else "")
        if not self.floods.news(key, self.clock()):
            return
        if one:
            log.warning(
                "%s holds %d TCP connections, the most one address may: its next ones are"
                " closed at once", conn.ip, self.per_address,
            )  # fmt: skip
        else:
            log.warning(
                "%d TCP connections%s are open, the most at once: new ones are closed at"
                " once (%s was the first turned away)",
                limit, " from outside the LAN" if conn.outsider else "", conn.ip,
            )  # fmt: skip

    def leave(self, conn: TCPServer) -> None:
        pool = self.outsiders if conn.outsider else self.open
        if conn in pool:
            pool.discard(conn)
            self.by_address[conn.ip] -= 1
            if self.by_address[conn.ip] <= 0:
                del self.by_address[conn.ip]

    def sweep(self, now: float) -> int:
        """Abort what is past its deadline with nothing in progress (whatever answers it
        left unread go with it); returns how many."""
        late = [c for c in (*self.open, *self.outsiders)
                if c.pending == 0 and c.framer.expired(now)]  # fmt: skip
        for conn in late:
            conn.abort()
        return len(late)

    async def sweep_forever(self, every: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every)
            self.sweep(self.clock())


class TCPServer(asyncio.Protocol):
    def __init__(self, resolver: Resolver, gate: Gate, connections: Connections) -> None:
        self.resolver = resolver
        self.gate = gate
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.ip = "?"
        self.outsider = False  # not in the LAN's networks: gets REFUSED
        self.pending = 0
        self.blocked = False  # the client does not read its answers: we read no queries
        # queries that found it blocked, and whether their answer was counted already
        self.again: deque[tuple[bytes, bool]] = deque()
        self.framer = Framer(connections.clock(), connections.idle)
        self.tasks: set[asyncio.Future[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.ip = str((self.transport.get_extra_info("peername") or ("?",))[0])
        self.outsider = not self.gate.allowed(self.ip)
        self.transport.set_write_buffer_limits(high=MAX_UNSENT)
        if not self.connections.admit(self):
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.leave(self)

    def close(self) -> None:
        """Close once what was written is sent (a REFUSED answer, no bigger than a query)."""
        if self.transport is not None:
            self.transport.close()
        self.connections.leave(self)

    def abort(self) -> None:
        """Close now, dropping whatever answers the client has not read."""
        if self.transport is not None:
            self.transport.abort()
        self.connections.leave(self)

    def data_received(self, data: bytes) -> None:
        if self.outsider:
            self._refuse(data)
            return
        if self not in self.connections.open:
            return
        self._take(data)

    def _take(self, data: bytes = b"") -> None:
        """Start on the queries read so far, while fewer than MAX_PENDING are in progress
        and the client reads its answers; the rest wait (those sent back first, then the
        framer's), reading paused."""
        room = 0 if self.blocked else MAX_PENDING - self.pending
        messages: list[tuple[bytes, bool]] = []
        while self.again and len(messages) < room:
            messages.append(self.again.popleft())
        read = self.framer.feed(data, self.connections.clock(), max(room - len(messages), 0))
        messages += [(message, False) for message in read]
        for message, counted in messages:
            self.pending += 1
            task = self.connections.loop().create_task(self._answer(message, counted))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        if self.transport is not None and not self.transport.is_closing():
            if self.blocked or self.again or self.pending >= MAX_PENDING:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def pause_writing(self) -> None:
        # asyncio: the answers written wait past the high-water mark (MAX_UNSENT)
        self.blocked = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.blocked = False
        self._take()

    def _refuse(self, data: bytes) -> None:
        """REFUSED to an outsider's first query (no bigger than it), then close."""
        if self not in self.connections.outsiders:
            return
        now = self.connections.clock()
        messages = self.framer.feed(data, now)
        if not messages:
            return
        query = wire.parse(messages[0])
        if query is not None and self.transport is not None:
            self.resolver.stats.answered(now, self.ip, "", REFUSED, 5, key=query.key)
            out = wire.echo(messages[0], query, rcode=5)
            self.transport.write(_LENGTH.pack(len(out)) + out)
        self.close()

    async def _answer(self, message: bytes, counted: bool = False) -> None:
        """Answer one query; `counted`: it was answered and counted before, its answer
        never sent (the client had stopped reading): this one is not counted again."""
        resolver = self.resolver
        try:
            if self.blocked:  # taken before the client stopped reading: later, then
                self._again(message, counted)
                return
            now = resolver.clock()
            if now >= resolver.next_tick:
                resolver.tick(now)
            query = wire.parse(message)
            found = resolver.hit(query, message, now) if query is not None else None
            if found is not None:
                out: bytes | None = found[0]
                if not counted:
                    resolver.stats.hit(now, self.ip, found[1])
            else:
                out = await resolver.resolve(message, self.ip, None, query, counted)
            transport = self.transport
            if out is None:  # no query at all (empty, a header cut short, a response)
                resolver.stats.answered(now, self.ip, "", FORMERR, 1)
            elif self.blocked:  # its answer waited upstream while the client stopped reading
                self._again(message, True)  # resolve() counted it
            elif transport is not None and not transport.is_closing():
                if len(out) > MAX_MESSAGE:
                    out = too_big(out, query or wire.parse(message))
                transport.write(_LENGTH.pack(len(out)) + out)
                if out[3] & 0x000F != 1:  # FORMERR answers no query: it buys no time
                    self.framer.answered(self.connections.clock())
        except Exception:
            log.exception("TCP query from %s failed", self.ip)
        finally:
            self.pending -= 1
            if self in self.connections.open:
                self._take()

    def _again(self, message: bytes, counted: bool) -> None:
        """Back in line, to be answered once the client reads (nothing kept but the query)."""
        if self.transport is not None and not self.transport.is_closing():
            self.again.append((message, counted))
