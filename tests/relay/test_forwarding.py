"""The relay's shell in process, on loopback, both ways it forwards a pair: through the
kernel (splice) and, where that is not available, through its transports. Both must move
bytes both ways unchanged, count them in /status, pass on a side's end of writing while
the other still talks, and end the pair when one side leaves."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from retreatkit.relay import splice
from retreatkit.relay.server import Relay

WAIT = 20.0  # seconds; only ever a bound on a wait for something that must happen

MODES = [
    pytest.param(True, id="splice", marks=pytest.mark.skipif(not splice.AVAILABLE, reason="Linux")),
    pytest.param(False, id="transports"),
]


@pytest.fixture(params=MODES)
async def relay(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Relay, int]]:
    r = Relay(registry=CollectorRegistry(), use_splice=request.param)
    _, port = await r.start("127.0.0.1", 0)
    try:
        yield r, port
    finally:
        await r.stop()


async def settled(r: Relay, done: Any) -> dict[str, Any]:
    """Poll the relay's status until `done(status)`, within WAIT seconds."""
    async with asyncio.timeout(WAIT):
        while not done(current := r.status()):
            await asyncio.sleep(0.01)
    return current


async def test_a_pair_moves_bytes_both_ways_and_counts_them(relay: tuple[Relay, int]) -> None:
    r, port = relay
    sr, sw = await asyncio.open_connection("127.0.0.1", port)
    sw.write(b"bob/1 send\n")
    ok = (await sr.readline()).split()
    assert ok[0] == b"ok"
    rr, rw = await asyncio.open_connection("127.0.0.1", port)
    rw.write(b"bob/1 recv " + ok[1] + b"\n")
    assert (await rr.readline()).startswith(b"paired ")
    assert (await sr.readline()).startswith(b"paired ")

    up, down = os.urandom(3 << 20), os.urandom(1 << 20)
    sw.write(up)
    rw.write(down)
    got_up, got_down = await asyncio.wait_for(
        asyncio.gather(rr.readexactly(len(up)), sr.readexactly(len(down))), WAIT
    )
    assert (got_up, got_down) == (up, down)
    live = await settled(r, lambda s: s["bytes_relayed"] == len(up) + len(down))
    assert live["transfers_active"] == 1

    rw.close()  # the receiver leaves: the sender's side ends too
    assert await asyncio.wait_for(sr.read(), WAIT) == b""
    sw.close()
    done = await settled(r, lambda s: s["connections_open"] == 0)
    assert done["bytes_relayed"] == len(up) + len(down)
    assert done["transfers_completed"] == 1
    assert done["ended"]["completed"] == 2


async def test_a_side_that_ends_its_writing_still_hears_its_peer(relay: tuple[Relay, int]) -> None:
    r, port = relay
    sr, sw = await asyncio.open_connection("127.0.0.1", port)
    sw.write(b"bob/1 send\n")
    ok = (await sr.readline()).split()
    rr, rw = await asyncio.open_connection("127.0.0.1", port)
    rw.write(b"bob/1 recv " + ok[1] + b"\n")
    assert (await rr.readline()).startswith(b"paired ")
    assert (await sr.readline()).startswith(b"paired ")

    last = os.urandom(1 << 20)
    sw.write(last)
    sw.write_eof()  # the sender has said all it has (bob's ABORT is such a last word)
    assert await asyncio.wait_for(rr.read(), WAIT) == last  # all of it, then the end
    rw.write(b"the receiver's last word")
    rw.close()
    assert await asyncio.wait_for(sr.read(), WAIT) == b"the receiver's last word"
    sw.close()
    done = await settled(r, lambda s: s["connections_open"] == 0)
    assert done["bytes_relayed"] == len(last) + len(b"the receiver's last word")
    assert done["ended"]["completed"] == 2
