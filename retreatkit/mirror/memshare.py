"""The mirror's in-memory bounds, fitted to the memory of the machine it runs on.

Its defaults suit a laptop or a server: 128 MB of small files, 64 MB of index pages kept,
256 MB of pages on their way to clients and 64 MB being read and parsed. A guest has 128 MB
in all by default (the mirror's, 64 at least), and its files take 17 MB of that: filled by
a room's npm installs (thousands of tarballs under 1 MB each, all kept), those caches could
take a guest past its memory, and a guest out of memory panics. So each bound is at most a
share of the machine's memory; where memory is plentiful, the shares are far above the
defaults and change nothing.
"""

from __future__ import annotations

# each bound at most the machine's memory divided by this; together under a quarter of it
SHARES = {
    "hot_bytes": 16,  # small files kept
    "page_bytes": 32,  # index pages kept
    "max_pages_sending": 16,  # pages on their way (more are refused: try again)
    "max_pages_reading": 16,  # pages read and parsed at once (more wait; a larger one goes alone)
}


def fitted(bounds: dict[str, int], memory: int) -> tuple[dict[str, int], list[str]]:
    """`bounds` (by SHARES' names, in bytes) each at most its share of `memory` bytes; and
    each one lowered, as "name before -> after" in MB, for the log."""
    out: dict[str, int] = {}
    said: list[str] = []
    for name, before in bounds.items():
        most = memory // SHARES[name]
        out[name] = min(before, most)
        if before > most:
            said.append(f"{name} {before / 1e6:.0f} -> {most / 1e6:.1f} MB")
    return out, said
