"""The sender as its own rendezvous, in process on loopback (the announcer is a stand-in:
multicast from the test host would leave the machine; the real one runs between
network namespaces in tests/e2e/test_bob_lan.py). Neighbours that connect and say
anything but the right request are turned away without burning the nameplate."""

from __future__ import annotations

import asyncio

from retreatkit.transfer.rendezvous import OwnRendezvous

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
