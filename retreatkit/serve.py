"""Host a set of services in one process, with one admin endpoint."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from retreatkit import config
from retreatkit.admin import app as admin
from retreatkit.relay.matching import Limits
from retreatkit.relay.server import Relay

if TYPE_CHECKING:
    # imported where used: a process (or a VM image) hosting one service loads only its own
    from retreatkit.mirror.service import Mirror, Settings
    from retreatkit.nameserver.service import Settings as NameserverSettings

log = logging.getLogger("retreatkit")
Say = Callable[[str], None]


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s", level="WARNING"
    )
    logging.getLogger("retreatkit").setLevel(level)


class Service(Protocol):
    name: str

    async def start(self, registry: CollectorRegistry, say: Say) -> None: ...
    async def stop(self) -> None: ...
    def status(self) -> dict[str, Any]: ...


def admin_routes(service: Service) -> list[web.AbstractRouteDef]:
    """A service's own lists and actions on the admin endpoint, if it has any: an optional
    `admin_routes()` method returning routes whose paths start with `/<service.name>/`."""
    own = getattr(service, "admin_routes", None)
    routes: list[web.AbstractRouteDef] = list(own()) if own is not None else []
    return routes


def relay_limits(section: dict[str, Any]) -> Limits:
    return Limits(
        per_ip=int(section["per_ip"]),
        waiting=int(section["waiting"]),
        handshake_timeout=float(section["handshake_timeout"]),
        wait_timeout=float(section["wait_timeout"]),
        idle_timeout=float(section["idle_timeout"]),
    )


class RelayService:
    name = "relay"

    def __init__(self, listen: tuple[str, int], limits: Limits) -> None:
        self.listen = listen
        self.limits = limits
        self.relay: Relay | None = None

    async def start(self, registry: CollectorRegistry, say: Say) -> None:
        self.relay = Relay(self.limits, registry)
        host, port = await self.relay.start(*self.listen)
        say(f"Relay listening on {host}:{port}")

    async def stop(self) -> None:
        if self.relay is not None:
            await self.relay.stop()

    def status(self) -> dict[str, Any]:
        return self.relay.status() if self.relay else {}


def default_store() -> Path:
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "retreatkit" / "mirror"


class MirrorService:
    name = "mirror"

    def __init__(self, listen: tuple[str, int], settings: Settings) -> None:
        self.listen = listen
        self.settings = settings
        self.mirror: Mirror | None = None
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.url: str | None = None  # where this process reaches the mirror, once started

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> MirrorService:
        from retreatkit.mirror import upstreams
        from retreatkit.mirror.fetch import Limits as FetchLimits
        from retreatkit.mirror.service import Settings

        settings = Settings(
            store=Path(section["store"]) if section["store"] else default_store(),
            pypi=section["pypi"] or upstreams.default_pypi(),
            opam=section["opam"] or upstreams.default_opam(),
            index_ttl=float(section["index_ttl"]),
            lists=list(section["lists"]),
            limits=FetchLimits(
                connect_timeout=float(section["connect_timeout"]),
                read_timeout=float(section["read_timeout"]),
            ),
        )
        return cls(config.host_port(section["listen"]), settings)

    async def start(self, registry: CollectorRegistry, say: Say) -> None:
        from retreatkit.mirror import app as mirror_app
        from retreatkit.mirror.service import Mirror, register

        # no environment proxies: the mirror talks to the upstreams it was given, only
        self._session = aiohttp.ClientSession(auto_decompress=False, trust_env=False)
        self.mirror = Mirror(self.settings, self._session)
        _kept, dropped = await self.mirror.check_store()
        register(self.mirror, registry)
        self._runner = web.AppRunner(mirror_app.make_app(self.mirror), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, *self.listen).start()
        host, port = self._runner.addresses[0][:2]
        local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        self.url = f"http://{local}:{port}"
        say(f"Mirror listening on http://{host}:{port}/ (store {self.settings.store})")
        if dropped:
            say(f"Mirror store check dropped {dropped} corrupt files")
        for ecosystem in ("pypi", "opam"):
            upstream = getattr(self.settings, ecosystem)
            say(f"Mirror {ecosystem} upstream: {upstream or 'none (pass --' + ecosystem + ' URL)'}")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self.mirror is not None:
            await self.mirror.close()
        if self._session is not None:
            await self._session.close()

    def status(self) -> dict[str, Any]:
        return self.mirror.status() if self.mirror else {}


def resolv_conf_upstreams(path: Path = Path("/etc/resolv.conf")) -> list[tuple[str, int]]:
    """The system resolver's own upstreams, the default for ours."""
    try:
        lines = path.read_text("utf-8", "replace").splitlines()
    except OSError:
        return []
    return [(parts[1], 53) for parts in (line.split() for line in lines)
            if len(parts) >= 2 and parts[0] == "nameserver"]  # fmt: skip


def nameserver_settings(
    section: dict[str, Any],
    own: dict[str, str],
    mirror: Callable[[], str | None] | None = None,
) -> NameserverSettings:
    """Settings from [nameserver]; `own` names the services of this process (name -> address);
    `mirror` says where this process's own mirror is, if it hosts one."""
    from retreatkit.nameserver.policy import parse_record
    from retreatkit.nameserver.server import LAN
    from retreatkit.nameserver.service import Settings as NameserverSettings

    records = [parse_record(f"{name}={value}") for name, value in section["records"].items()]
    records += [parse_record(r) for r in section.get("record_flags", [])]
    named = {r.name for r in records}
    records += [parse_record(f"{n}={a}") for n, a in own.items() if n not in named]
    upstreams = [config.host_port(u, 53) for u in section["upstreams"]] or resolv_conf_upstreams()
    if section["block_mode"] not in ("null", "nxdomain"):
        raise ValueError("block mode is null or nxdomain")
    return NameserverSettings(
        listen=config.host_port(section["listen"], 53),
        upstreams=upstreams,
        blocklists=list(section["blocklists"]),
        allow=list(section["allow"]),
        records=records,
        block_mode=section["block_mode"],
        networks=list(section["networks"]) or list(LAN),
        rate_limit=int(section["rate_limit"]),
        stale_for=float(section["stale_for"]),
        reload_every=float(section["reload_every"]),
        mirror=mirror or (lambda: section["mirror"] or None),
    )


async def serve(services: list[Service], admin_at: tuple[str, int], say: Say) -> int:
    """Start every service and the admin endpoint; run until SIGINT or SIGTERM."""
    registry = CollectorRegistry()
    started: list[Service] = []
    runner: web.AppRunner | None = None
    try:
        for service in services:
            await service.start(registry, say)
            started.append(service)
        sources = {s.name: s.status for s in services}
        routes = [route for s in services for route in admin_routes(s)]
        runner, (ahost, aport) = await admin.start(registry, sources, *admin_at, routes)
        say(f"Admin on http://{ahost}:{aport}/status")
        await _until_signalled()
    finally:
        for service in reversed(started):
            try:
                await service.stop()
            except Exception:  # one service failing to stop must not keep the others up
                log.exception("stopping %s failed", service.name)
        if runner is not None:
            await runner.cleanup()
    return 0


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
