"""Each dashboard action's answer (docs/admin-api.md, Actions) as one line of plain words.

Never a repr: an answer of another shape (an older service, something in between) reads
as what was asked and that it was done. Escaped for the screen by the widget that shows it.
"""

from __future__ import annotations

from typing import Any

from retreatkit.tui.fmt import number, plural
from retreatkit.tui.times import clock


def file_name(source: Any) -> str:
    """A blocklist's path or URL by its last part: what the organiser named the file."""
    text = source if isinstance(source, str) else "?"
    return text.rstrip("/").rsplit("/", 1)[-1] or text


def _first_line(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text.strip().splitlines()[0] if text.strip() else "?"


def reloaded(answer: Any) -> str:
    """`{"blocklists": [per source]}`: `blocklists reloaded: 4 entries from blocks.txt`."""
    sources = answer.get("blocklists") if isinstance(answer, dict) else None
    if not isinstance(sources, list):
        return "blocklists reloaded"
    parts = [_source(s) for s in sources if isinstance(s, dict)]
    return "blocklists reloaded: " + ("; ".join(parts) or "none configured")


def _source(s: dict[str, Any]) -> str:
    name, entries = file_name(s.get("source")), s.get("entries")
    error = s.get("last_error")
    if error:
        kept = f", its last {plural(entries, 'entry', 'entries')} kept" if number(entries) else ""
        return f"{name} failed ({_first_line(error)}){kept}"
    line = f"{plural(entries, 'entry', 'entries')} from {name}"
    if number(s.get("bad_lines")):
        line += f" ({plural(s.get('bad_lines'), 'bad line', 'bad lines')} skipped)"
    return line


def blocking(answer: Any, now: float) -> str:
    """`{"blocking": "on"}` or `{"blocking": "paused until <*_at>"}` (`now`: the wall
    clock's time, which the moment is told against)."""
    state = answer.get("blocking") if isinstance(answer, dict) else None
    if not isinstance(state, str):
        return "blocking changed"
    if state.startswith("paused until "):
        return f"blocking paused until {clock(state.removeprefix('paused until '), now)}"
    return f"blocking {_first_line(state)}"


def added(name: str, answer: Any) -> str:
    """The record: `{"name": ..., "type": "A", "value": "10.0.0.9"}`."""
    if isinstance(answer, dict) and isinstance(answer.get("type"), str):
        return f"added {answer.get('name') or name}: {answer['type']} {answer.get('value')}"
    return f"added {name}"


def removed(name: str, answer: Any) -> str:
    """`204`, no answer."""
    return f"removed {name}"


def flushed(name: str, answer: Any) -> str:
    """`{"name": ..., "dropped": N}`: the cache entries dropped."""
    dropped = answer.get("dropped") if isinstance(answer, dict) else None
    if number(dropped) is None:
        return f"flushed {name}"
    if number(dropped) == 0:
        return f"{name} was not in the cache"
    return f"flushed {name}: {plural(dropped, 'cache entry', 'cache entries')} dropped"


def log_level(logger: str, level: str, answer: Any) -> str:
    """`{"logger": ..., "level": "DEBUG"}`: the level now set."""
    if isinstance(answer, dict) and isinstance(answer.get("level"), str):
        logger = str(answer.get("logger") or logger)
        level = answer["level"]
    return f"{logger} now logs at {level.upper()} and above"
