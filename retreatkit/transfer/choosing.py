"""How long a sender that offers at several relays at once waits for them (no I/O: the
clock is passed in, so tests say when each relay answers).

Anyone on the LAN can announce a relay, and one that takes the connection and never
says a word costs its owner nothing. So the sender asks every relay at once, holds its
nameplate at each that answers `ok` (the first to answer chooses the nameplate; one
that gives another is asked again for it), and stops waiting SETTLE seconds after the
first answer, or as soon as every relay answered or failed. A real relay on a LAN
answers in milliseconds, and several real ones within moments of each other, so a
silent relay costs the sender nothing once a real one answered; with none answering,
each relay's own bound on its answer (find.HELLO, the I/O's) ends the wait."""

from __future__ import annotations

from retreatkit.transfer.errors import LocalProtocolError, TransferError

SETTLE = 0.25  # seconds the others have, after the first relay held the nameplate


class Tries:
    """The relays 0..count-1 asked at once: what each did, and when the wait is over.
    `nameplate`: the one the user chose (BOB_PASSPHRASE), else the first answer's."""

    def __init__(self, count: int, nameplate: str | None = None, settle: float = SETTLE) -> None:
        self.count = count
        self.nameplate = nameplate
        self.settle = settle
        self.held: list[int] = []  # hold our nameplate, in the order of the relays
        self.moved: list[int] = []  # hold another: to close, and ask again for ours
        self.failed: dict[int, TransferError] = {}
        self._first: float | None = None  # when the first relay held our nameplate

    def answered(self, relay: int, nameplate: str, now: float) -> bool:
        """`relay` holds `nameplate` for us since `now`: whether it is ours (False: it is
        another, given before ours was chosen elsewhere; close it and ask again)."""
        self._check(relay)
        if self.nameplate is None:
            self.nameplate = nameplate
        if nameplate != self.nameplate:
            self.moved.append(relay)
            return False
        self.held = sorted([*self.held, relay])
        if self._first is None:
            self._first = now
        return True

    def fail(self, relay: int, error: TransferError) -> None:
        self._check(relay)
        self.failed[relay] = error

    def wake(self) -> float | None:
        """When the wait is over unless every relay settles first (None: not before an
        answer or a failure)."""
        return None if self._first is None else self._first + self.settle

    def over(self, now: float) -> bool:
        if not self.waiting():
            return True
        wake = self.wake()
        return wake is not None and now >= wake

    def waiting(self) -> list[int]:
        """The relays that have neither answered nor failed: given up once it is over."""
        settled = {*self.held, *self.moved, *self.failed}
        return [relay for relay in range(self.count) if relay not in settled]

    def errors(self) -> list[TransferError]:
        """Each failed relay's error, in the order of the relays."""
        return [self.failed[relay] for relay in sorted(self.failed)]

    def _check(self, relay: int) -> None:
        if relay not in self.waiting():
            raise LocalProtocolError(f"relay {relay} is not one still waited for")
