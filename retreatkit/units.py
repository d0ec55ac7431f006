"""Sizes as every part of the kit words them: the dashboard, the command lines, /status."""

from __future__ import annotations


def size(n: float) -> str:
    """Bytes as people read them: 0 B, 950 B, 1.2 MB, 3.4 GB (powers of 1000, as df -H
    and bob's own lines say them: one unit everywhere, so figures can be compared)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 999.5 or unit == "TB":
            if unit == "B":
                return f"{value:.0f} B"
            return f"{value:.0f} {unit}" if abs(value) >= 99.5 else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
