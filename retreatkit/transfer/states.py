"""Every state a bob/1 session can be in and every move between them, in one table (no I/O).

As in h11, a move the table does not list is an error: the peer's fault when the peer
made it, ours when we did. Any error puts the session in ERROR, from which the only
move left is telling the peer why (ABORT, once keys are confirmed).
"""

from __future__ import annotations

import enum

from retreatkit.transfer.pake import Side


class State(enum.Enum):
    PAKE = "pake"  # waiting for the peer's PAKE message
    CONFIRM = "confirm"  # waiting for the peer's key confirmation
    READY = "ready"  # keys confirmed: hints go both ways, the sender offers
    OFFERED = "offered"  # offer sent or received, no answer yet
    ACCEPTED = "accepted"  # yes, with what the receiver already holds; the path not chosen
    RESUMING = "resuming"  # the sender's block hashes sent or received, no start yet
    RESUMED = "resumed"  # the receiver said where the data starts
    TRANSFER = "transfer"  # the path is chosen; file data flowing
    ENDED = "ended"  # the sender sent END, the receiver has not yet said DONE
    CLOSED = "closed"  # DONE, a refusal or an ABORT: over, as agreed
    ERROR = "error"  # something failed; nothing more moves


class Move(enum.Enum):
    """What happened: a record the peer sent (GOT_*) or one we send (SENT_*)."""

    GOT_PAKE = "PAKE"
    GOT_CONFIRM = "CONFIRM"
    GOT_HINTS = "HINTS"
    GOT_OFFER_PART = "OFFER"  # a piece of a longer offer
    GOT_OFFER = "OFFER (complete)"
    GOT_YES = "ANSWER yes"
    GOT_NO = "ANSWER no"
    GOT_PREFIX = "PREFIX"
    GOT_FROM = "FROM"
    GOT_PATH = "PATH"
    GOT_PATH_ACK = "PATH_ACK"
    GOT_DATA = "DATA"
    GOT_FILE_END = "FILE_END"
    GOT_END = "END"
    GOT_DONE = "DONE"
    GOT_ABORT = "ABORT"
    SENT_HINTS = "our HINTS"
    SENT_OFFER = "our OFFER"
    SENT_YES = "our ANSWER yes"
    SENT_NO = "our ANSWER no"
    SENT_PREFIX = "our PREFIX"
    SENT_FROM = "our FROM"
    SENT_PATH = "our PATH"
    SENT_PATH_ACK = "our PATH_ACK"
    SENT_DATA = "our DATA"
    SENT_FILE_END = "our FILE_END"
    SENT_END = "our END"
    SENT_DONE = "our DONE"
    SENT_ABORT = "our ABORT"

    @property
    def ours(self) -> bool:
        return self.name.startswith("SENT_")


S, R = Side.SENDER, Side.RECEIVER

TABLE: dict[tuple[Side, State, Move], State] = {
    # the key exchange, the same on both sides
    (S, State.PAKE, Move.GOT_PAKE): State.CONFIRM,
    (R, State.PAKE, Move.GOT_PAKE): State.CONFIRM,
    (S, State.CONFIRM, Move.GOT_CONFIRM): State.READY,
    (R, State.CONFIRM, Move.GOT_CONFIRM): State.READY,
    # hints, each side's first record (the session checks "first" and "once")
    (S, State.READY, Move.SENT_HINTS): State.READY,
    (R, State.READY, Move.SENT_HINTS): State.READY,
    (S, State.READY, Move.GOT_HINTS): State.READY,
    (S, State.OFFERED, Move.GOT_HINTS): State.OFFERED,
    (R, State.READY, Move.GOT_HINTS): State.READY,
    # the sender
    (S, State.READY, Move.SENT_OFFER): State.OFFERED,
    (S, State.OFFERED, Move.GOT_YES): State.ACCEPTED,
    (S, State.OFFERED, Move.GOT_NO): State.CLOSED,
    (S, State.ACCEPTED, Move.SENT_PREFIX): State.RESUMING,  # the receiver holds a part
    (S, State.RESUMING, Move.GOT_FROM): State.RESUMED,
    (S, State.ACCEPTED, Move.SENT_PATH): State.TRANSFER,  # it holds nothing
    (S, State.RESUMED, Move.SENT_PATH): State.TRANSFER,
    (S, State.TRANSFER, Move.SENT_DATA): State.TRANSFER,
    (S, State.TRANSFER, Move.SENT_FILE_END): State.TRANSFER,
    (S, State.TRANSFER, Move.GOT_PATH_ACK): State.TRANSFER,
    (S, State.TRANSFER, Move.SENT_END): State.ENDED,
    (S, State.ENDED, Move.GOT_PATH_ACK): State.ENDED,
    (S, State.ENDED, Move.GOT_DONE): State.CLOSED,
    # the receiver
    (R, State.READY, Move.GOT_OFFER_PART): State.READY,
    (R, State.READY, Move.GOT_OFFER): State.OFFERED,
    (R, State.OFFERED, Move.SENT_YES): State.ACCEPTED,
    (R, State.OFFERED, Move.SENT_NO): State.CLOSED,
    (R, State.ACCEPTED, Move.GOT_PREFIX): State.RESUMING,
    (R, State.RESUMING, Move.SENT_FROM): State.RESUMED,
    (R, State.ACCEPTED, Move.GOT_PATH): State.TRANSFER,
    (R, State.RESUMED, Move.GOT_PATH): State.TRANSFER,
    (R, State.TRANSFER, Move.SENT_PATH_ACK): State.TRANSFER,
    (R, State.TRANSFER, Move.GOT_DATA): State.TRANSFER,
    (R, State.TRANSFER, Move.GOT_FILE_END): State.TRANSFER,
    (R, State.TRANSFER, Move.GOT_END): State.ENDED,
    (R, State.ENDED, Move.SENT_PATH_ACK): State.ENDED,
    (R, State.ENDED, Move.SENT_DONE): State.CLOSED,
}
# either side may give up, with a reason, once the keys are confirmed and until it is over
_LIVE = (
    State.READY,
    State.OFFERED,
    State.ACCEPTED,
    State.RESUMING,
    State.RESUMED,
    State.TRANSFER,
    State.ENDED,
)
for _side in Side:
    for _state in _LIVE:
        TABLE[_side, _state, Move.GOT_ABORT] = State.CLOSED
        TABLE[_side, _state, Move.SENT_ABORT] = State.CLOSED
