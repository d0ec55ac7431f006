"""Giving up while the peer's data still comes, on real TCP: the ABORT, then an orderly
end (FIN). Closing with the peer's bytes unread would reset the connection, and a relay
ends both directions of a pair at the first reset (relay/splice.py), sometimes before
the ABORT crossed it: the sender then heard only "the other side closed the
connection", never that the receiver's disk was full."""

from __future__ import annotations

import asyncio
import socket

from retreatkit.transfer.channel import Channel
from retreatkit.transfer.giveup import give_up
from retreatkit.transfer.link import Link
from retreatkit.transfer.machine import Aborted
from retreatkit.transfer.offer import Entry, Offer
from retreatkit.transfer.receive import WriteError
from retreatkit.transfer.records import RECORD_SIZE
from retreatkit.transfer.testing import accepted_pair


async def test_giving_up_under_a_flood_sends_the_abort_then_a_fin_not_a_reset() -> None:
    sender, receiver = accepted_pair(Offer(entries=(Entry(("big",), size=1 << 40),)))
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        _, channel = await loop.create_connection(Channel, *listener.getsockname()[:2])
        peer, _ = listener.accept()
    channel.start_frames()
    link = Link.over(channel, 10.0)
    record = sender.send_data(bytes(RECORD_SIZE), compress=False)
    peer.setblocking(False)
    try:  # more than both sockets' buffers hold, none of it read yet
        while True:
            peer.send(record)
            record = sender.send_data(bytes(RECORD_SIZE), compress=False)
    except BlockingIOError:
        pass

    async def stop() -> None:
        await give_up(link, receiver, WriteError("cannot write big", "the receiver's disk is full"))
        await link.close()

    stopping = asyncio.ensure_future(stop())
    heard = b""
    try:
        while got := await loop.sock_recv(peer, 65536):
            heard += got
        ended = "closed"
    except ConnectionResetError:
        ended = "reset"
    finally:
        peer.close()
        await stopping
    sender.receive_data(heard)
    assert (sender.next_event(), ended) == (Aborted("the receiver's disk is full"), "closed")
