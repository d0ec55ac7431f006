"""The sender as its own rendezvous, in process on loopback (the announcer is a stand-in:
multicast from the test host would leave the machine; the real one runs between
network namespaces in tests/e2e/test_bob_lan.py). Neighbours that connect and say
anything but the right request are turned away without burning the nameplate; an offer
that closes ends the sender's wait for more receivers."""

from __future__ import annotations

import asyncio

import pytest

from retreatkit.cli import bob
from retreatkit.transfer import find
from retreatkit.transfer.codes import Code
from retreatkit.transfer.link import Relay, Unreachable
from retreatkit.transfer.rendezvous import Closed, OwnRendezvous

HERE = "127.0.0.1"


class Announced:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], int]] = []

    async def __call__(self, nameplate: str, addresses: list[str], port: int) -> Announced:
        self.calls.append((nameplate, addresses, port))
        return self

    async def close(self) -> None:
        pass


async def say(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(HERE, port)
    writer.write(data)
    await writer.drain()
    try:
        async with asyncio.timeout(5):
            return await reader.read(200)
    finally:
        writer.close()


async def test_neighbours_are_turned_away_and_the_receiver_gets_through() -> None:
    announced = Announced()
    rendezvous = OwnRendezvous(1, 5.0, announce=announced, host=HERE)  # type: ignore[arg-type]
    try:
        plate = await rendezvous.open("4242")
        (nameplate, _, port) = announced.calls[0]
        assert plate == nameplate == "4242"
        assert await say(port, b"GET / HTTP/1.1\r\n\r\n") == b"error not a bob/1 request\n"
        assert await say(port, b"bob/1 send\n") == b"error not a bob/1 request\n"
        assert (
            await say(port, b"bob/1 recv 99\n") == b"error no sender is waiting on nameplate 99\n"
        )
        assert await say(port, b"x" * 4096) == b"error not a bob/1 request\n"
        # nothing of that burned the nameplate: the receiver that names it is paired
        reader, writer = await asyncio.open_connection(HERE, port)
        writer.write(b"bob/1 recv 4242\n")
        link, peer = await asyncio.wait_for(rendezvous.next(), 5)
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line.startswith(b"paired 127.0.0.1:") and peer.startswith("127.0.0.1:")
        assert link.direct
        writer.close()
        await link.close()
    finally:
        await rendezvous.close()


async def test_a_flood_of_silent_neighbours_is_bounded() -> None:
    rendezvous = OwnRendezvous(1, 5.0, announce=Announced(), host=HERE)  # type: ignore[arg-type]
    writers = []
    try:
        await rendezvous.open(None)
        assert rendezvous._server is not None
        port = rendezvous._server.sockets[0].getsockname()[1]
        for _ in range(40):
            reader, writer = await asyncio.open_connection(HERE, port)
            writers.append((reader, writer))
        async with asyncio.timeout(5):
            while len(rendezvous._pending) < OwnRendezvous.MAX_PENDING:
                await asyncio.sleep(0.01)
        turned = 0
        for reader, _ in writers:
            try:
                turned += await asyncio.wait_for(reader.read(1), 0.05) == b""
            except ConnectionResetError:
                turned += 1
            except TimeoutError:
                pass
        assert len(rendezvous._pending) == OwnRendezvous.MAX_PENDING
        assert turned == 40 - OwnRendezvous.MAX_PENDING
    finally:
        for _, writer in writers:
            writer.close()
        await rendezvous.close()


async def test_closing_the_offer_ends_a_wait_for_the_next_receiver() -> None:
    # --count 3: a wrong passphrase closes the offer while the sender waits for more
    rendezvous = OwnRendezvous(3, 5.0, announce=Announced(), host=HERE)  # type: ignore[arg-type]
    try:
        await rendezvous.open("4243")
        assert rendezvous._server is not None
        port = rendezvous._server.sockets[0].getsockname()[1]
        waiting = asyncio.ensure_future(rendezvous.next())
        # a neighbour's round trip: by its answer, the wait above is under way
        assert await say(port, b"bob/1 send\n") == b"error not a bob/1 request\n"
        assert not waiting.done()
        await rendezvous.close()
        with pytest.raises(Closed):
            await asyncio.wait_for(waiting, 5)
    finally:
        await rendezvous.close()


def test_a_receiver_that_reaches_nobody_is_told_what_it_looked_for() -> None:
    code = Code("42", ("purple", "sofa"))
    gone = Unreachable(Relay("10.78.0.1", 40000), "Connection refused")
    peer = find.Target(Relay("10.78.0.1", 40000), "peer")
    assert str(bob._unreached(gone, peer, code)) == (
        "the sender of nameplate 42 on this network is not waiting any more"
        " (Connection refused): ask for a new bob send"
    )
    nothing = Unreachable(find.DEFAULT, "Temporary failure in name resolution")
    assert str(bob._unreached(nothing, find.Target(find.DEFAULT, "default"), code)) == (
        "no sender is waiting on nameplate 42 on this network, and no relay answers at"
        " relay.retreat.lan:9000 (Temporary failure in name resolution): check the"
        " passphrase, or give --relay HOST:PORT"
    )
    given = find.Target(Relay("10.0.0.5", 9000), "given")  # the user's own word stands
    assert bob._unreached(gone, given, code) is gone
