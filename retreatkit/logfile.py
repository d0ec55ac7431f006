"""The log file `retreatkit up` writes while its dashboard holds the terminal, and what
stops it being written, for /status and the dashboard's alarms."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("retreatkit")
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
# the bound on what the log holds, DEBUG lines for every query among it: the file is
# rotated at MAX_BYTES, and BACKUPS rotated files are kept (40 MB in all)
MAX_BYTES = 10_000_000
BACKUPS = 3


def log_file(path: Path) -> logging.Handler:
    """The log file while the dashboard holds the terminal (rotated at 10 MB, 3 kept)."""
    from logging.handlers import RotatingFileHandler  # only with the dashboard

    class LogFile(RotatingFileHandler):
        """A record it cannot write (its disk full) is never reported on stderr, which is the
        dashboard's screen (Python prints `--- Logging error ---` and a traceback per record):
        the failure is logged once, for the Logs screen, until a write works, and `problem`
        says it (in /status, so on the dashboard's alarms) until then."""

        failing = False
        wrote = False
        problem: str | None = None

        def _open(self) -> Any:
            """For the organiser alone, rotated files too: it names attendees' addresses and
            what they fetched. One left readable by an earlier version is tightened."""
            fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                         0o600)  # fmt: skip
            try:
                os.fchmod(fd, 0o600)
            except OSError:
                os.close(fd)
                raise
            return open(fd, "a", encoding=self.encoding, errors=self.errors)

        def emit(self, record: logging.LogRecord) -> None:
            self.wrote = True
            super().emit(record)  # a failure goes to handleError
            if self.wrote:
                self.failing = False
                self.problem = None

        def handleError(self, record: logging.LogRecord) -> None:
            self.wrote = False
            exc = sys.exc_info()[1]
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.problem = f"the log {self.baseFilename} cannot be written: {why}"
            if not self.failing:
                self.failing = True
                log.warning("cannot write the log file %s (%s); the Logs screen still has"
                            " every line", self.baseFilename, why)  # fmt: skip

    handler = LogFile(path, maxBytes=MAX_BYTES, backupCount=BACKUPS)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler


def problems() -> list[str]:
    """Why a log file of this process is not being written, one line each (none: it is)."""
    found = []
    for logger in (logging.getLogger(), logging.getLogger("retreatkit")):
        for handler in logger.handlers:
            problem = getattr(handler, "problem", None)  # a log_file's
            if isinstance(problem, str):
                found.append(problem)
    return found
