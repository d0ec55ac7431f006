"""The `process` section of /status: what one process is and what it holds."""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from retreatkit import logfile
from retreatkit.version import number as version_number


def rss_bytes() -> int | None:
    """Resident memory now (not the peak that getrusage gives)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def open_files() -> int | None:
    try:
        return sum(1 for _ in Path("/proc/self/fd").iterdir())
    except OSError:
        return None


class ProcessInfo:
    """Fixed facts taken at start, and the figures read at each /status."""

    def __init__(self, services: list[str], attendees: list[str] | None = None) -> None:
        self.services = services
        self.attendees = attendees or []  # filled in once the services are listening
        self.addresses: dict[str, str] = {}  # service -> where attendees reach it, as well
        self.started_wall = datetime.now(UTC)
        self.started = time.monotonic()

    @cached_property
    def version(self) -> str:
        return version_number()

    def status(self) -> dict[str, Any]:
        level = logging.getLogger("retreatkit").getEffectiveLevel()
        return {
            "pid": os.getpid(),
            "started_at": self.started_wall.isoformat(timespec="seconds"),
            "uptime_seconds": round(time.monotonic() - self.started, 1),
            "memory_bytes": rss_bytes(),
            "open_files": open_files(),
            "services": list(self.services),
            "version": self.version,
            "log_level": logging.getLevelName(level),
            "attendees": list(self.attendees),
            "addresses": dict(self.addresses),
            # the process's own troubles, for the dashboard's alarms: its log not written
            "warnings": logfile.problems(),
        }
