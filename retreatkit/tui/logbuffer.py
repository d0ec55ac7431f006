"""The dashboard's log lines: a bounded ring, filtered as lines arrive (no Textual here).

Each record is escaped and formatted once, when it arrives; the view then only slices.
Memory stays bounded however long it runs: `capacity` lines, each cut to a few hundred
characters.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from retreatkit.tui.escape import visible
from retreatkit.tui.fmt import clock

CAPACITY = 20_000
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True, slots=True)
class LogLine:
    seq: int
    service: str
    level: str
    levelno: int
    text: str  # what the screen shows: escaped, one line
    folded: str  # text.casefold(), for the filter


@dataclass(frozen=True)
class LogFilter:
    service: str | None = None  # None: every service
    level: str = "DEBUG"  # the lowest level shown
    text: str = ""

    def matches(self, line: LogLine) -> bool:
        if self.service is not None and line.service != self.service:
            return False
        if line.levelno < logging.getLevelName(self.level):
            return False
        return not self.text or self.text.casefold() in line.folded


def to_line(record: dict[str, Any], where: str = "") -> LogLine:
    """A record from `/logs` as a line; every field may be anything a peer sent."""
    seq = record.get("seq")
    level = visible(record.get("level", "?"), 10).upper()
    levelno = logging.getLevelName(level)
    service = visible(record.get("service", "?"), 20)
    who = f"{service}@{where}" if where else service
    message = visible(record.get("message", ""))
    text = f"{clock(record.get('at'))} {who:<10} {level:<7} {message}"
    return LogLine(
        seq if isinstance(seq, int) else 0,
        service,
        level,
        levelno if isinstance(levelno, int) else logging.INFO,
        text,
        text.casefold(),
    )


class LogBuffer:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self.lines: deque[LogLine] = deque(maxlen=capacity)
        self.shown: deque[LogLine] = deque(maxlen=capacity)
        self.filter = LogFilter()
        self.received = 0
        self.dropped = 0  # records the endpoint said it skipped because we fell behind
        self.version = 0  # bumps on every change, so a view knows when to redraw
        self.widest = 0  # characters in the longest line seen (escaped lines are one cell each)

    def extend(self, records: list[dict[str, Any]], where: str = "") -> None:
        for record in records:
            if "dropped" in record and isinstance(record["dropped"], int):
                self.dropped += record["dropped"]
                continue
            line = to_line(record, where)
            self.widest = max(self.widest, len(line.text))
            self.lines.append(line)
            if self.filter.matches(line):
                self.shown.append(line)
        self.received += len(records)
        self.version += 1

    def set_filter(self, new: LogFilter) -> None:
        self.filter = new
        self.shown = deque((x for x in self.lines if new.matches(x)), maxlen=self.lines.maxlen)
        self.version += 1
