"""Figures as the dashboard shows them: plain units, and a dash for what is not reported."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from retreatkit import units

NOT_REPORTED = "—"
BARS = "▁▂▃▄▅▆▇█"
# what a table shows of one list a peer sent, and a block of lines of its lines: 8 MB of
# `{}` is 2.8 million rows, which took minutes and gigabytes to lay out; a last row or
# line says how many more there are (more())
MAX_ROWS = 1000
MAX_LINES = 200


def get(doc: Any, *path: str) -> Any:
    """doc[path[0]][path[1]]...; None where a level is missing or not a mapping."""
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


# a figure past a 64-bit counter's reach is an endpoint misbehaving: not reported. Within
# it, sums, spans and rates of figures stay floats, never inf or an OverflowError
LARGEST = float(1 << 63)


def number(value: Any) -> float | None:
    """A finite number within LARGEST either way, or None: JSON may say true, "12", NaN,
    1e999 or 10**400 (which float() and math.isfinite refuse with an OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return float(value) if -LARGEST <= value <= LARGEST else None  # exact for any int


def count(value: Any) -> str:
    n = number(value)
    return NOT_REPORTED if n is None else f"{int(n):,}"


def more(hidden: int) -> str:
    """The last row of a list cut at MAX_ROWS (or lines at MAX_LINES): `... 4,000 more`."""
    return f"... {hidden:,} more"


def plural(n: Any, one: str, many: str) -> str:
    """`1 entry`, `4 entries`, `— entries` (not reported)."""
    return f"{count(n)} {one if number(n) == 1 else many}"


def size(value: Any) -> str:
    """Bytes in the kit's one unit (units.size: 512 B, 1.5 kB, 20.0 MB), as /status's
    warnings, the mirror's errors and the command lines word them."""
    n = number(value)
    return NOT_REPORTED if n is None else units.size(n)


def rate(value: Any) -> str:
    s = size(value)
    return s if s == NOT_REPORTED else f"{s}/s"


def duration(value: Any) -> str:
    """Seconds as 45s, 3m 05s, 2h 04m, 3d 02h."""
    n = number(value)
    if n is None or n < 0:
        return NOT_REPORTED
    s = int(n)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def percent(value: Any) -> str:
    """A ratio 0..1 as a percentage."""
    n = number(value)
    return NOT_REPORTED if n is None else f"{n * 100:.1f}%"


def per_second(value: float | None) -> str:
    return NOT_REPORTED if value is None else f"{value:,.1f}/s"


def spark(values: Sequence[float], width: int = 20, from_zero: bool = True) -> str:
    """The last `width` values as bars, scaled from zero (or, for a level such as memory,
    from their minimum) to their maximum."""
    tail = [v if math.isfinite(v) else 0.0 for v in list(values)[-width:]]
    if not tail:
        return ""
    # halved: the span of two floats near their limit would be inf, and a bar of it NaN
    low = 0.0 if from_zero else min(tail) / 2
    span = max(tail) / 2 - low
    if span <= 0:
        return BARS[0] * len(tail)
    top = len(BARS) - 1
    return "".join(BARS[max(0, min(top, int((v / 2 - low) / span * top)))] for v in tail)
