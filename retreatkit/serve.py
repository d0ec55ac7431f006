"""Host a set of services in one process, with one admin endpoint."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from prometheus_client import CollectorRegistry

from retreatkit.admin import app as admin
from retreatkit.relay.matching import Limits
from retreatkit.relay.server import Relay

log = logging.getLogger("retreatkit")


def run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run on uvloop where it is installed (it is faster), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    result: int = uvloop.run(main())
    return result


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s", level="WARNING"
    )
    logging.getLogger("retreatkit").setLevel(level)


def relay_limits(section: dict[str, Any]) -> Limits:
    return Limits(
        per_ip=int(section["per_ip"]),
        waiting=int(section["waiting"]),
        handshake_timeout=float(section["handshake_timeout"]),
        wait_timeout=float(section["wait_timeout"]),
        idle_timeout=float(section["idle_timeout"]),
    )


async def serve_relay(
    listen: tuple[str, int], admin_at: tuple[str, int], limits: Limits, say: Callable[[str], None]
) -> int:
    registry = CollectorRegistry()
    relay = Relay(limits, registry)
    host, port = await relay.start(*listen)
    runner, (ahost, aport) = await admin.start(registry, {"relay": relay.status}, *admin_at)
    say(f"Relay listening on {host}:{port}")
    say(f"Admin on http://{ahost}:{aport}/status")
    try:
        await _until_signalled()
    finally:
        await relay.stop()
        await runner.cleanup()
    return 0


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
