"""The nameserver as a service: sockets, list reloads (timer, SIGHUP via serve, admin), status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from retreatkit.config import host_port_text
from retreatkit.memory import physical_memory
from retreatkit.nameserver import reloaded, status, wildcard
from retreatkit.nameserver.cache import max_bytes_for
from retreatkit.nameserver.gate import LAN, Gate, too_open
from retreatkit.nameserver.lists import Sources
from retreatkit.nameserver.local import Record
from retreatkit.nameserver.policy import Policy
from retreatkit.nameserver.resolver import PER_CLIENT, Resolver
from retreatkit.nameserver.server import UDPServer
from retreatkit.nameserver.statelog import StateLog
from retreatkit.nameserver.tcp import IDLE, Connections, TCPServer
from retreatkit.nameserver.transport import Pool
from retreatkit.nameserver.upstream import RETRY_AFTER, Transport, Upstream, UpstreamSet

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("retreatkit.nameserver")
Address = tuple[str, int]
# what a counter's name alone would leave open (transport.py tells the two kinds apart)
HELP = {
    "spoofed_replies_ignored": "upstream replies ignored that match no query we sent that"
    " upstream lately (an ID we never sent, or another question): forged or garbled",
    "late_replies_ignored": "upstream replies ignored that repeat the ID and question of a"
    " recent query of ours no longer waiting for them (a late or second reply)",
}


@dataclass
class Settings:
    listen: Address
    upstreams: list[Address]
    blocklists: list[str] = field(default_factory=list)
    allow: list[str] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    forward: dict[str, list[Address]] = field(default_factory=dict)  # domain -> its servers
    block_mode: str = "null"
    networks: list[str] = field(default_factory=lambda: list(LAN))
    rate_limit: int = 1000
    stale_for: float = 86400.0
    reload_every: float = 86400.0
    upstream_recheck: float = RETRY_AFTER
    tcp_idle: float = IDLE
    # where URL lists come from when a mirror is configured: it fetches each once for
    # the LAN and keeps serving it when the uplink is gone
    mirror: Callable[[], str | None] = lambda: None
    # a VM guest's folder of the list files its host carried to it: the host hands it new
    # copies (PUT /nameserver/blocklists/carried/NAME), the guest never reads the host's
    carried: str = ""


class Nameserver:
    name = "nameserver"

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        transport: Transport | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.wall = wall
        self.pool = Pool(clock=clock)
        upstream_transport = transport if transport is not None else self.pool

        # each change of an upstream's state is a line in the log, flapping bounded
        self.upstream_states = StateLog(log.log)

        def servers(addresses: list[Address], zone: str = "") -> UpstreamSet:
            return UpstreamSet(
                [Upstream(h, p) for h, p in addresses], upstream_transport, clock,
                recheck=settings.upstream_recheck, zone=zone, note=self.upstream_states.note,
            )  # fmt: skip

        groups = {"": servers(settings.upstreams)}
        groups.update({zone: servers(addrs, zone) for zone, addrs in settings.forward.items()})
        forward = {zone: tuple(addrs) for zone, addrs in settings.forward.items()}
        self.resolver = Resolver(
            Policy.build(settings.records, settings.allow, forward=forward),
            groups,
            block_mode=settings.block_mode,
            clock=clock,
            per_client=PER_CLIENT if settings.rate_limit else 0,
        )
        self.resolver.cache.stale_for = settings.stale_for
        self.resolver.cache.max_bytes = max_bytes_for(physical_memory())
        self.gate = Gate(settings.networks, settings.rate_limit, clock)
        self.connections = Connections(clock, settings.tcp_idle)
        self.sources = Sources(settings.blocklists, settings.mirror)
        self.started: float | None = None
        self._transports: list[asyncio.BaseTransport] = []
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, registry: CollectorRegistry, say: Any) -> None:
        host, port = self.settings.listen
        bound = await self._bind(host, port)
        self.started = self.clock()
        registry.register(_Collector(self))
        say(f"Nameserver listening on {host_port_text(*bound)} (UDP and TCP)")
        upstreams = ", ".join(u.address for u in self.resolver.upstreams[""].servers) or "none"
        say(f"Nameserver upstreams: {upstreams}")
        for zone, group in self.resolver.upstreams.items():
            if zone:
                say(f"Nameserver forwards {zone} to {', '.join(u.address for u in group.servers)}")
        wide = too_open(self.settings.networks)
        if wide is not None:
            log.warning("%s", wide)
        self._check_loops()  # before a client's question goes round one
        # serve at once; lists arrive when they are read (no DNS outage while loading)
        self._spawn(self._reload_forever())
        self._spawn(self.connections.sweep_forever())
        self._spawn(self._tick_forever())

    async def _bind(self, host: str, port: int) -> tuple[str, int]:
        """UDP and TCP on one port. With port 0 the kernel picks a UDP port that TCP may
        already use elsewhere: then pick again, a few times."""
        for attempt in range(20):
            # on a wildcard address, replies leave from the address each query reached
            transport, _ = await wildcard.endpoint(
                lambda: UDPServer(self.resolver, self.gate), host, port
            )
            bound: tuple[str, int] = transport.get_extra_info("sockname")[:2]
            try:
                self._tcp = await wildcard.stream_server(
                    lambda: TCPServer(self.resolver, self.gate, self.connections), host, bound[1]
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

    async def hangup(self) -> list[str]:
        """SIGHUP (serve.py): read every list again; what was reloaded, in one line."""
        if not self.sources.sources:
            return ["nameserver: no blocklist configured"]
        await self.reload(quiet=True)
        return [f"nameserver: {reloaded.line(status.blocklists(self))}"]

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for transport in self._transports:
            transport.close()
        if self._tcp is not None:
            self._tcp.close()
        for conn in list(self.connections.open):
            conn.close()
        self.pool.close()
        self.started = None

    async def _reload_forever(self) -> None:
        while True:
            await self.reload()
            await asyncio.sleep(self.settings.reload_every)

    async def _tick_forever(self) -> None:
        # the servers tick on queries; this keeps counts folded and pauses ending when idle
        while True:
            await asyncio.sleep(1.0)
            now = self.clock()
            if now >= self.resolver.next_tick:
                self.resolver.tick(now)
            self.upstream_states.tick(now)
            self._check_loops()
            self._check_down(now)

    def _check_loops(self) -> None:
        """Send the loop probes that are due (loops.py): at start, and when an upstream
        starts failing or loops."""
        for probe in self.resolver.loops.due(self.clock()):
            self._spawn(self.resolver.check_loop(probe))

    def _check_down(self, now: float) -> None:
        """Ask each down upstream whose recheck is due the check question (upstream.py):
        it is up again only when it passes, never on an attendee's question."""
        for group in self.resolver.upstreams.values():
            for upstream in group.due(now):
                self._spawn(group.check_again(upstream))

    async def reload(self, quiet: bool = False) -> int:
        """Read every list and swap the result in: the next query is answered under it.
        The domains blocked now; `quiet`: the caller logs what happened."""
        if not self.sources.sources:
            return len(self.resolver.policy.blocklist)
        blocklist = await self.sources.load(self.wall)
        self.resolver.set_policy(self.resolver.policy.with_blocklist(blocklist))
        give_back_memory()  # the old list is gone now
        if not quiet:
            count = len(blocklist)
            log.info("blocklists loaded: %d %s", count, "domain" if count == 1 else "domains")
        return len(blocklist)

    def set_records(self, records: list[Record]) -> None:
        self.resolver.set_policy(self.resolver.policy.with_records(records))

    def status(self) -> dict[str, Any]:
        return status.render(self)

    def admin_routes(self) -> list[web.RouteDef]:
        # aiohttp's server loads after the sockets answer (serve.ADMIN_CODE)
        from retreatkit.nameserver import admin

        return admin.routes(self)


