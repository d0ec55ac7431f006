"""Who pairs with whom, and the relay's limits: a pure machine behind the socket shell."""

from __future__ import annotations

import enum
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass


class Mood(enum.Enum):
    """How a connection ended (after magic-wormhole's transit relay)."""

    HAPPY = "happy"  # paired, and the bytes flowed until a side closed
    LONELY = "lonely"  # a sender left, or timed out, before a receiver came
    JILTED = "jilted"  # a receiver named a nameplate with no sender waiting
    ERRORY = "errory"  # malformed handshake, overlong line, limits, timeouts
    REFUSED = "refused"  # turned away at the door by a limit


class Refusal(Exception):
    """The relay will not do what was asked; the text goes back to the client."""


@dataclass(frozen=True, slots=True)
class Limits:
    per_ip: int = 64
    waiting: int = 1000
    handshake_timeout: float = 10.0
    wait_timeout: float = 3600.0
    idle_timeout: float = 300.0


class Matcher:
    """Nameplate -> waiting sender; a nameplate pairs once, then it is burned."""

    def __init__(self, limits: Limits, randbelow: Callable[[int], int] = secrets.randbelow):
        self.limits = limits
        self._randbelow = randbelow
        self._waiting: dict[str, object] = {}
        self._by_ip: Counter[str] = Counter()

    # -- connections ----------------------------------------------------------------

    def admit(self, ip: str) -> None:
        if self._by_ip[ip] >= self.limits.per_ip:
            raise Refusal(f"too many connections from {ip}")
        self._by_ip[ip] += 1

    def release(self, ip: str) -> None:
        self._by_ip[ip] -= 1
        if self._by_ip[ip] <= 0:
            del self._by_ip[ip]

    @property
    def open_connections(self) -> int:
        return sum(self._by_ip.values())

    # -- nameplates -------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def allocate(self, who: object) -> str:
        """A fresh short nameplate for a sender."""
        self._check_room()
        # short numbers while few wait; longer ones as the room fills, so a free
        # one is found fast and a stale code rarely hits a new sender
        span = 100 if len(self._waiting) < 30 else 10_000 if len(self._waiting) < 3000 else 10**6
        for _ in range(64):
            nameplate = str(1 + self._randbelow(span - 1))
            if nameplate not in self._waiting:
                self._waiting[nameplate] = who
                return nameplate
        raise Refusal("no free nameplate; try again")

    def claim(self, who: object, nameplate: str) -> str:
        """A sender brought its own passphrase, so its own nameplate."""
        self._check_room()
        if nameplate in self._waiting:
            raise Refusal(f"nameplate {nameplate} is in use; choose another passphrase")
        self._waiting[nameplate] = who
        return nameplate

    def join(self, nameplate: str) -> object:
        """A receiver: pair with the sender waiting on `nameplate`, burning it."""
        try:
            return self._waiting.pop(nameplate)
        except KeyError:
            raise Refusal(f"no sender is waiting on nameplate {nameplate}") from None

    def leave(self, who: object, nameplate: str | None) -> None:
        if nameplate is not None and self._waiting.get(nameplate) is who:
            del self._waiting[nameplate]

    def _check_room(self) -> None:
        if len(self._waiting) >= self.limits.waiting:
            raise Refusal("the relay is full; try again later")
