"""Test tools for the transfer core: two Sessions joined in memory, no sockets."""

from __future__ import annotations

from retreatkit.transfer.codes import Code
from retreatkit.transfer.errors import RemoteProtocolError
from retreatkit.transfer.machine import Confirmed, Session
from retreatkit.transfer.pake import Side

CODE = Code("7", ("purple", "sofa"))


def connected_pair(sender_code: Code = CODE, receiver_code: Code = CODE) -> tuple[Session, Session]:
    """A sender and a receiver that have done the PAKE and confirmed their keys."""
    sender, receiver = Session(Side.SENDER, sender_code), Session(Side.RECEIVER, receiver_code)
    receiver.receive_data(sender.start())
    sender.receive_data(receiver.start())
    if receiver.next_event() is not None or sender.next_event() is not None:
        raise RemoteProtocolError("an event before key confirmation")
    receiver.receive_data(sender.data_to_send())
    sender.receive_data(receiver.data_to_send())
    if not isinstance(receiver.next_event(), Confirmed):
        raise RemoteProtocolError("the receiver did not confirm")
    if not isinstance(sender.next_event(), Confirmed):
        raise RemoteProtocolError("the sender did not confirm")
    return sender, receiver
