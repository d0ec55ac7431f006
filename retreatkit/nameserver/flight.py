"""Questions in flight: one upstream query per question, however many clients ask at once.

RFC 5452 9.1 and the DNSpooq birthday attack (CVE-2020-25686): a forwarder that sends
one upstream query per client query lets an attacker race many replies against many
open queries for the same name. Identical questions therefore share one query, and
the number of distinct questions in flight is bounded, so a silent upstream cannot
pile up work without end (dnsmasq's 150 forwards, found exhausted in the field).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from retreatkit.nameserver.errors import TooManyWaiting, UpstreamFailed

T = TypeVar("T")
MAX_IN_FLIGHT = 1024


class Flights(Generic[T]):
    def __init__(self, limit: int = MAX_IN_FLIGHT) -> None:
        self.limit = limit
        self.running: dict[bytes, asyncio.Future[T]] = {}
        self.started = 0
        self.merged = 0  # queries that joined one already in flight
        self.refused = 0  # questions not asked: too many in flight
        # the loop, looked up once: asyncio.get_running_loop() costs a getpid() system
        # call on each use (CPython 3.11), and a cache miss would make several
        self._loop: asyncio.AbstractEventLoop | None = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def __len__(self) -> int:
        return len(self.running)

    def join(self, key: bytes, start: Callable[[], Coroutine[Any, Any, T]]) -> asyncio.Future[T]:
        """The flight for `key`: the one in the air, or a new one running `start()`."""
        running = self.running.get(key)
        if running is not None:
            self.merged += 1
            return running
        if len(self.running) >= self.limit:
            self.refused += 1
            raise TooManyWaiting(f"{self.limit} questions already wait on the upstreams")
        task = self._running_loop().create_task(start())
        self.started += 1
        self.running[key] = task
        task.add_done_callback(lambda done: self._landed(key, done))
        return task

    async def run(self, key: bytes, start: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Like `await join(key, start)`, but a new flight runs in the caller's own task:
        one task less per cache miss. Only for a caller that waits for the end."""
        running = self.running.get(key)
        if running is not None:
            self.merged += 1
            return await running
        if len(self.running) >= self.limit:
            self.refused += 1
            raise TooManyWaiting(f"{self.limit} questions already wait on the upstreams")
        future: asyncio.Future[T] = self._running_loop().create_future()
        future.add_done_callback(_retrieve)
        self.started += 1
        self.running[key] = future
        try:
            result = await start()
        except BaseException as exc:
            if not future.done():
                failure = exc if isinstance(exc, Exception) else UpstreamFailed("stopped")
                future.set_exception(failure)
            raise
        else:
            future.set_result(result)
            return result
        finally:
            if self.running.get(key) is future:
                del self.running[key]

    def _landed(self, key: bytes, task: asyncio.Future[T]) -> None:
        if self.running.get(key) is task:
            del self.running[key]
        if not task.cancelled():
            task.exception()  # retrieved: a failure nobody waited for is not an error


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a failure nobody else waited for is not an error
