"""An offer trickled a record at a time, in process, on a clock the test turns.

The wait for each record was bounded (--timeout) and the wait for the whole offer was
not: a sender or relay that sent one small record just before each timeout held the
receiver for ever. pace.py bounds the whole; these tests run it against a clock that
moves on only when the test (or the hostile side) says. The real-process half, a
trickling sender against `bob recv`, is tests/e2e/test_red_team_cli.py."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from retreatkit.transfer import pace
from retreatkit.transfer.channel import Channel
from retreatkit.transfer.codes import Code
from retreatkit.transfer.errors import TooSlow
from retreatkit.transfer.events import Confirmed
from retreatkit.transfer.link import Link
from retreatkit.transfer.machine import Session
from retreatkit.transfer.offer import MAX_OFFER, Offer
from retreatkit.transfer.pake import Side
from retreatkit.transfer.receiving import offered
from retreatkit.transfer.records import RECORD_SIZE, Kind
from retreatkit.transfer.sending import Options, send_offer
from retreatkit.transfer.source import Sources
from retreatkit.transfer.testing import connected_pair

CODE = Code("7", ("purple", "sofa"))
LATE_OFFER = (
    "the sender's offer of {} bytes did not all come in {} s: a sender or relay that"
    " stalls, or a link slower than 8 KiB/s"
)
LATE_READER = (
    "the receiver did not take the offer of {} bytes in {} s: a receiver or relay that"
    " stalls, or a link slower than 8 KiB/s"
)


class Clock:
    """Stands still until moved."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the bound itself -------------------------------------------------------------------


def test_no_bound_but_each_wait_s_own_until_the_length_is_known() -> None:
    clock = Clock()
    length: list[int | None] = [None]
    bound = pace.Pace(lambda: length[0], 120.0, pace.late_offer, clock)
    clock.now += 10_000
    assert bound.wait(120.0) == (120.0, None)
    assert bound.wait(None) == (None, None)
    assert bound.deadline is None

    length[0] = 8192 * 10  # announced: the whole may take 120 s + 10 s from now
    assert bound.wait(120.0) == (120.0, None)
    assert bound.deadline == clock.now + 130.0
    clock.now += 100
    wait, late = bound.wait(120.0)  # the whole runs out before this wait's own bound
    assert wait == pytest.approx(30.0) and isinstance(late, TooSlow)
    assert str(late) == LATE_OFFER.format(81920, 130)
    clock.now += 30
    with pytest.raises(TooSlow, match="did not all come in 130 s"):
        bound.wait(120.0)


def test_the_largest_honest_offer_at_8_kib_a_second_is_never_late() -> None:
    """An honest sender writes its whole offer at once: it crosses at the link's speed.
    At 8 KiB/s, a record at a time, every wait is allowed, the last one too; and a
    trickle of a record every 119 s (one second inside --timeout) is not."""
    clock = Clock()
    length = MAX_OFFER + 4
    bound = pace.Pace(lambda: length, 120.0, pace.late_offer, clock)
    clock.now += 119.0  # the first record came just inside --timeout: it starts the bound
    came = 0
    while came < length:
        wait, _ = bound.wait(120.0)
        record = min(RECORD_SIZE, length - came)
        assert wait is not None and wait >= record / pace.FLOOR
        clock.now += record / pace.FLOOR
        came += record
    assert bound.deadline is not None and clock.now < bound.deadline

    trickled = pace.Pace(lambda: length, 120.0, pace.late_offer, clock)
    with pytest.raises(TooSlow, match=f"offer of {length} bytes did not all come in 4216 s"):
        for _ in range(length):
            trickled.wait(120.0)
            clock.now += 119.0


def test_a_small_offer_has_its_timeout_and_a_moment() -> None:
    assert pace.allowed(1000, 120.0) == pytest.approx(120.122, abs=0.001)
    assert pace.allowed(MAX_OFFER + 4, 120.0) == pytest.approx(4216.0, abs=0.001)


# -- the receiver -----------------------------------------------------------------------


