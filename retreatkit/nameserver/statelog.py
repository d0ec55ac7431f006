"""Upstream state changes as lines for the organiser's log, a flapping upstream bounded.

Each change of an upstream's state as /status shows it (unknown, up, failing, down,
looping) is one line. A lossy upstream can flip between up and failing on every other
query, so each upstream spends from a budget (a token bucket): BURST lines at once, then
one every REFILL seconds. A change past the budget is held, not written; the once-a-second
tick writes the state the upstream is in once the budget allows, saying how many of the
changes it held the line does not tell. So one upstream writes at most BURST + 60 /
REFILL lines a minute whatever it does, and the log's last word on it is its current
state within REFILL seconds. No I/O: lines go to the caller's `say(level, line)`, with
the caller's clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from retreatkit.nameserver.upstream import Upstream

BURST = 4  # lines at once: a whole outage and its end (up, failing, down, up) fit
REFILL = 15.0  # seconds per line past the burst: at most four a minute after it
Say = Callable[[int, str], None]


@dataclass(slots=True)
class _Told:
    """What the log knows of one upstream."""

    upstream: Upstream
    zone: str
    seen: str  # its state when last noted
    written: str  # its state as the log last said it
    tokens: float
    counted_at: float
    held: int = 0  # changes since the last line, not written


class StateLog:
    def __init__(self, say: Say, burst: int = BURST, refill: float = REFILL) -> None:
        self.say = say
        self.burst = burst
        self.refill = refill
        self._told: dict[int, _Told] = {}  # by id() of the upstream, which _Told keeps

    def note(self, upstream: Upstream, zone: str, now: float) -> None:
        """After each answer or failure of `upstream`: a line if its state changed and its
        budget allows, else the change is held for tick()."""
        told = self._told.get(id(upstream))
        if told is None:
            told = _Told(upstream, zone, "unknown", "unknown", float(self.burst), now)
            self._told[id(upstream)] = told
        state = upstream.state()
        if state == told.seen:
            return
        told.seen = state
        if self._spend(told, now):
            self._write(told, now)
        else:
            told.held += 1

    def tick(self, now: float) -> None:
        """Once a second: write what was held, for upstreams whose budget has room again."""
        for told in self._told.values():
            if told.held and self._spend(told, now):
                self._write(told, now)

    def _spend(self, told: _Told, now: float) -> bool:
        told.tokens = min(self.burst, told.tokens + (now - told.counted_at) / self.refill)
        told.counted_at = now
        if told.tokens < 1:
            return False
        told.tokens -= 1
        return True

    def _write(self, told: _Told, now: float) -> None:
        u = told.upstream
        state = u.state()
        line = f"upstream {u.address}" + (f" for {told.zone}" if told.zone else "")
        line += f" is {state}"
        if told.written not in ("unknown", state):
            line += f" (was {told.written})"
        if state == "down":
            wait = max(0.0, u.down_until - now)
            line += f": {u.last_error}, {u.failures} failures in a row; next check in {wait:.0f} s"
        elif state in ("failing", "looping"):
            line += f": {u.last_error}"
        # the line tells one of the held changes itself when the state it names is new
        hidden = max(0, told.held - (state != told.written))
        if hidden:
            line += f"; {hidden} change{'s' * (hidden > 1)} in between not logged"
        told.written, told.held = state, 0
        self.say(logging.WARNING if state in ("down", "looping") else logging.INFO, line)
