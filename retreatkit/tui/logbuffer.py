"""The dashboard's log lines: a bounded ring, filtered as lines arrive (no Textual here).

Each record is escaped and formatted once, when it arrives; the view then only slices.
Memory stays bounded however long it runs: `capacity` lines, each cut to a few hundred
characters.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from retreatkit.tui.escape import LIMIT, visible
from retreatkit.tui.times import clock

CAPACITY = 20_000
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
NUMBERS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50, "WARN": 30}
MOST_SKIPPED = 1 << 63
# Lines are kept in the order they arrive: a guest's stream, followed again after a break
# or a restart, brings lines older than some already shown. Sorting them in would move
# the lines under a reader's eyes and cost a walk of the ring per batch; each such line
# says so instead, one comparison each
LATE = "(arrived late) "
SECOND = len("2026-01-01T10:00:00")
# a line stamped further ahead of this machine's clock than this is not believed for what
# counts as late: one record dated 9999 would have marked every line after it, from every
# endpoint, as late for good
AHEAD = 60.0


# A line is a plain tuple of strings and numbers, not an object: the garbage collector
# stops tracking an exact tuple of untracked values after its first pass (a subclass, a
# NamedTuple too, stays tracked), so however many lines are kept, a full collection does
# not walk them. As objects, 20,000 kept lines made each full collection stop the
# dashboard for ~100 ms under a log flood. Its fields, by position:
SEQ: Final = 0
SERVICE: Final = 1
LEVEL: Final = 2
LEVELNO: Final = 3
TEXT: Final = 4  # what the screen shows: escaped, one line
FOLDED: Final = 5  # TEXT.casefold(), for the filter
ASCII: Final = 6  # one terminal cell a character: the view slices it without measuring
LogLine = tuple[int, str, str, int, str, str, bool]


@dataclass(frozen=True)
class LogFilter:
    service: str | None = None  # None: every service
    level: str = "DEBUG"  # the lowest level shown
    text: str = ""

    def matches(self, line: LogLine) -> bool:
        return bool(self.select((line,)))

    def select(self, lines: Iterable[LogLine]) -> list[LogLine]:
        """The lines this filter shows, in order: one pass with no call per line (a key
        press re-filters every kept line)."""
        floor = NUMBERS.get(self.level, 0)
        service, needle = self.service, self.text.casefold()
        if service is None and not needle:
            return [x for x in lines if x[LEVELNO] >= floor]
        if not needle:
            return [x for x in lines if x[SERVICE] == service and x[LEVELNO] >= floor]
        return [
            x
            for x in lines
            if x[LEVELNO] >= floor
            and (service is None or x[SERVICE] == service)
            and needle in x[FOLDED]
        ]


def to_line(record: dict[str, Any], where: str, now: float, late: bool = False) -> LogLine:
    """A record from `/logs` as a line; every field may be anything a peer sent (a list
    for a level, an object for a message): a field that is not a string is shown as the
    JSON it came as. Its time reads as the clock at `now` (times.clock). A `late` one
    says so (LATE)."""
    seq = record.get("seq")
    raw_level = record.get("level", "?")
    # the common case is a level name, with nothing to escape
    if isinstance(raw_level, str) and raw_level in NUMBERS:
        level = raw_level
    else:
        level = field(raw_level, 10).upper()
    service = field(record.get("service", "?"), 20)
    who = f"{service}@{where}" if where else service
    message = field(record.get("message", ""))
    said = f"{LATE}{message}" if late else message
    text = f"{clock(record.get('at'), now, seconds=True)} {who:<10} {level:<7} {said}"
    return (
        seq if type(seq) is int else 0,
        service,
        level,
        NUMBERS.get(level, 20),
        text,
        text.casefold(),
        text.isascii(),
    )


def field(value: Any, limit: int = LIMIT) -> str:
    """A record's field as text: a string as it is, anything else as its JSON; escaped and
    cut to `limit` (escape.visible)."""
    if isinstance(value, str):
        return visible(value, limit)
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (ValueError, RecursionError):  # nested deeper than this stack can write
        text = "?"
    return visible(text, limit)


def second_of(at: Any) -> str | None:
    """`at` (ISO 8601, UTC, as the admin API gives it) to the second, as text that sorts
    as time does; None for anything else."""
    if isinstance(at, str) and len(at) >= SECOND and at[4] == "-" and at[10] == "T":
        return at[:SECOND]
    return None


def skipped(record: dict[str, Any]) -> int | None:
    """How many records the endpoint says it skipped, for a `{"dropped": N}` notice."""
    n = record.get("dropped")
    # a count a peer made up (10**4000, added up) could pass what int-to-text allows
    return n if type(n) is int and 0 <= n <= MOST_SKIPPED else None


class LogBuffer:
    def __init__(self, capacity: int = CAPACITY, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall  # what today is, for the lines' times
        self.lines: deque[LogLine] = deque(maxlen=capacity)
        self.shown: deque[LogLine] = deque(maxlen=capacity)
        self.filter = LogFilter()
        self.received = 0
        self.dropped = 0  # records the endpoint said it skipped because we fell behind
        self.version = 0  # bumps on every change, so a view knows when to redraw
        self.widest = 0  # characters in the longest line seen (escaped lines are one cell each)
        self.trimmed = 0  # shown lines pushed out of the front since the filter was set
        self.newest = ""  # the latest second any line was stamped with (second_of)

    def extend(self, records: list[dict[str, Any]], where: str = "") -> None:
        new: list[LogLine] = []
        now = self.wall()
        believable = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now + AHEAD))
        for record in records:
            if (n := skipped(record)) is not None:
                self.dropped += n
                continue
            at = second_of(record.get("at"))
            late = at is not None and at < self.newest
            if at is not None and not late and at <= believable:
                self.newest = at
            new.append(to_line(record, where, now, late))
        if new:
            self.widest = max(self.widest, max(len(x[TEXT]) for x in new))
            self.lines.extend(new)
            selected = self.filter.select(new)
            self.trimmed += max(0, len(self.shown) + len(selected) - (self.shown.maxlen or 0))
            self.shown.extend(selected)
        self.received += len(records)
        self.version += 1

    def set_filter(self, new: LogFilter) -> None:
        self.filter = new
        self.shown = deque(new.select(self.lines), maxlen=self.lines.maxlen)
        self.trimmed = 0
        self.version += 1
