"""What a session tells its adapter: frozen events, one per thing that happened."""

from __future__ import annotations

from dataclasses import dataclass

from retreatkit.transfer.hints import Hint
from retreatkit.transfer.offer import Offer
from retreatkit.transfer.resume import NOTHING, Claim


@dataclass(frozen=True, slots=True)
class Confirmed:
    verifier: str


@dataclass(frozen=True, slots=True)
class Offered:
    offer: Offer


@dataclass(frozen=True, slots=True)
class Hinted:
    """The peer's hints, decoded but not yet judged (hints.viable)."""

    hints: tuple[Hint, ...]


@dataclass(frozen=True, slots=True)
class Answered:
    accepted: bool
    claim: Claim = NOTHING  # what the receiver holds already


@dataclass(frozen=True, slots=True)
class Prefixed:
    """The sender's block hashes of what the receiver claimed."""

    hashes: list[bytes]


@dataclass(frozen=True, slots=True)
class Started:
    """Where the receiver wants the data to start."""

    start: Claim


@dataclass(frozen=True, slots=True)
class PathChosen:
    direct: bytes | None  # the sender nonce of the direct connection, or None: stay


@dataclass(frozen=True, slots=True)
class PathAcked:
    pass


@dataclass(frozen=True, slots=True)
class FileData:
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class FileEnd:
    index: int  # into offer.files


@dataclass(frozen=True, slots=True)
class Ended:
    pass


@dataclass(frozen=True, slots=True)
class Done:
    pass


@dataclass(frozen=True, slots=True)
class Aborted:
    reason: str


Event = (
    Confirmed
    | Hinted
    | Offered
    | Answered
    | Prefixed
    | Started
    | PathChosen
    | PathAcked
    | FileData
    | FileEnd
    | Ended
    | Done
    | Aborted
)
