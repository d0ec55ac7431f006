"""The mirror's listening socket: connections capped, idle ones closed, files limit raised.

Connections are capped per address and in total, and the process's open-file limit is
raised to what the system allows.

A client that opens connections and never finishes a request (slowloris) holds a file
descriptor each; without a bound, 3000 of them starve everyone. aiohttp closes a
connection that has no complete request after its keep-alive timeout, from the first
byte as well as between requests, so that timeout is the header timeout too.
"""

from __future__ import annotations

import logging
import resource
from collections import Counter

from aiohttp import web

from retreatkit.httpserver import GuardedSite, Runner
from retreatkit.mirror.app import make_app
from retreatkit.mirror.service import Mirror
from retreatkit.mirror.stats import Stats

log = logging.getLogger("retreatkit.mirror")

RESERVED_FILES = 256  # descriptors kept for the store, the upstreams and the admin endpoint
# at stop, what requests in flight get to finish before they are cut (aiohttp's default,
# 60 s, behind one slow client, outlasts systemd's 90 s stop timeout with the rest)
SHUTDOWN_GRACE = 3.0


def raise_open_files() -> int:
    """Lift the soft open-file limit to the hard one; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d: %s", soft, exc)
    return soft


class Gate:
    """Who may hold a connection: at most `per_address` from one address, `total` in all."""

    def __init__(self, per_address: int, total: int, stats: Stats) -> None:
        self.per_address = per_address
        self.total = total
        self.stats = stats
        self.by_address: Counter[str] = Counter()
        self.open = 0
        self.full = False  # the last refusal was for `total`

    def admit(self, address: str) -> bool:
        if self.open >= self.total or self.by_address[address] >= self.per_address:
            self.full = self.open >= self.total
            self.stats.connections_refused += 1
            return False
        self.by_address[address] += 1
        self.open += 1
        return True

    def release(self, address: str) -> None:
        self.open -= 1
        self.by_address[address] -= 1
        if self.by_address[address] <= 0:
            del self.by_address[address]


async def listen(
    mirror: Mirror, host: str, port: int, grace: float = SHUTDOWN_GRACE
) -> tuple[web.AppRunner, Gate]:
    """Serve the mirror on HOST:PORT behind its gate; the runner (to clean up) and the gate.
    `grace`: what requests in flight get at clean-up before they are cut."""
    limits = mirror.settings.server
    files = raise_open_files()
    gate = Gate(limits.per_address, max(64, files - RESERVED_FILES), mirror.stats)
    runner = Runner(
        make_app(mirror), log, keepalive_timeout=limits.idle_timeout, shutdown_timeout=grace
    )
    await runner.setup()
    try:
        await GuardedSite(runner, host, port, gate).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, gate
