"""A TCP connection as bob uses it: lines and exact reads for the handshakes, then frames
parsed in place, and writes with flow control (an asyncio.BufferedProtocol).

The kernel copies received bytes straight into pooled 4 MiB segments (recv_into); frames
are found there and handed out as views, so a record's body is never copied before it
is decrypted. A frame that straddles two segments is the only copy (at most one frame per
segment). Segments come back to the pool when every frame handed out from them has been
released; reading pauses while more than HIGH bytes wait to be released.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from retreatkit.transfer.errors import RemoteProtocolError, TransferError
from retreatkit.transfer.records import HEADER_SIZE, MAX_BODY, split_header

SEGMENT = 4 * 1024 * 1024
HIGH = 16 * 1024 * 1024  # bytes received and not yet released: stop reading
LOW = 4 * 1024 * 1024
MAX_RAW = 256 * 1024  # bytes held before frames begin: reading pauses past this
_WORD = struct.Struct(">I")
# A peer that vanished (a laptop shut, its Wi-Fi gone) sends nothing, not even a reset.
# Where no relay's idle timeout ends the wait (a sender that is its own rendezvous, while
# its receiver decides), a side would wait on it for ever. The kernel asks an idle peer
# after IDLE seconds, every INTERVAL, and ends the connection after PROBES unanswered; a
# peer that is there answers the probes itself, however long its user takes to decide.
# Keepalive only asks when nothing is in flight: what was sent and never acknowledged
# (the peer left just after it) is the user timeout's, GIVE_UP seconds. That one holds
# only until the data flows (`allow_stalls`): it would also end a transfer whose receiver
# is there but stopped reading (`bob recv --stdout | less`), and a transfer's own
# timeout (PEER_TIMEOUT) finds a peer that vanished mid-transfer.
KEEPALIVE_IDLE = 10
KEEPALIVE_INTERVAL = 5
KEEPALIVE_PROBES = 3
GIVE_UP = 25
_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", None)


class ConnectionClosed(TransferError):
    """The connection ended, or broke; `reset` says whether it broke."""

    def __init__(self, message: str, reset: bool = False) -> None:
        super().__init__(message)
        self.reset = reset


@dataclass(eq=False, slots=True)
class _Segment:
    buf: bytearray
    users: int = 0  # frames handed out and not released, plus one while it is filled


@dataclass(frozen=True, slots=True)
class Frame:
    kind: int
    head: bytes
    body: memoryview
    segment: _Segment | None = field(repr=False)


def socket_of(transport: asyncio.BaseTransport | None) -> socket.socket | None:
    """A transport's socket, or None once it is closing or its file descriptor is gone:
    uvloop's stand-in for the socket makes a real one from the descriptor at each call,
    and with none (-1) raises ValueError (`negative file descriptor`), which printed a
    traceback in the middle of bob's output when a connect that lost the race for a
    direct connection was closed as it completed."""
    if transport is None or transport.is_closing():
        return None
    try:
        sock: socket.socket | None = transport.get_extra_info("socket")
        if sock is not None and sock.fileno() < 0:
            return None
    except (ValueError, OSError):
        return None
    return sock


def watch_liveness(sock: socket.socket | None) -> None:
    """TCP keepalive and a user timeout on `sock`, where the system has them."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), KEEPALIVE_IDLE),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), KEEPALIVE_INTERVAL),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), KEEPALIVE_PROBES),
        (socket.IPPROTO_TCP, _USER_TIMEOUT, GIVE_UP * 1000),
    ]
    for level, option, value in options:
        if option is not None:
            with contextlib.suppress(OSError, ValueError):  # ValueError: socket_of's
                sock.setsockopt(level, option, value)


