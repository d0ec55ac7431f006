"""Times as an organiser reads them at the event: the clock on the wall, and ages.

Services give moments in ISO 8601, in UTC (`2026-12-04T17:50:12Z`). Every screen shows
them one way, in the organiser's own time zone:
- a moment reads as the clock: `17:50` today, `3 Dec 17:50` on another day (a Release
  that expires tomorrow), `3 Dec 2025 17:50` in another year. The live lists where many
  lines share a minute (the query log, the log lines) add the seconds: `17:50:12`;
- how long a state has lasted (an upstream down since) reads as an age: `3 min ago`.
"""

from __future__ import annotations

import functools
import re
import time
from datetime import UTC, date, datetime
from typing import Any

from retreatkit.tui.fmt import NOT_REPORTED

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
MAX_STAMP = 40  # characters: an ISO 8601 time with microseconds and an offset is 32
# a moment in a service's words ("down since 2026-12-02T07:13:24Z")
_STAMP = re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)?")


def parse(at: Any) -> datetime | None:
    """An ISO 8601 time (with a time of day) as an aware datetime, or None. One without
    an offset is UTC, as the admin API gives them all."""
    if not isinstance(at, str) or "T" not in at or len(at) > MAX_STAMP:
        return None
    try:
        moment = datetime.fromisoformat(at.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _local(moment: datetime) -> datetime | None:
    try:
        return moment.astimezone()
    except (OverflowError, OSError, ValueError):  # year 1 or 9999 moved by an offset
        return None


def clock(at: Any, now: float, seconds: bool = False) -> str:
    """A moment as the organiser's clock reads it: `17:50` today (`17:50:12` with
    `seconds`), else with its day; `now` is the wall clock's time (seconds since 1970)."""
    if not isinstance(at, str) or len(at) > MAX_STAMP:
        return NOT_REPORTED
    # the log lines under a flood are thousands a second: each second is worked out once
    return _clock(_to_the_second(at), _today(now, time.tzname), seconds, time.tzname)


@functools.lru_cache(maxsize=64)
def _today(now: float, zone: tuple[str, str]) -> date:
    return datetime.fromtimestamp(now, UTC).astimezone().date()


@functools.lru_cache(maxsize=4096)
def _clock(at: str, today: date, seconds: bool, zone: tuple[str, str]) -> str:
    """(`zone`, the local time zone's names, keeps what was worked out in one apart
    from another's)"""
    moment = parse(at)
    here = _local(moment) if moment is not None else None
    if here is None:
        return NOT_REPORTED
    shown = f"{here:%H:%M:%S}" if seconds else f"{here:%H:%M}"
    if here.date() == today:
        return shown
    day = f"{here.day} {MONTHS[here.month - 1]}"
    return f"{day} {shown}" if here.year == today.year else f"{day} {here.year} {shown}"


def _to_the_second(at: str) -> str:
    """`at` without a fraction of a second (`...T17:50:12.345Z`: `...T17:50:12Z`)."""
    if at[19:20] != ".":
        return at
    return at[:19] + at[20:].lstrip("0123456789")


def ago(at: Any, now: float) -> str:
    """How long ago a moment was: `just now`, `3 min ago`, `2 h 5 min ago`, `3 days ago`."""
    moment = parse(at)
    if moment is None:
        return NOT_REPORTED
    try:
        seconds = now - moment.timestamp()
    except (OverflowError, OSError, ValueError):
        return NOT_REPORTED
    # later than now by more than two clocks disagree: no age, the moment as it is
    return age(seconds) if seconds > -60 else clock(at, now)


def age(seconds: float) -> str:
    """An age in the words `ago` uses. A service's clock a little ahead of this one's
    gives a moment just after now: that is just now too."""
    minutes = int(seconds // 60)
    if minutes < 1:
        return "just now"
    if minutes < 60:
        return f"{minutes} min ago"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min ago" if minutes else f"{hours} h ago"
    days = hours // 24
    return "1 day ago" if days == 1 else f"{days:,} days ago"


def clocks(line: str, now: float) -> str:
    """A line in a service's words whose moments read as `clock` says: "upstream down:
    https://pypi.org since 17:50 (timed out)"."""

    def shown(found: re.Match[str]) -> str:
        said = clock(found[0], now)
        return found[0] if said == NOT_REPORTED else said

    return _STAMP.sub(shown, line)
