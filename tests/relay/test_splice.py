"""The relay's kernel forwarding (splice through a pipe) on socket pairs, in process:
bytes both ways unchanged and counted, a slow reader stopping the writer, and the end."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from retreatkit.relay import splice

pytestmark = pytest.mark.skipif(not splice.AVAILABLE, reason="splice(2) is Linux only")


async def test_bytes_cross_both_ways_counted_and_the_end_is_reported() -> None:
    a, a_relay = socket.socketpair()
    b, b_relay = socket.socketpair()
    for s in (a, b):
        s.setblocking(False)
    moved = [0, 0]
    ended: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def count(side: int, n: int) -> None:
        moved[side] += n

    pair = splice.Splice(a_relay.detach(), b_relay.detach(), count, ended.set_result)
    loop = asyncio.get_running_loop()
    try:
        data = os.urandom(8 << 20)
        got = bytearray()

        async def drain() -> None:
            while len(got) < len(data):
                got.extend(await loop.sock_recv(b, 1 << 20))

        reader = asyncio.ensure_future(drain())
        await loop.sock_sendall(a, data)  # more than the pipe and both buffers hold
        await asyncio.wait_for(reader, 30)
        assert bytes(got) == data and moved[0] == len(data)
        await loop.sock_sendall(b, b"back")
        assert await asyncio.wait_for(loop.sock_recv(a, 10), 10) == b"back" and moved[1] == 4
        a.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(ended, 10) == 0
    finally:
        pair.close()
        a.close()
        b.close()
