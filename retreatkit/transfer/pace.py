"""How long a whole offer may take to cross, on a clock passed in (no I/O).

The wait for each record is bounded by --timeout (Link.frames), and that bounds silence,
not the offer: a sender (or a relay) that sent one small record just before each
--timeout ran out held its receiver for ever, the offer growing a few bytes at a time
(an offer is up to 32 MiB, in records of any size). The sender's wait is the same the
other way: its offer leaves only as fast as the receiver reads it (Link.drain), and a
receiver that takes a few bytes before each --timeout held it for ever. So the whole
offer has a deadline too, on both sides, set once its length is known: on the receiver
when the first record announces it, on the sender when it is sealed.

What an honest sender needs: it seals its whole offer at once and writes it in one go
(Session.send_offer), and its receiver reads on as it comes (receiving.offered), with
no round trip in between; so the offer crosses at the speed of the path between them.
FLOOR is far below any path bob is meant for: 8 KiB/s (64 kbit/s, an ISDN line), where
a congested event Wi-Fi or a relay behind a metered uplink still gives one transfer
several times that. The largest honest offer (32 MiB, 100 000 entries) thus has
--timeout plus 4096 s, and gets through a link of 8 KiB/s; a small one gets --timeout
plus a moment, as it did before.

Why the bound is safe: it starts from a length the receiver refuses above 32 MiB at the
first record (offer.offer_length), so a stalling peer holds the other side at most
--timeout + 4096 s (70 minutes with the default --timeout), and one that announces a
small offer hardly longer than --timeout; the bound on each record's silence holds
meanwhile, and Ctrl-C at any time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from retreatkit.transfer.errors import TooSlow

FLOOR = 8 * 1024  # bytes a second an offer crosses at, at least, on the whole

Clock = Callable[[], float]
Late = Callable[[int, float], TooSlow]  # (length, seconds allowed) -> the error to raise


def allowed(length: int, timeout: float) -> float:
    """Seconds an offer of `length` bytes may take, from its first record to its last."""
    return timeout + length / FLOOR


def _seconds(seconds: float) -> str:
    return f"{round(seconds, 1):g}"


def late_offer(length: int, seconds: float) -> TooSlow:
    """The receiver's error: the offer did not all come in time."""
    return TooSlow(
        f"the sender's offer of {length} bytes did not all come in {_seconds(seconds)} s: a"
        f" sender or relay that stalls, or a link slower than {FLOOR // 1024} KiB/s"
    )


def late_reader(length: int, seconds: float) -> TooSlow:
    """The sender's error: the receiver did not take the offer in time."""
    return TooSlow(
        f"the receiver did not take the offer of {length} bytes in {_seconds(seconds)} s: a"
        f" receiver or relay that stalls, or a link slower than {FLOOR // 1024} KiB/s"
    )


class Pace:
    """A bound on a whole wait, made of many shorter ones (one per read or write). It
    starts once `length()` names how much is to cross (None until then: no bound but
    each wait's own). `wait` says how long the next read or write may wait."""

    def __init__(
        self,
        length: Callable[[], int | None],
        timeout: float,
        late: Late,
        clock: Clock = time.monotonic,
    ) -> None:
        self._length = length
        self._timeout = timeout
        self._late = late
        self._clock = clock
        self.deadline: float | None = None  # on `clock`, once the length is known
        self._error: TooSlow | None = None

    def wait(self, timeout: float | None) -> tuple[float | None, TooSlow | None]:
        """How long the next wait may be (`timeout`, or less when the bound on the whole
        comes first), and the error to raise if it then runs out (None: `timeout` ran
        out, the caller's own error). Raises that error once the bound has passed."""
        if self.deadline is None:
            length = self._length()
            if length is None:
                return timeout, None
            seconds = allowed(length, self._timeout)
            self.deadline = self._clock() + seconds
            self._error = self._late(length, seconds)
        assert self._error is not None
        left = self.deadline - self._clock()
        if left <= 0:
            raise self._error
        if timeout is not None and timeout <= left:
            return timeout, None
        return left, self._error


def sending(length: int, timeout: float, clock: Clock = time.monotonic) -> Pace:
    """The sender's bound on its offer of `length` bytes leaving, from now."""
    return Pace(lambda: length, timeout, late_reader, clock)
