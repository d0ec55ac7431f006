"""What a blocklist reload did, in one line for the organiser's log (pure).

Each source is named whole, as retreat.toml names it (a guest's carried copies by the
host's file they were read from): the line says which file, how many entries and what
failed, never only that a reload happened.
"""

from __future__ import annotations

from typing import Any


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def source_line(s: dict[str, Any]) -> str:
    """One source of `status.blocklists`: `3 entries from /srv/blocks.txt`."""
    name = s.get("source", "?")
    entries = s.get("entries") or 0
    error = s.get("last_error")
    if error:
        kept = f", its last {_count(entries, 'entry', 'entries')} kept" if entries else ""
        return f"{name} failed ({error}){kept}"
    line = f"{_count(entries, 'entry', 'entries')} from {name}"
    bad = s.get("bad_lines") or 0
    if bad:
        line += f" ({_count(bad, 'bad line', 'bad lines')} skipped)"
    return line


def line(sources: list[dict[str, Any]]) -> str:
    """`blocklists reloaded: 3 entries from /srv/blocks.txt; ...`."""
    return "blocklists reloaded: " + ("; ".join(map(source_line, sources)) or "none configured")
