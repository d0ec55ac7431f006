"""The sender as its own rendezvous, in process on loopback (the announcer is a stand-in:
multicast from the test host would leave the machine; the real one runs between
network namespaces in tests/e2e/test_bob_lan.py). Neighbours that connect and say
anything but the right request are turned away without burning the nameplate; an offer
that closes ends the sender's wait for more receivers."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from retreatkit import mdns
from retreatkit.cli import bob, relayhelp
from retreatkit.transfer import find
from retreatkit.transfer.codes import Code
from retreatkit.transfer.link import Relay, RelayError, Unreachable
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


Silent = list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]


async def silent(port: int, source: str, count: int, made: Silent) -> None:
    """`count` connections from `source` (an address of 127/8) that never say a word."""
    for _ in range(count):
        made.append(await asyncio.open_connection(HERE, port, local_addr=(source, 0)))


async def paired(rendezvous: OwnRendezvous, port: int, source: str, plate: str) -> None:
    """A receiver from `source` asks for `plate` and is paired (every connection made
    before it has been accepted by then: the listener takes them in order)."""
    reader, writer = await asyncio.open_connection(HERE, port, local_addr=(source, 0))
    try:
        writer.write(f"bob/1 recv {plate}\n".encode())
        link, peer = await asyncio.wait_for(rendezvous.next(), 5)
        assert peer.startswith(f"{source}:")
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"paired ")
        await link.close()
    finally:
        writer.close()


async def test_a_flood_of_silent_neighbours_is_bounded() -> None:
    """From one address, the newest few silent connections wait and the older ones are
    pushed out; the receiver from that very address gets through."""
    rendezvous = OwnRendezvous(2, 5.0, announce=Announced(), host=HERE)  # type: ignore[arg-type]
    made: Silent = []
    try:
        plate = await rendezvous.open(None)
        assert rendezvous._server is not None
        port = rendezvous._server.sockets[0].getsockname()[1]
        await silent(port, "127.0.0.1", 40, made)
        await paired(rendezvous, port, "127.0.0.1", plate)
        kept = OwnRendezvous.MAX_PER_ADDRESS - 1  # the receiver pushed out one more
        assert len(rendezvous._pending) == kept
        for reader, _ in made[:-kept]:
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(1), 5) == b""
        # many addresses: never more than the bound wait at once
        for n in range(2, 9):
            await silent(port, f"127.0.0.{n}", OwnRendezvous.MAX_PER_ADDRESS, made)
        await paired(rendezvous, port, "127.0.0.1", plate)
        assert len(rendezvous._pending) == OwnRendezvous.MAX_PENDING - 1
    finally:
        for _, writer in made:
            writer.close()
        await rendezvous.close()


async def test_silent_neighbours_keep_no_receiver_out() -> None:
    """Neighbours on five addresses keep every place to wait full of connections that say
    nothing: a receiver arriving from another address is heard and paired all the same."""
    rendezvous = OwnRendezvous(1, 5.0, announce=Announced(), host=HERE)  # type: ignore[arg-type]
    made: Silent = []
    try:
        plate = await rendezvous.open(None)
        assert rendezvous._server is not None
        port = rendezvous._server.sockets[0].getsockname()[1]
        for n in range(2, 7):
            await silent(port, f"127.0.0.{n}", 10, made)
        await paired(rendezvous, port, "127.0.0.9", plate)
    finally:
        for _, writer in made:
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


class Squatted(Announced):
    """A LAN where a neighbour holds every nameplate below `below` (mDNS probing finds
    each taken)."""

    def __init__(self, below: int) -> None:
        super().__init__()
        self.below = below

    async def __call__(self, nameplate: str, addresses: list[str], port: int) -> Announced:
        await super().__call__(nameplate, addresses, port)
        if int(nameplate) < self.below:
            raise mdns.NameTaken(f"bob sender {nameplate}")
        return self


async def test_a_lan_whose_short_nameplates_are_all_taken_gives_a_longer_one() -> None:
    """A neighbour announcing `bob sender 1` to `bob sender 99` stopped every sender that
    is its own rendezvous (`no free nameplate on this network`): three taken, it draws
    from 1-9999, and then from 1-999999; on a LAN where every one is taken it says so."""
    drawn: list[int] = []

    def randbelow(below: int) -> int:
        drawn.append(below)
        return below - 1  # the highest: 99, then 9999

    squatted = Squatted(100)
    rendezvous = OwnRendezvous(1, 5.0, squatted, HERE, randbelow)  # type: ignore[arg-type]
    try:
        assert await rendezvous.open(None) == "9999"
    finally:
        await rendezvous.close()
    assert [plate for plate, _, _ in squatted.calls] == ["99", "99", "99", "9999"]
    assert drawn == [99, 99, 99, 9999]

    drawn.clear()
    full = OwnRendezvous(1, 5.0, Squatted(10**6), HERE, randbelow)  # type: ignore[arg-type]
    with pytest.raises(RelayError) as caught:
        await full.open(None)
    assert str(caught.value) == "no free nameplate on this network; try again"
    assert drawn == [99] * 3 + [9999] * 3 + [999_999] * 10


def test_a_receiver_that_reaches_nobody_is_told_what_it_looked_for() -> None:
    code = Code("42", ("purple", "sofa"))
    gone = Unreachable(Relay("10.78.0.1", 40000), "Connection refused")
    peer = find.Target(Relay("10.78.0.1", 40000), "peer")
    assert str(relayhelp.unreached(gone, peer, code)) == (
        "the sender of nameplate 42 on this network is not waiting any more"
        " (Connection refused): ask for a new bob send"
    )
    nothing = Unreachable(find.DEFAULT, "Temporary failure in name resolution")
    assert str(relayhelp.unreached(nothing, find.Target(find.DEFAULT, "default"), code)) == (
        "no sender is waiting on nameplate 42 on this network, and no relay answers at"
        " relay.retreat.lan:9000 (Temporary failure in name resolution): check the"
        " passphrase, or give --relay HOST:PORT"
    )
    given = find.Target(Relay("10.0.0.5", 9000), "given")  # the user's own word stands
    assert relayhelp.unreached(gone, given, code) is gone


def test_no_direct_with_no_relay_is_told_it_needs_one() -> None:
    """--no-direct never meets its peer without a relay (that would be direct): reaching
    no relay by the default name, each side says so and what to do."""
    code = Code("42", ("purple", "sofa"))
    nothing = Unreachable(find.DEFAULT, "Temporary failure in name resolution")
    default = find.Target(find.DEFAULT, "default")
    assert str(relayhelp.unreached(nothing, default, code, no_direct=True)) == (
        "--no-direct needs a relay, and none answers at relay.retreat.lan:9000 (Temporary"
        " failure in name resolution): give --relay HOST:PORT, or leave out --no-direct to"
        " connect to a sender on the LAN"
    )
    given = find.Target(Relay("10.0.0.5", 9000), "given")  # the user's own word stands
    gone = Unreachable(given.relay, "Connection refused")
    assert relayhelp.unreached(gone, given, code, no_direct=True) is gone


@pytest.mark.parametrize("command", ["send", "recv"])
def test_no_direct_says_it_needs_a_relay_in_the_help(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        bob.main([command, "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert (
        "--no-direct never connect to the other computer: everything goes through a relay"
        " (with none to reach, bob stops)"
    ) in shown


async def test_every_bob_connection_has_the_kernel_ask_a_quiet_peer() -> None:
    """Keepalive and a user timeout on both ends of a bob connection (25 s to give up on
    a peer that vanished) until the data flows: test_bob_lan.py shows them ending a real
    wait."""
    from retreatkit.transfer.channel import Channel

    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[Channel] = loop.create_future()
    server = await loop.create_server(lambda: Channel(accepted.set_result), "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        _, dialled = await loop.create_connection(Channel, "127.0.0.1", port)
        for channel in (dialled, await accepted):
            assert channel.transport is not None
            sock = channel.transport.get_extra_info("socket")
            got = (
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
            )
            assert got == (1, 10, 5, 3, 25000)
            channel.allow_stalls()  # the data flows: a stalled reader ends nothing
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 0
            channel.close()
    finally:
        server.close()
