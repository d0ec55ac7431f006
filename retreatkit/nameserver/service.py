"""The nameserver as a service: sockets, blocklist loading and reloading, status."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from retreatkit.mirror.lists import via_mirror
from retreatkit.nameserver.policy import Blocklist, Policy, Record
from retreatkit.nameserver.resolver import Resolver
from retreatkit.nameserver.server import LAN, Gate, TCPServer, UDPServer
from retreatkit.nameserver.upstream import Upstream, Upstreams

log = logging.getLogger("retreatkit.nameserver")
MAX_LIST = 256 * 1024 * 1024


@dataclass
class Settings:
    listen: tuple[str, int]
    upstreams: list[tuple[str, int]]
    blocklists: list[str] = field(default_factory=list)
    allow: list[str] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    block_mode: str = "null"
    networks: list[str] = field(default_factory=lambda: list(LAN))
    rate_limit: int = 1000
    stale_for: float = 86400.0
    reload_every: float = 86400.0
    # where URL lists come from when a mirror is configured: it fetches each once for
    # the LAN and keeps serving it when the uplink is gone
    mirror: Callable[[], str | None] = lambda: None


class Nameserver:
    name = "nameserver"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.resolver = Resolver(
            Policy(settings.records, settings.allow),
            Upstreams([Upstream(h, p) for h, p in settings.upstreams]),
            block_mode=settings.block_mode,
        )
        self.resolver.cache.stale_for = settings.stale_for
        self.gate = Gate(settings.networks, settings.rate_limit)
        self._transports: list[asyncio.BaseTransport] = []
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.list_errors: dict[str, str] = {}
        self.good: dict[str, Blocklist] = {}  # the last good copy of each source

    async def start(self, registry: CollectorRegistry, say: Any) -> None:
        host, port = self.settings.listen
        bound = await self._bind(host, port)
        registry.register(_Collector(self))
        say(f"Nameserver listening on {bound[0]}:{bound[1]} (UDP and TCP)")
        upstreams = ", ".join(u.address for u in self.resolver.upstreams.servers) or "none"
        say(f"Nameserver upstreams: {upstreams}")
        # serve at once; lists arrive when they are read (no DNS outage while loading)
        self._spawn(self._reload_forever())

    async def _bind(self, host: str, port: int) -> tuple[str, int]:
        """UDP and TCP on one port. With port 0 the kernel picks a UDP port that TCP may
        already use elsewhere: then pick again, a few times."""
        loop = asyncio.get_running_loop()
        for attempt in range(20):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: UDPServer(self.resolver, self.gate), local_addr=(host, port)
            )
            bound: tuple[str, int] = transport.get_extra_info("sockname")[:2]
            try:
                self._tcp = await loop.create_server(
                    lambda: TCPServer(self.resolver, self.gate), host, bound[1], reuse_address=True
                )
            except OSError:
                transport.close()
                if port != 0 or attempt == 19:
                    raise
                continue
            self._transports.append(transport)
            return bound
        raise OSError("no port free for both UDP and TCP")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for transport in self._transports:
            transport.close()
        if self._tcp is not None:
            self._tcp.close()

    async def _reload_forever(self) -> None:
        while True:
            await self.reload()
            await asyncio.sleep(self.settings.reload_every)

    async def reload(self) -> None:
        """Read every list; a source that fails keeps its last good copy; swap atomically."""
        if not self.settings.blocklists:
            return
        parts = []
        for source in self.settings.blocklists:
            try:
                part = await self._load(source)
                self.good[source] = part
                self.list_errors.pop(source, None)
            except (OSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                self.list_errors[source] = str(exc) or type(exc).__name__
                log.warning("blocklist %s failed (%s); keeping the last good copy", source, exc)
                if source not in self.good:
                    continue
                part = self.good[source]
            parts.append(part)
        if len(parts) == 1:
            blocklist = parts[0]  # sealed already, and never changed after
        else:
            blocklist = await asyncio.to_thread(Blocklist.merge, parts)
        self.resolver.set_policy(self.resolver.policy.with_blocklist(blocklist))
        log.info("blocklists loaded: %d domains", len(blocklist))

    async def _load(self, source: str) -> Blocklist:
        part = Blocklist()
        if source.startswith(("http://", "https://")):
            mirror = self.settings.mirror()
            url = via_mirror(mirror, source) if mirror else source
            timeout = aiohttp.ClientTimeout(total=120)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url) as response,
            ):
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                body = await response.content.read(MAX_LIST + 1)
            if len(body) > MAX_LIST:
                raise ValueError("list larger than 256 MiB")

            def parse_body() -> Blocklist:
                part.add_lines(source, body.decode("utf-8", "replace").splitlines())
                return part.seal()

            return await asyncio.to_thread(parse_body)
        path = Path(source)

        def parse_file() -> Blocklist:
            if path.stat().st_size > MAX_LIST:
                raise ValueError("list larger than 256 MiB")
            with path.open(encoding="utf-8", errors="replace") as lines:  # streamed
                part.add_lines(source, lines)
            return part.seal()

        return await asyncio.to_thread(parse_file)

    def status(self) -> dict[str, Any]:
        status = self.resolver.status()
        status["blocklist_errors"] = dict(self.list_errors)
        status["blocklist_sources"] = dict(self.resolver.policy.blocklist.sources)
        return status


def host_address() -> str:
    """This machine's LAN address for our own names, without sending a packet anywhere."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        return "127.0.0.1"
    for info in infos:
        address = str(info[4][0])
        if not address.startswith("127."):
            return address
    return "127.0.0.1"


class _Collector(Collector):
    def __init__(self, nameserver: Nameserver) -> None:
        self.nameserver = nameserver

    def collect(self) -> Any:
        s = self.nameserver.resolver.status()
        for key in ("queries", "cache_hits", "blocked", "stale_served", "forwarded", "servfail",
                    "refused", "rate_limited", "spoofed_replies_ignored"):  # fmt: skip
            yield CounterMetricFamily(f"nameserver_{key}", key.replace("_", " "), value=s[key])
        yield GaugeMetricFamily(
            "nameserver_cache_entries", "cache entries", value=s["cache_entries"]
        )
        yield GaugeMetricFamily(
            "nameserver_blocklist_entries", "blocked domains", value=s["blocklist_entries"]
        )
