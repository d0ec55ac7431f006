"""Lock files over what several processes on one machine share: the cache's builds and
unpacked packages, the supervisor's socket. flock(2): released when the descriptor
closes, a crash included."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def held(path: Path, mode: int = 0o644) -> Iterator[None]:
    """`path`'s lock, waiting while another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def waited(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[bool]:
    """`path`'s lock; whether another process held it first, whose work (a build of the
    same thing) is then done. `on_wait` is called before waiting, to say so."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            other = False
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
            other = True
        yield other
    finally:
        os.close(fd)
