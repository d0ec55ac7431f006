"""The mirror's listening socket: connections capped, idle ones closed, files limit raised.

Connections are capped per address and in total, and the process's open-file limit is
raised to what the system allows.

A client that opens connections and never finishes a request (slowloris) holds a file
descriptor each; without a bound, 3000 of them starve everyone. aiohttp closes a
connection that has no complete request after its keep-alive timeout, from the first
byte as well as between requests, so that timeout is the header timeout too.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

from retreatkit.httpserver import Runner
from retreatkit.mirror.app import make_app
from retreatkit.mirror.service import Mirror
from retreatkit.mirror.stats import Stats

log = logging.getLogger("retreatkit.mirror")

RESERVED_FILES = 256  # descriptors kept for the store, the upstreams and the admin endpoint
# at stop, what requests in flight get to finish before they are cut (aiohttp's default,
# 60 s, behind one slow client, outlasts systemd's 90 s stop timeout with the rest)
SHUTDOWN_GRACE = 3.0
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 39\r\n"
    b"Retry-After: 2\r\nConnection: close\r\n\r\ntoo many connections from your address\n"
)


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

    def admit(self, address: str) -> bool:
        if self.open >= self.total or self.by_address[address] >= self.per_address:
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


class Guarded(asyncio.Protocol):
    """A connection's protocol behind the gate: refused ones never reach aiohttp."""

    def __init__(self, inner: asyncio.Protocol, gate: Gate) -> None:
        self.inner = inner
        self.gate = gate
        self.address: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else "?"
        if not self.gate.admit(address):
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(REFUSAL)
            transport.close()
            return
        self.address = address
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.address is not None:
            self.gate.release(self.address)
            self.address = None
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.address is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.address is not None else None

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class GuardedSite(web.TCPSite):
    """A TCPSite whose every connection passes the gate first."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, gate: Gate) -> None:
        super().__init__(runner, host, port, backlog=1024)
        self.gate = gate

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        factory: Callable[[], Any] = lambda: Guarded(server(), self.gate)  # noqa: E731
        self._server = await asyncio.get_running_loop().create_server(
            factory, self._host, self._port, backlog=self._backlog, reuse_address=True
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]


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
