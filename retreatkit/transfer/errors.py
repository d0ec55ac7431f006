"""Transfer errors, named for whose fault they are (as h11 does)."""

from __future__ import annotations


class TransferError(Exception):
    """Base: the message is one line a user can read."""


class LocalProtocolError(TransferError):
    """We misused the protocol machine: a bug in our code."""


class RemoteProtocolError(TransferError):
    """The peer broke the protocol: malformed, tampered, reordered or truncated data."""


class PakeFailed(RemoteProtocolError):
    """A guess at the passphrase failed: the peer's key exchange message was well formed
    and our confirmation went out, and the peer's did not check out (or never came, since
    with ours in hand the peer can check its guess offline). Usually a wrong passphrase."""


class NoKeyExchange(RemoteProtocolError):
    """The other end never sent a well-formed key exchange message: not bob/1, malformed,
    silent, or gone before it. Our confirmation never went out, so no guess at the
    passphrase was made: the words still hold."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}; no guess at the passphrase was made")


class Refused(TransferError):
    """The other side declined the transfer. A refusal that is not its user's no (the
    offer cannot go where the receiver was told to put it) says why in `public`, which
    the peer hears in an ABORT in place of the answer: "declined" would be untrue."""

    def __init__(self, message: str, public: str | None = None) -> None:
        super().__init__(message)
        self.public = public


class UnsafeOffer(RemoteProtocolError):
    """The offer names a path or size we will not accept."""


class PeerGone(TransferError):
    """The connection ended, broke or went quiet before the transfer did: nobody broke the
    protocol. Every record that arrived whole was authenticated, so what it carried stands
    (a receiver keeps its partial file to resume); the bytes of a record cut off are
    simply dropped."""


class TooSlow(PeerGone):
    """The peer kept the connection alive but moved too little over it: its offer took
    longer, on the whole, than an honest one over any link bob is meant for (pace.py)."""


class PeerAborted(PeerGone):
    """The peer said why it gives up (an ABORT): a stop on purpose, nothing to resume."""


class OverLimit(TransferError):
    """The peer sent more than this side takes: a stream past the room it has."""
