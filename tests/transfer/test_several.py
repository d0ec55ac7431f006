"""`bob send --count N` in process: a relay (or the LAN) that hands the sender many
receivers at once still gives a guesser one try, since key exchanges run one at a time
and a failed one closes the offer before the next begins."""

from __future__ import annotations

import asyncio
import socket

import pytest

from retreatkit.transfer import aio, records, source
from retreatkit.transfer.channel import Channel
from retreatkit.transfer.codes import Code
from retreatkit.transfer.errors import PakeFailed
from retreatkit.transfer.link import Link
from retreatkit.transfer.machine import Session
from retreatkit.transfer.offer import Offer
from retreatkit.transfer.pake import Side
from retreatkit.transfer.records import Kind
from retreatkit.transfer.testing import Handed, Heard

RIGHT = Code("51", ("abandon", "ability"))
WRONG = Code("51", ("abandon", "able"))


async def guesser(sock: socket.socket) -> bytes:
    """Send a PAKE for a wrong passphrase at once, then take whatever comes back."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, Session(Side.RECEIVER, WRONG).start())
    got = b""
    while chunk := await loop.sock_recv(sock, 4096):
        got += chunk
    return got


async def test_many_guessers_at_once_get_one_guess_between_them() -> None:
    loop = asyncio.get_running_loop()
    links, theirs = [], []
    for _ in range(3):
        ours, other = socket.socketpair()
        other.setblocking(False)
        _, channel = await loop.create_connection(Channel, sock=ours)
        links.append(Link.over(channel, 1.0))  # the first guesser goes quiet: not for long
        theirs.append(other)
    guesses = [asyncio.ensure_future(guesser(s)) for s in theirs]
    sources = source.Sources(Offer(text="for three"), [])
    with pytest.raises(PakeFailed, match="the offer is closed after 0 of 3"):
        await aio.send(Handed(links, "51"), sources, RIGHT, Heard(), aio.Options(direct=False), 3)
    heard = await asyncio.wait_for(asyncio.gather(*guesses), 10)
    for s in theirs:
        s.close()
    # each got the sender's PAKE message at once (which checks no guess), and only the
    # first its CONFIRM (its one guess): no other key exchange went on after it failed
    pake, confirm = records.frame(Kind.PAKE, bytes(33)), records.frame(Kind.CONFIRM, bytes(32))
    assert [len(h) for h in heard] == [len(pake) + len(confirm), len(pake), len(pake)]
    assert [h[len(pake) : len(pake) + 1] for h in heard] == [bytes([Kind.CONFIRM]), b"", b""]