class Channel(asyncio.BufferedProtocol):
    """One connection. Before `start_frames()` it yields lines and exact byte counts;
    after it, whole frames."""

    def __init__(self, made: Callable[[Channel], None] | None = None) -> None:
        self._made = made  # told of the connection (a listener proves each one)
        self.on_frames: Callable[[], None] | None = None  # told whenever frames or an end come
        self.transport: asyncio.Transport | None = None
        self._raw = bytearray()  # bytes before frames begin
        self._rawbuf = bytearray(65536)
        self._framing = False
        self._frames: collections.deque[Frame] = collections.deque()
        self._pool: list[bytearray] = []
        self._seg: _Segment | None = None
        self._start = 0  # where the next frame begins in the segment
        self._filled = 0
        self._unreleased = 0
        self._paused = False
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._write_paused = False
        self._closed: asyncio.Future[None] | None = None
        self.received = 0  # bytes, for tests and the relay-less counts
        self.framed = 0  # whole frames found: what the receiver's silence watch counts

    # -- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        watch_liveness(socket_of(transport))
        self._closed = asyncio.get_running_loop().create_future()
        if self._made is not None:
            self._made(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        if not self._framing:
            return memoryview(self._rawbuf)
        seg = self._seg
        if seg is None or len(seg.buf) - self._filled < HEADER_SIZE + MAX_BODY:
            seg = self._new_segment()
        return memoryview(seg.buf)[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes
        if not self._framing:
            self._raw += memoryview(self._rawbuf)[:nbytes]
            if len(self._raw) > MAX_RAW and not self._paused and self.transport is not None:
                self._paused = True  # nobody reads this much before frames: wait for them
                self.transport.pause_reading()
            self._wake()
            return
        self._filled += nbytes
        self._scan()
        self._wake()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self._error is None:
            self._error = exc
        self._eof = True
        self._wake()
        for future in (self._drained, self._closed):
            if future is not None and not future.done():
                future.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # -- raw mode: handshakes ---------------------------------------------------------

    async def readline(self, limit: int = 4 * 128) -> bytes:
        """Up to and with a newline; b"" or a partial line at end of stream. ValueError
        past `limit` bytes without one."""
        while True:
            at = self._raw.find(b"\n")
            if at >= 0:
                line = bytes(self._raw[: at + 1])
                del self._raw[: at + 1]
                self._resume_raw()
                return line
            if len(self._raw) > limit:
                raise ValueError("line too long")
            if self._eof:
                self._raise_error()
                line = bytes(self._raw)
                self._raw.clear()
                return line
            await self._wait()

    async def readexactly(self, n: int) -> bytes:
        while len(self._raw) < n:
            if self._eof:
                self._raise_error()
                raise ConnectionClosed("the other side closed the connection")
            await self._wait()
        out = bytes(self._raw[:n])
        del self._raw[:n]
        self._resume_raw()
        return out

    def _resume_raw(self) -> None:
        if self._paused and len(self._raw) <= MAX_RAW and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def start_frames(self) -> None:
        """From the next byte on, the connection carries frames; bytes already read
        (pipelined after a line) are the first of them."""
        if self._framing:
            return
        self._framing = True
        leftover, self._raw = bytes(self._raw), bytearray()
        seg = self._new_segment()
        seg.buf[: len(leftover)] = leftover
        self._filled = len(leftover)
        self._scan()
        if self._paused and not self._unreleased > HIGH and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    # -- frames ------------------------------------------------------------------------

    async def frames(self) -> list[Frame]:
        """Every whole frame received so far (at least one); [] at a clean end of stream.
        Release each (`release`) once its body is no longer needed."""
        while not self._frames:
            if self._eof:
                self._raise_error()
                if self.buffered:  # a connection cut off, not a record that lies
                    raise ConnectionClosed("the connection ended in the middle of a record")
                return []
            await self._wait()
        out = list(self._frames)
        self._frames.clear()
        return out

    def take(self) -> list[Frame]:
        """Whatever whole frames are here now, without waiting."""
        out = list(self._frames)
        self._frames.clear()
        return out

    def release(self, frames: list[Frame]) -> None:
        for frame in frames:
            seg = frame.segment
            if seg is not None:
                self._unreleased -= len(frame.body) + HEADER_SIZE
                seg.users -= 1
                if seg.users == 0:
                    self._recycle(seg)
        if self._paused and self._unreleased < LOW:
            self._paused = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out as frames."""
        return len(self._raw) + (self._filled - self._start if self._seg else 0)

    @property
    def eof(self) -> bool:
        return self._eof

    @property
    def error(self) -> BaseException | None:
        return self._error

    # -- writing -----------------------------------------------------------------------

    def allow_stalls(self) -> None:
        """The data flows from here on: a reader that stops for a while ends nothing."""
        sock = socket_of(self.transport)
        if sock is not None and _USER_TIMEOUT is not None:
            with contextlib.suppress(OSError, ValueError):
                sock.setsockopt(socket.IPPROTO_TCP, _USER_TIMEOUT, 0)

    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def writelines(self, frames: list[bytes]) -> None:
        assert self.transport is not None
        self.transport.writelines(frames)

    async def drain(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._write_paused:
            return
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the connection is closing")
        self._drained = asyncio.get_running_loop().create_future()
        await self._drained
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self) -> None:
        if self._closed is not None:
            await asyncio.shield(self._closed)

    # -- internals ---------------------------------------------------------------------

    def _new_segment(self) -> _Segment:
        """Start a segment; the frame begun at the end of the last one moves over."""
        buf = self._pool.pop() if self._pool else bytearray(SEGMENT)
        seg = _Segment(buf, users=1)
        old = self._seg
        tail = 0
        if old is not None:
            tail = self._filled - self._start
            buf[:tail] = old.buf[self._start : self._filled]  # at most one frame
            old.users -= 1
            if old.users == 0:
                self._recycle(old)
        self._seg, self._start, self._filled = seg, 0, tail
        return seg

    def _recycle(self, seg: _Segment) -> None:
        if len(self._pool) < 4:
            self._pool.append(seg.buf)

    def _scan(self) -> None:
        seg = self._seg
        assert seg is not None
        buf, pos, end = seg.buf, self._start, self._filled
        found = 0
        while end - pos >= HEADER_SIZE:
            (word,) = _WORD.unpack_from(buf, pos)
            try:
                kind, length = split_header(word)
            except RemoteProtocolError as exc:
                self._fail(exc)
                return
            stop = pos + HEADER_SIZE + length
            if stop > end:
                break
            view = memoryview(buf)[pos + HEADER_SIZE : stop]
            self._frames.append(Frame(kind, bytes(buf[pos : pos + HEADER_SIZE]), view, seg))
            seg.users += 1
            self._unreleased += HEADER_SIZE + length
            found += 1
            pos = stop
        self._start = pos
        self.framed += found
        if self._unreleased > HIGH and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._eof = True
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    async def _wait(self) -> None:
        if self._waiter is not None:
            raise RuntimeError("one reader at a time")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.on_frames is not None:
            self.on_frames()
