"""What a session tells its adapter: frozen events, one per thing that happened."""

from __future__ import annotations

from dataclasses import dataclass

from retreatkit.transfer.offer import Offer


@dataclass(frozen=True, slots=True)
class Confirmed:
    verifier: str


@dataclass(frozen=True, slots=True)
class Offered:
    offer: Offer


@dataclass(frozen=True, slots=True)
class Answered:
    accepted: bool


@dataclass(frozen=True, slots=True)
class FileData:
    data: bytes


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


Event = Confirmed | Offered | Answered | FileData | FileEnd | Ended | Done | Aborted
