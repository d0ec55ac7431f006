"""Forward a paired connection's bytes inside the kernel: socket -> pipe -> socket with
splice(2), so no byte is copied through Python (Linux; elsewhere the relay copies).

At pairing the shell hands over duplicates of the two sockets (their transports are
dropped, having nothing left to write). Each direction owns a pipe: read from the
source while the pipe has room, write into the destination while it takes bytes;
a full destination stops the reading (backpressure), as pause_reading does.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Callable

PIPE_SIZE = 1 << 20  # fewer, larger splices; a smaller pipe is fine where this is refused
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
AVAILABLE = hasattr(os, "splice")


class _Direction:
    """src -> pipe -> dst, for one direction of a pair."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        src: int,
        dst: int,
        moved: Callable[[int], None],
        ended: Callable[[bool], None],
    ) -> None:
        self.loop, self.src, self.dst = loop, src, dst
        self.moved, self.ended = moved, ended  # ended(True): the source closed cleanly
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # over /proc/sys/fs/pipe-user-pages-soft
            fcntl.fcntl(self.w, _F_SETPIPE_SZ, PIPE_SIZE)
        self.room = fcntl.fcntl(self.w, _F_GETPIPE_SZ)
        self.held = 0
        self.reading = self.writing = False
        self.eof = self.stopped = False

    def start(self) -> None:
        self._read_on()

    def _read_on(self) -> None:
        if not self.reading and not self.stopped and not self.eof:
            self.loop.add_reader(self.src, self._readable)
            self.reading = True

    def _read_off(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.src)
            self.reading = False

    def _readable(self) -> None:
        try:
            n = os.splice(self.src, self.w, self.room - self.held, flags=_FLAGS)
        except BlockingIOError:
            return
        except OSError:
            self._stop()
            self.ended(False)
            return
        if n == 0:
            self.eof = True
            self._read_off()
        self.held += n
        self._flush()
        if self.held >= self.room:
            self._read_off()  # the pipe is full: the destination is behind

    def _flush(self) -> None:
        while self.held and not self.stopped:
            try:
                n = os.splice(self.r, self.dst, self.held, flags=_FLAGS)
            except BlockingIOError:
                if not self.writing:
                    self.loop.add_writer(self.dst, self._flush)
                    self.writing = True
                return
            except OSError:
                self._stop()
                self.ended(False)
                return
            self.held -= n
            self.moved(n)
        if self.writing:
            self.loop.remove_writer(self.dst)
            self.writing = False
        if self.eof and not self.stopped:
            self._stop()
            self.ended(True)
        else:
            self._read_on()

    def _stop(self) -> None:
        self._read_off()
        if self.writing:
            self.loop.remove_writer(self.dst)
            self.writing = False
        self.stopped = True

    def close(self) -> None:
        self._stop()
        for fd in (self.r, self.w):
            with contextlib.suppress(OSError):
                os.close(fd)


class Splice:
    """Both directions of a pair, on sockets this object owns from now on."""

    def __init__(
        self,
        a: int,
        b: int,
        moved: Callable[[int, int], None],
        ended: Callable[[int], None],
    ) -> None:
        """`moved(side, n)`: side (0 for a, 1 for b) sent n bytes to the other;
        `ended(side)`: that side's connection is over (closed, or broken)."""
        loop = asyncio.get_running_loop()
        self.fds = (a, b)
        self._ended = ended
        self._done = False
        self.ab = _Direction(loop, a, b, lambda n: moved(0, n), lambda clean: self._end(0))
        self.ba = _Direction(loop, b, a, lambda n: moved(1, n), lambda clean: self._end(1))
        self.ab.start()
        self.ba.start()

    def _end(self, side: int) -> None:
        if not self._done:
            self._done = True
            self._ended(side)

    def close(self) -> None:
        self._done = True
        self.ab.close()
        self.ba.close()
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
