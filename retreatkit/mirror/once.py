"""One background task per key: the first to ask starts it, the others join it.

Index revalidations run as the mirror's own tasks, not inside the request that started
them. So while an upstream is down, a request that holds a stale copy is answered at once
and the probe goes on without it: nobody waits on a down upstream, not even the request
that happened to become the probe. A request with nothing to serve joins the task, and
waits no longer than the fetcher's bounds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

from retreatkit.mirror.errors import MirrorError

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Once(Generic[K, T]):
    def __init__(self, adopt: Callable[[Awaitable[Any]], object]) -> None:
        """`adopt` registers each task with its owner, who cancels it on close."""
        self._adopt = adopt
        self._running: dict[K, asyncio.Task[T]] = {}

    def start(self, key: K, work: Callable[[], Coroutine[Any, Any, T]]) -> asyncio.Task[T]:
        """The task under way for `key`, or a new one running `work()`."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(_bare(work()))
            self._running[key] = task
            task.add_done_callback(lambda done: self._ended(key, done))
            self._adopt(task)
        return task

    def _ended(self, key: K, task: asyncio.Task[T]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # its error reached whoever waited; nobody may have

    async def settled(self) -> None:
        """Wait until every task under way now has ended, however it ended."""
        running = list(self._running.values())
        if running:
            await asyncio.wait(running)


async def _bare(work: Awaitable[T]) -> T:
    """`work`, whose MirrorError ends it with no traceback nor chained error: only its line
    is ever used, and the frames it passed through held what they had read (a page refused
    as too large: all of it so far). The task keeps its error and every waiter's traceback
    keeps the task, a cycle only the cyclic collector frees: a page asked again and again
    swung the mirror by hundreds of MB."""
    try:
        return await work
    except MirrorError as exc:
        exc.__context__ = None
        raise exc.with_traceback(None) from None
