"""Staggered attempts on the event loop: the next starts when the one before fails or has
run `delay` seconds, the earlier ones still running; the first to succeed wins.

The upstream choice (upstream.py) decides what an attempt is and what success means;
this is only the waiting, kept apart so that choice stays free of the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

R = TypeVar("R")


async def staggered(
    attempts: Sequence[Callable[[], Awaitable[R | None]]], delay: float
) -> tuple[R | None, list[int]]:
    """The first attempt's result that is not None (None: it failed, and said why itself),
    or None when all fail; and the attempts cancelled because another won after they had
    run a whole `delay` (the caller counts those as silent)."""
    loop = asyncio.get_running_loop()
    running: dict[asyncio.Future[R | None], tuple[int, float]] = {}
    index = 0
    try:
        while index < len(attempts) or running:
            if index < len(attempts):
                running[asyncio.ensure_future(attempts[index]())] = (index, loop.time())
                index += 1
            done, _ = await asyncio.wait(
                running,
                timeout=delay if index < len(attempts) else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for finished in done:
                del running[finished]
                result = finished.result()
                if result is not None:
                    now = loop.time()
                    late = [i for i, started in running.values() if now - started >= delay]
                    return result, sorted(late)
        return None, []
    finally:
        for left in running:
            left.cancel()
