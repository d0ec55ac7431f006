"""The session's transition table and its error state (h11's discipline), in process."""

from __future__ import annotations

import pytest

from retreatkit.transfer.codes import Code
from retreatkit.transfer.errors import LocalProtocolError, PakeFailed, RemoteProtocolError
from retreatkit.transfer.machine import (
    Aborted,
    Answered,
    Done,
    Ended,
    Hinted,
    Offered,
    PathChosen,
    Session,
    State,
)
from retreatkit.transfer.offer import Entry, Offer
from retreatkit.transfer.pake import Side
from retreatkit.transfer.records import Kind
from retreatkit.transfer.states import TABLE, Move
from retreatkit.transfer.testing import CODE, connected_pair

OFFER = Offer(entries=(Entry(("a",), size=3),))


def test_an_honest_session_walks_the_table() -> None:
    sender, receiver = Session(Side.SENDER, CODE), Session(Side.RECEIVER, CODE)
    seen = [(sender.state, receiver.state)]
    receiver.receive_data(sender.start())
    sender.receive_data(receiver.start())
    receiver.next_event(), sender.next_event()
    seen.append((sender.state, receiver.state))
    receiver.receive_data(sender.data_to_send())
    sender.receive_data(receiver.data_to_send())
    receiver.next_event(), sender.next_event()
    seen.append((sender.state, receiver.state))
    receiver.receive_data(sender.send_hints([]))
    sender.receive_data(receiver.send_hints([]))
    assert receiver.next_event() == sender.next_event() == Hinted(())
    seen.append((sender.state, receiver.state))
    receiver.receive_data(sender.send_offer(OFFER))
    assert receiver.next_event() == Offered(OFFER)
    seen.append((sender.state, receiver.state))
    sender.receive_data(receiver.answer(True))
    assert sender.next_event() == Answered(True)
    seen.append((sender.state, receiver.state))
    receiver.receive_data(sender.send_path(None))
    assert receiver.next_event() == PathChosen(None)
    seen.append((sender.state, receiver.state))
    receiver.receive_data(sender.send_data(b"abc") + sender.end_file() + sender.end())
    while not isinstance(receiver.next_event(), Ended):
        pass
    seen.append((sender.state, receiver.state))
    sender.receive_data(receiver.done())
    assert sender.next_event() == Done()
    seen.append((sender.state, receiver.state))
    assert seen == [
        (State.PAKE, State.PAKE),
        (State.CONFIRM, State.CONFIRM),
        (State.READY, State.READY),
        (State.READY, State.READY),
        (State.OFFERED, State.OFFERED),
        (State.ACCEPTED, State.ACCEPTED),
        (State.TRANSFER, State.TRANSFER),
        (State.ENDED, State.ENDED),
        (State.CLOSED, State.CLOSED),
    ]


def test_every_move_in_the_table_is_one_a_side_can_make() -> None:
    for (side, _state, move), after in TABLE.items():
        assert after is not State.ERROR
        if move in (Move.SENT_OFFER, Move.GOT_YES, Move.GOT_NO, Move.SENT_DATA, Move.GOT_DONE):
            assert side is Side.SENDER
        if move in (Move.GOT_OFFER, Move.SENT_YES, Move.GOT_DATA, Move.SENT_DONE):
            assert side is Side.RECEIVER


def test_a_peers_fault_puts_the_session_in_error_and_it_stays_there() -> None:
    sender, receiver = connected_pair()
    receiver.receive_data(sender.send_offer(OFFER))
    receiver.next_event()
    assert sender._sealer is not None
    receiver.receive_data(sender._sealer.seal(Kind.DONE, b""))  # a sender never sends DONE
    with pytest.raises(RemoteProtocolError, match="the sender sent DONE during offered"):
        receiver.next_event()
    assert receiver.state is State.ERROR
    for call in (receiver.next_event, lambda: receiver.answer(True)):
        with pytest.raises(LocalProtocolError, match="the session already failed: the sender"):
            call()
    # telling the peer why is the one move left, once
    sender.receive_data(receiver.abort("the sender sent DONE during offered"))
    assert sender.next_event() == Aborted("the sender sent DONE during offered")
    assert receiver.abort("again") == b""


def test_misuse_is_our_fault_and_final() -> None:
    sender, _ = connected_pair()
    with pytest.raises(LocalProtocolError, match="sender cannot send DATA in state ready"):
        sender.send_data(b"x")
    assert sender.state is State.ERROR
    with pytest.raises(LocalProtocolError, match="already failed"):
        sender.send_offer(OFFER)


def test_no_abort_before_the_keys_are_confirmed() -> None:
    sender = Session(Side.SENDER, CODE)
    receiver = Session(Side.RECEIVER, Code("7", ("purple", "sofas")))
    receiver.receive_data(sender.start())
    sender.receive_data(receiver.start())
    receiver.next_event(), sender.next_event()
    assert sender.data_to_send()[:1] == bytes([Kind.CONFIRM])  # its own, as usual
    sender.receive_data(receiver.data_to_send())
    with pytest.raises(PakeFailed):
        sender.next_event()
    # the peer could not read an ABORT, and the relay counts the bytes past the
    # key exchange: nothing at all goes out
    assert sender.abort("wrong passphrase") == b"" and sender.data_to_send() == b""


def test_an_answer_is_yes_or_no() -> None:
    sender, receiver = connected_pair()
    receiver.receive_data(sender.send_offer(OFFER))
    receiver.next_event()
    assert receiver._sealer is not None
    sender.receive_data(receiver._sealer.seal(Kind.ANSWER, b"maybe"))
    with pytest.raises(RemoteProtocolError, match="neither yes nor no"):
        sender.next_event()
