"""Forward a paired connection's bytes inside the kernel: socket -> pipe -> socket with
splice(2), so no byte is copied through Python (Linux; elsewhere the relay copies).

At pairing the shell hands over duplicates of the two sockets (their transports are
dropped, having nothing left to write). Each direction is a thread blocking in splice,
which releases the GIL: up to a pipe's worth from the source, all of it into the
destination, again. A destination that does not read stops the reading (backpressure).
The event loop is not woken per megabyte, as add_reader/add_writer callbacks did (epoll
and the callbacks were a fifth of the relay's CPU): the threads count what they moved and
when, and the loop collects the counts when it needs them (/status, its timers, the end)
and about once a second while bytes flow.

A direction whose source ends cleanly (end of file, all of it passed on) passes the end
on: its destination is shut for writing, so the peer reads every byte, then end of file,
and the other direction goes on (a side that has said all it has may still be told
something, as bob's ABORT is: a relay that closed both sockets there reset the one still
sending, which discards what the kernel still held for it). A direction that breaks (a
reset, a peer gone) or close() shuts both sockets down, which wakes the other thread out
of its splice. The last thread out closes the sockets, so no descriptor is closed while a
thread may still use its number; by then both sources are at their end, or broken, so
the close resets nobody who is owed bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

PIPE_SIZE = 1 << 20  # fewer, larger splices; a smaller pipe is fine where this is refused
# A direction whose reader stops holds a pipe's worth the kernel does not count as the
# sockets' (TCP's memory bound does not reach it): 256 stalled connections would pin
# 128 MiB, past a 48 MB guest's memory. The pipe is at most a thousandth of the memory.
MIN_PIPE = 64 * 1024  # Linux's default pipe
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
_MOVE = getattr(os, "SPLICE_F_MOVE", 1)
AVAILABLE = hasattr(os, "splice")
NUDGE_EVERY = 1.0  # seconds: while bytes flow, their counts reach the loop this often
# Each spliced socket's send buffer (the kernel doubles it), asked for only where
# net.core.wmem_max allows it, since a smaller fixed one would switch autotuning off for
# less: 8 MiB of room, against autotuning's 4 MiB cap, measured ~8% less relay CPU.
SEND_BUFFER = 4 << 20


def pipe_size(memory: int) -> int:
    """The pipe for a machine with `memory` bytes: a power of two in [64 KiB, 1 MiB]."""
    fits = max(MIN_PIPE, min(PIPE_SIZE, memory // 1024))
    return 1 << (fits.bit_length() - 1)


@functools.cache
def _pipe_size() -> int:
    try:
        return pipe_size(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError):
        return MIN_PIPE


@functools.cache
def _send_buffer() -> int | None:
    try:
        allowed = int(Path("/proc/sys/net/core/wmem_max").read_text())
    except (OSError, ValueError):
        return None
    return SEND_BUFFER if allowed >= SEND_BUFFER else None


class _Direction:
    """src -> pipe -> dst: what its thread moved, and when it last moved something."""

    def __init__(self, side: int, src: int, dst: int) -> None:
        self.side, self.src, self.dst = side, src, dst
        self.r, self.w = os.pipe2(os.O_CLOEXEC)
        try:
            with contextlib.suppress(OSError):  # over /proc/sys/fs/pipe-user-pages-soft
                fcntl.fcntl(self.w, _F_SETPIPE_SZ, _pipe_size())
            self.room = fcntl.fcntl(self.w, _F_GETPIPE_SZ)
        except OSError:
            self.close()
            raise
        self.sent = 0  # written by the thread only
        self.last = 0.0  # clock() when bytes last moved, written by the thread only
        self.counted = 0  # how much of `sent` the loop has collected: the loop's only

    def pump(self, clock: Callable[[], float], nudge: Callable[[float], None]) -> bool:
        """Move bytes until the source ends or either socket fails or is shut down: True
        when the source ended and all it sent was passed on."""
        src, dst, r, w, room = self.src, self.dst, self.r, self.w, self.room
        try:
            while n := os.splice(src, w, room, flags=_MOVE):
                # counted as taken from the source, as the transports count what they
                # receive: what a side said reaches the core even if its peer then resets
                self.sent += n
                self.last = clock()
                nudge(self.last)
                while n:  # the pipe was empty: all of it goes before the next read
                    n -= os.splice(r, dst, n, flags=_MOVE)
                    self.last = clock()  # a slow reader taking bytes keeps the pair alive
        except OSError:  # a reset, or a peer gone
            return False
        return True

    def close(self) -> None:
        for fd in (self.r, self.w):
            with contextlib.suppress(OSError):
                os.close(fd)


class Splice:
    """Both directions of a pair, on sockets this object owns once it is made."""

    def __init__(
        self,
        a: int,
        b: int,
        moved: Callable[[int, int, float], None],
        ended: Callable[[int], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`moved(side, n, at)`: side (0 for a, 1 for b) sent n more bytes to the other,
        and bytes last moved that way at clock() time `at`; `ended(side)`: that side's
        direction ended (closed, or broken), and the pair with it. Both are called on
        the event loop.

        Raises OSError, owning nothing, when the system is out of pipes."""
        self.loop = asyncio.get_running_loop()
        ab = _Direction(0, a, b)
        try:
            ba = _Direction(1, b, a)
        except OSError:
            ab.close()
            raise
        self.directions = (ab, ba)
        self.socks = (socket.socket(fileno=a), socket.socket(fileno=b))
        for sock in self.socks:
            sock.setblocking(True)  # the duplicates share this with the dropped transports
            if size := _send_buffer():
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        self._moved, self._ended, self._clock = moved, ended, clock
        self._lock = threading.Lock()  # the three below, and shutting and closing socks
        self._running = 2
        self._shut_down = False
        self._half_closed = False  # one direction ended cleanly; the other still runs
        self._first = 0  # the side whose direction ended first
        self._done = False  # ended() was called, or close() was: no more calls to ended()
        self._next_nudge = 0.0
        self.threads: list[threading.Thread] = []
        for direction in self.directions:
            thread = threading.Thread(
                target=self._run, args=(direction,), name="relay-splice", daemon=True
            )
            try:
                thread.start()
                self.threads.append(thread)
            except RuntimeError:  # out of threads: this direction ends, and the pair with it
                direction.close()
                self._left(direction)

    def collect(self) -> None:
        """Report what the threads moved since the last call (on the event loop)."""
        for d in self.directions:
            n = d.sent - d.counted
            if n:
                d.counted += n
                self._moved(d.side, n, d.last)

    def close(self) -> None:
        """End the pair from the relay's side; the threads then close the sockets."""
        self._done = True
        self.collect()
        with self._lock:
            self._shut()

    # -- in the threads -----------------------------------------------------------------

    def _run(self, direction: _Direction) -> None:
        ended = False
        try:
            ended = direction.pump(self._clock, self._nudge)
        finally:
            direction.close()
            self._left(direction, ended)

    def _nudge(self, now: float) -> None:
        if now >= self._next_nudge:
            self._next_nudge = now + NUDGE_EVERY
            self._post(self.collect)

    def _left(self, direction: _Direction, ended: bool = False) -> None:
        """`ended`: its source ended and everything it sent was passed on."""
        with self._lock:
            self._running -= 1
            if not self._shut_down:  # else the other thread is woken already
                if not self._half_closed:
                    self._first = direction.side
                if ended and self._running:  # pass the end on; the other direction goes on
                    self._half_closed = True
                    with contextlib.suppress(OSError):  # a reset meanwhile: its thread sees it
                        self.socks[1 - direction.side].shutdown(socket.SHUT_WR)
                else:
                    self._shut()
            last = self._running == 0
            if last:
                for sock in self.socks:
                    sock.close()
        if last:
            self._post(self._over)

    def _shut(self) -> None:
        if not self._shut_down:
            self._shut_down = True
            for sock in self.socks:
                with contextlib.suppress(OSError):  # already reset by the peer
                    sock.shutdown(socket.SHUT_RDWR)

    def _post(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            self.loop.call_soon_threadsafe(callback)

    # -- back on the loop ---------------------------------------------------------------

    def _over(self) -> None:
        self.collect()  # both threads are out: these counts are final
        if not self._done:
            self._done = True
            self._ended(self._first)
