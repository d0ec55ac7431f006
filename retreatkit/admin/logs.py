"""The process's recent log records in a bounded ring (`GET /logs` streams them: logstream).

The ring keeps the last `capacity` records, numbered from 1; a reader asks for those
after the last number it saw. A reader that falls more than the ring behind gets an
`{"dropped": N}` event and carries on from the oldest record kept, so a slow reader
never holds memory in the process.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, datetime
from typing import Any

CAPACITY = 10_000
MAX_MESSAGE = 4096  # characters; a peer-chosen name in a message cannot grow a record
BATCH = 500  # records per write: one write per wake-up, not one per record


class LogRing(logging.Handler):
    """A logging handler that keeps records as the dicts `/logs` sends."""

    def __init__(self, capacity: int = CAPACITY, services: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.capacity = capacity
        self.services = services
        self._slots: list[dict[str, Any] | None] = [None] * capacity
        self.next = 1  # the number the next record gets
        self._mutex = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._wake_pending = False
        self.closed = False

    def close_streams(self) -> None:
        """End every `/logs` stream now (the process is stopping)."""
        self.closed = True
        for _loop, event in list(self._waiters):
            event.set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                message += f" ({type(exc).__name__}: {exc})"
            entry = {
                "seq": 0,
                "at": datetime.fromtimestamp(record.created, UTC).isoformat(
                    timespec="milliseconds"
                ),
                "service": self._service(record.name),
                "level": record.levelname,
                "logger": record.name,
                "message": message[:MAX_MESSAGE],
            }
        except Exception:
            self.handleError(record)
            return
        with self._mutex:
            entry["seq"] = self.next
            self._slots[self.next % self.capacity] = entry
            self.next += 1
            wake = not self._wake_pending and bool(self._waiters)
            self._wake_pending = self._wake_pending or wake
        if wake:  # one wake-up per burst, not one per record
            for loop, event in list(self._waiters):
                try:
                    loop.call_soon_threadsafe(self._wake, event)
                except RuntimeError:  # that loop is closed
                    self._waiters.discard((loop, event))
                    self._wake_pending = False

    def _wake(self, event: asyncio.Event) -> None:
        self._wake_pending = False
        event.set()

    def _service(self, logger: str) -> str:
        parts = logger.split(".")
        if len(parts) > 1 and parts[0] == "retreatkit" and parts[1] in self.services:
            return parts[1]
        return "process"

    def after(self, seq: int, limit: int = BATCH) -> tuple[int, list[dict[str, Any]]]:
        """(records dropped because the reader fell behind, up to `limit` records after `seq`)."""
        with self._mutex:
            first = max(1, self.next - self.capacity)
            start = max(seq + 1, first)
            dropped = max(0, first - (seq + 1)) if seq > 0 else 0
            end = min(self.next, start + limit)
            out = [self._slots[s % self.capacity] for s in range(start, end)]
        return dropped, [r for r in out if r is not None]

    async def wait(self, seq: int, timeout: float) -> None:
        """Return when a record after `seq` exists, or after `timeout` seconds."""
        if self.next > seq + 1:
            return
        event = asyncio.Event()
        key = (asyncio.get_running_loop(), event)
        self._waiters.add(key)
        try:
            if self.next > seq + 1:
                return
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(key)
