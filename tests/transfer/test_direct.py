"""Direct connections raced in process on loopback (both sides on one computer, as the
relay saw them): a proven socket only for the holder of the session key, whatever a
hostile peer or a LAN neighbour sends to the listener."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from retreatkit.transfer import direct, hints
from retreatkit.transfer.pake import Side, derive

HERE = "127.0.0.1"
SEEN = ipaddress.ip_address(HERE)  # where the relay's `paired` line says the peer is


async def pair(
    key_s: bytes = b"k" * 32, key_r: bytes = b"k" * 32
) -> tuple[direct.Racer, direct.Racer]:
    sender = direct.Racer(Side.SENDER, derive(key_s, Side.SENDER))
    receiver = direct.Racer(Side.RECEIVER, derive(key_r, Side.RECEIVER))
    return sender, receiver


async def exchange(sender: direct.Racer, receiver: direct.Racer) -> list[hints.Hint]:
    theirs = await receiver.listen(HERE)
    ours = await sender.listen(HERE)
    sender.connect(tuple(theirs), SEEN, HERE)
    receiver.connect(tuple(ours), SEEN, HERE)
    return ours


async def test_both_sides_prove_the_same_socket() -> None:
    sender, receiver = await pair()
    try:
        await exchange(sender, receiver)
        chosen = await sender.first()
        assert chosen is not None
        nonce, channel = chosen
        theirs = await receiver.take(nonce)
        channel.write(b"hello")
        theirs.start_frames()
        assert channel.transport is not None and theirs.transport is not None
    finally:
        await sender.close()
        await receiver.close()


async def test_a_peer_without_the_key_proves_nothing_and_the_relay_stays() -> None:
    sender, receiver = await pair(key_r=b"x" * 32)  # a hostile peer: another session's key
    try:
        await exchange(sender, receiver)
        assert await sender.first() is None  # within the window, no proof: the relay it is
        assert sender.proven == {} and receiver.proven == {}
    finally:
        await sender.close()
        await receiver.close()


async def test_a_neighbour_flooding_the_listener_holds_at_most_eight_sockets() -> None:
    sender, receiver = await pair()
    socks: list[socket.socket] = []
    try:
        ours = await sender.listen(HERE)
        port = next(h.port for h in ours if h.address.version == 4)
        loop = asyncio.get_running_loop()
        for _ in range(20):  # silent neighbours, and one that says a hello it cannot back
            s = socket.socket()
            s.setblocking(False)
            await loop.sock_connect(s, (HERE, port))
            socks.append(s)
        await loop.sock_sendall(socks[-1], hints.hello(Side.RECEIVER, b"n" * 16) + b"m" * 32)
        async with asyncio.timeout(5):
            while sender._unproven < direct.MAX_UNPROVEN:  # the listener took what it takes
                await asyncio.sleep(0.01)
        closed = 0
        for s in socks:  # those it took got its hello; the rest were turned away at once
            try:
                closed += await asyncio.wait_for(loop.sock_recv(s, 1), 5) == b""
            except ConnectionResetError:
                closed += 1
        assert sender._unproven == direct.MAX_UNPROVEN and closed == 20 - direct.MAX_UNPROVEN
        theirs = await receiver.listen(HERE)
        sender.connect(tuple(theirs), SEEN, HERE)  # our own connect still gets through
        receiver.connect(tuple(ours), SEEN, HERE)
        chosen = await sender.first()
        assert chosen is not None
        assert await receiver.take(chosen[0]) is not None
    finally:
        for s in socks:
            s.close()
        await sender.close()
        await receiver.close()
