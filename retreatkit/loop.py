"""Run the asyncio program on uvloop where it is installed: it is faster.

uvloop has no `loop.sendfile`, so aiohttp would read large files into memory chunk
by chunk; the loop here adds one built on os.sendfile, which keeps a 100 MiB cache
hit in the kernel (measured in bench/mirror.py).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import IO, Any

SENDFILE_CHUNK = 4 * 1024 * 1024


async def sendfile(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.BaseTransport,
    file: IO[bytes],
    offset: int = 0,
    count: int | None = None,
) -> int:
    """Copy `count` bytes of `file` from `offset` to the transport's socket, in the kernel."""
    sock = transport.get_extra_info("socket")
    if sock is None or not hasattr(os, "sendfile"):
        raise NotImplementedError("no socket to sendfile to")
    if count is None:
        count = os.fstat(file.fileno()).st_size - offset
    # what the transport already holds (the headers) must go first; it has no
    # "buffer empty" event to wait on, and the headers rarely wait at all
    while isinstance(transport, asyncio.WriteTransport) and transport.get_write_buffer_size():  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    # a second descriptor for the same socket: the transport owns the first one's polling
    fd = os.dup(sock.fileno())
    sent = 0
    try:
        while sent < count:
            try:
                n = os.sendfile(fd, file.fileno(), offset + sent, min(SENDFILE_CHUNK, count - sent))
            except BlockingIOError:
                await _writable(loop, fd)
                continue
            if n == 0:
                break  # the file is shorter than promised
            sent += n
    finally:
        os.close(fd)
    return sent


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, wake)
    try:
        await ready
    finally:
        loop.remove_writer(fd)


def run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())

    class Loop(uvloop.Loop):
        async def sendfile(
            self,
            transport: asyncio.BaseTransport,
            file: IO[bytes],
            offset: int = 0,
            count: int | None = None,
            *,
            fallback: bool = True,
        ) -> int:
            return await sendfile(self, transport, file, offset, count)

    result: int = uvloop.run(main(), loop_factory=Loop)
    return result
