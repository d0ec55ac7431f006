"""Run the asyncio program on uvloop where it is installed: it is faster."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


def run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    result: int = uvloop.run(main())
    return result