def keyed() -> tuple[Session, Session]:
    """A sender and a receiver past key confirmation, before any HINTS."""
    sender, receiver = Session(Side.SENDER, CODE), Session(Side.RECEIVER, CODE)
    receiver.receive_data(sender.start())
    sender.receive_data(receiver.start())
    assert receiver.next_event() is None and sender.next_event() is None
    receiver.receive_data(sender.data_to_send())
    sender.receive_data(receiver.data_to_send())
    assert isinstance(receiver.next_event(), Confirmed)
    assert isinstance(sender.next_event(), Confirmed)
    return sender, receiver


class Trickle:
    """A hostile sender's side of the connection and the receiver's clock at once: each
    time the receiver looks at the clock before it waits for more, 10 s have passed and
    one more byte of the offer has come, in a record of its own. Every record comes in
    time (--timeout is 120 s); the offer never would."""

    def __init__(self, sock: socket.socket, sender: Session, rest: bytes) -> None:
        self.sock = sock
        self.sender = sender
        self.rest = iter(rest)
        self.now = 0.0
        self.records = 0

    def __call__(self) -> float:
        self.now += 10.0
        byte = next(self.rest, None)
        if byte is not None:
            self.sock.sendall(self.sender.sealer().seal(Kind.OFFER, bytes([byte])))
            self.records += 1
        return self.now


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    try:
        yield ours, theirs
    finally:
        ours.close()
        theirs.close()


async def test_a_trickled_offer_is_given_up_on_with_one_line(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    sender, receiver = keyed()
    encoded = Offer(text="x" * 1000).encode()
    theirs.sendall(sender.send_hints([]))
    theirs.sendall(sender.sealer().seal(Kind.OFFER, encoded[:5]))  # its length, and a byte
    trickle = Trickle(theirs, sender, encoded[5:])
    _, channel = await asyncio.get_running_loop().create_connection(Channel, sock=ours)
    link = Link.over(channel, 120.0)
    async with asyncio.timeout(30):  # a guard: the receiver never waits 120 s here
        with pytest.raises(TooSlow) as caught:
            await offered(link, receiver, Options(direct=False, clock=trickle))
    assert str(caught.value) == LATE_OFFER.format(len(encoded), 120.1)
    assert 10 <= trickle.records < len(encoded) - 5  # it kept coming, and was cut short
    await link.close()


async def test_an_offer_that_comes_whole_at_once_is_taken(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    sender, receiver = keyed()
    offer = Offer(text="x" * (3 * RECORD_SIZE))
    theirs.sendall(sender.send_hints([]))
    theirs.sendall(sender.send_offer(offer))
    clock = Clock()
    _, channel = await asyncio.get_running_loop().create_connection(Channel, sock=ours)
    link = Link.over(channel, 120.0)
    got, racer = await offered(link, receiver, Options(direct=False, clock=clock))
    assert (got, racer) == (offer, None)
    await link.close()


# -- the sender -------------------------------------------------------------------------


class SlowReader:
    """The sender's end of a connection whose far end takes one byte of what we wrote
    each time we look: never quiet for a whole --timeout, never done. Its `now` is the
    sender's clock, 1 s on at each look."""

    def __init__(self) -> None:
        self.transport = self
        self.buffered = 0
        self.written = 0
        self.now = 0.0

    def clock(self) -> float:
        self.now += 1.0
        return self.now

    def is_closing(self) -> bool:
        return False

    def writelines(self, frames: list[bytes]) -> None:
        self.written += sum(len(frame) for frame in frames)
        self.buffered += sum(len(frame) for frame in frames)

    def get_write_buffer_size(self) -> int:
        self.buffered -= 1
        return self.buffered

    async def drain(self) -> None:
        await asyncio.Event().wait()


async def test_a_receiver_that_reads_the_offer_a_byte_at_a_time_is_given_up_on() -> None:
    sender, _ = connected_pair()
    offer = Offer(text="x" * (2 * RECORD_SIZE))
    sources = Sources(offer, [])
    reader = SlowReader()
    # each wait for the buffer to empty is 50 ms here, and the reader takes a byte in each
    link = Link(None, reader, 0.05)
    async with asyncio.timeout(30):
        with pytest.raises(TooSlow) as caught:
            await send_offer(link, sender, sources, Options(direct=False, clock=reader.clock))
    assert str(caught.value) == LATE_READER.format(reader.written, 16.1)
    assert reader.written - reader.buffered > 10  # it kept reading, and was cut short
