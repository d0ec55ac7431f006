"""Figures over time: rates from counters, sparkline values, and the leak alarm.

A leak shows as a figure that only grows: the MirageOS retreat found a slow connection
leak because open TCP connections kept climbing on a dashboard. A figure is flagged when
every sample over the whole window is at least the one before it and the last is higher
than the first; its slope is reported per minute. Pure: times are passed in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

MIN_SAMPLES = 5


@dataclass(frozen=True)
class Leak:
    figure: str
    slope_per_minute: float
    first: float
    last: float
    seconds: float

    def line(self, unit: Callable[[float], str] | None = None) -> str:
        """With `unit` (bytes in units.size, say), the values and the slope are worded by it."""
        if unit is None:
            values = f"{self.first:,.0f} -> {self.last:,.0f} ({self.slope_per_minute:+,.2f}/min)"
        else:
            values = f"{unit(self.first)} -> {unit(self.last)} (+{unit(self.slope_per_minute)}/min)"
        return f"{self.figure} only grew for {self.seconds / 60:.0f} min: {values}"


class Series:
    """(time, value) samples, at most `capacity` of them."""

    def __init__(self, capacity: int = 900) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=capacity)

    def add(self, at: float, value: float) -> None:
        self.samples.append((at, value))

    def values(self) -> list[float]:
        return [v for _, v in self.samples]

    def rate(self) -> float | None:
        """Per second between the last two samples of a counter; None after a restart."""
        if len(self.samples) < 2:
            return None
        (t0, v0), (t1, v1) = self.samples[-2], self.samples[-1]
        if t1 <= t0 or v1 < v0:
            return None
        return (v1 - v0) / (t1 - t0)

    def rates(self) -> list[float]:
        """Per-second rates between neighbouring samples, for a sparkline."""
        pairs = list(self.samples)
        out = []
        for (t0, v0), (t1, v1) in pairwise(pairs):
            out.append((v1 - v0) / (t1 - t0) if t1 > t0 and v1 >= v0 else 0.0)
        return out

    def leak(self, figure: str, window: float, now: float, least: float = 0.0) -> Leak | None:
        """A Leak when the figure only grew over the last `window` seconds, by more than
        `least`: a process's memory creeps by a few pages without leaking anything."""
        if not self.samples or now - self.samples[0][0] < window:
            return None  # not watched long enough to say
        recent = [(t, v) for t, v in self.samples if t >= now - window]
        if len(recent) < MIN_SAMPLES:
            return None
        if any(b < a for (_, a), (_, b) in pairwise(recent)):
            return None
        (t0, first), (t1, last) = recent[0], recent[-1]
        if last - first <= least or t1 <= t0:
            return None
        return Leak(figure, (last - first) / (t1 - t0) * 60, first, last, t1 - t0)