def give_back_memory() -> None:
    """Hand the pages a list load freed back to the system (glibc's malloc_trim).

    A load frees tens of MB in blocks of every size; glibc keeps the freed middle of its
    heaps, and raises its threshold for mapping big blocks apart each time one is freed,
    so without this each reload left RSS higher (6 MB over the list after the first
    load, 23 MB after three reloads of a million-entry list). Elsewhere (musl) a no-op.
    """
    with contextlib.suppress(ImportError, OSError, AttributeError):  # an image may lack ctypes
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)


class _Collector(Collector):
    def __init__(self, nameserver: Nameserver) -> None:
        self.nameserver = nameserver

    def collect(self) -> Any:
        s = self.nameserver.status()
        for key in ("queries", "cache_hits", "blocked", "local", "stale_served", "forwarded",
                    "servfail", "refused", "rate_limited", "formerr", "cname_blocked",
                    "rebinding_dropped", "spoofed_replies_ignored",
                    "late_replies_ignored"):  # fmt: skip
            text = HELP.get(key, key.replace("_", " "))
            yield CounterMetricFamily(f"nameserver_{key}", text, value=s[key])
        yield GaugeMetricFamily(
            "nameserver_cache_entries", "cache entries", value=s["cache_entries"]
        )
        yield GaugeMetricFamily(
            "nameserver_blocklist_entries", "blocked domains", value=s["blocklist_entries"]
        )
        yield GaugeMetricFamily(
            "nameserver_tcp_connections", "TCP connections open", value=s["connections_open"]
        )
