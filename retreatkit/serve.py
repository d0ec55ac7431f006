"""Host a set of services in one process, with one admin endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from retreatkit import config, startup
from retreatkit.admin import app as admin
from retreatkit.admin import token as admin_token
from retreatkit.admin.advertise import Advertisement, advertise
from retreatkit.admin.logs import LogRing
from retreatkit.admin.process import ProcessInfo
from retreatkit.lanaddress import choose as lan_address
from retreatkit.mirror import resolver as mirror_resolver
from retreatkit.mirror import server as mirror_server
from retreatkit.mirror import status as mirror_status
from retreatkit.mirror import upstreams
from retreatkit.mirror.fetch import Limits as FetchLimits
from retreatkit.mirror.server import Gate
from retreatkit.mirror.service import Mirror, ServerLimits, Settings
from retreatkit.mirror.status import MirrorCollector
from retreatkit.nameserver.blocklist import normalize
from retreatkit.nameserver.gate import LAN
from retreatkit.nameserver.local import parse_record
from retreatkit.nameserver.service import Settings as NameserverSettings
from retreatkit.relay.matching import Limits
from retreatkit.relay.server import Relay

log = logging.getLogger("retreatkit")
Say = Callable[[str], None]
Dashboard = Callable[[str, str], Awaitable[None]]  # (admin URL, token): runs until quit
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def setup_logging(level: str = "INFO", to_file: Path | None = None) -> None:
    """Logs go to stderr, or to `to_file` while the dashboard holds the terminal (a line on
    stderr would tear its screen); the admin endpoint keeps the last ones for /logs too."""
    if to_file is None:
        logging.basicConfig(stream=sys.stderr, format=LOG_FORMAT, level="WARNING")
    else:
        from logging.handlers import RotatingFileHandler

        to_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handler = RotatingFileHandler(to_file, maxBytes=10 << 20, backupCount=3)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.basicConfig(handlers=[handler], level="WARNING")
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
        waiting_per_ip=int(section["waiting_per_ip"]),
        handshake_timeout=float(section["handshake_timeout"]),
        wait_timeout=float(section["wait_timeout"]),
        idle_timeout=float(section["idle_timeout"]),
        failed_joins=int(section["failed_joins"]),
        failed_join_wait=float(section["failed_join_wait"]),
    )


class LanAdvert:
    """A service announced on the LAN by zeroconf, in the background (probing takes a
    second; the service serves meanwhile). Never on loopback: nobody else could reach it."""

    def __init__(self, service: str, label: str, properties: dict[str, str]) -> None:
        self.service, self.label, self.properties = service, label, properties
        self._task: asyncio.Task[None] | None = None
        self._advert: Any = None

    def start(self, host: str, port: int) -> None:
        wildcard = host in ("0.0.0.0", "::", "")
        if not wildcard and ipaddress.ip_address(host).is_loopback:
            return
        self._task = asyncio.ensure_future(self._run(host, port, wildcard))

    async def _run(self, host: str, port: int, wildcard: bool) -> None:
        from retreatkit import mdns
        from retreatkit.transfer.direct import own_addresses

        addresses = [str(a) for a in own_addresses(None) if a.version == 4] if wildcard else [host]
        if not addresses:
            return
        name = f"{self.label} on {mdns.host_label()} port {port}"
        try:
            self._advert = await mdns.advertise(
                self.service, name, addresses, port, self.properties
            )
        except (OSError, mdns.NameTaken) as exc:
            log.warning("cannot announce %s on the LAN: %s", self.label, exc)
            return
        log.info("%s announced on the LAN as %s", self.label, name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._advert is not None:
            await self._advert.close()


class RelayService:
    name = "relay"

    def __init__(self, listen: tuple[str, int], limits: Limits) -> None:
        self.listen = listen
        self.limits = limits
        self.relay: Relay | None = None
        self.advert = LanAdvert("_retreat-relay._tcp.local.", "bob relay", {"kind": "relay"})

    async def start(self, registry: CollectorRegistry, say: Say) -> None:
        self.relay = Relay(self.limits, registry)
        host, port = await self.relay.start(*self.listen)
        say(f"Relay listening on {host}:{port}")
        self.advert.start(host, port)

    async def stop(self) -> None:
        await self.advert.stop()
        if self.relay is not None:
            await self.relay.stop()

    def status(self) -> dict[str, Any]:
        return self.relay.status() if self.relay else {"up": False}

    def admin_routes(self) -> list[web.AbstractRouteDef]:
        return [web.get("/relay/transfers", self._transfers)]

    async def _transfers(self, request: web.Request) -> web.Response:
        if self.relay is None:
            return web.json_response({"active": [], "recent": []})
        return web.json_response(self.relay.transfers())


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
        self._gate: Gate | None = None
        self.url: str | None = None  # where this process reaches the mirror, once started
        self.advert = LanAdvert("_retreat-mirror._tcp.local.", "retreatkit mirror", {"path": "/"})

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> MirrorService:
        settings = Settings(
            store=Path(section["store"]) if section["store"] else default_store(),
            pypi=section["pypi"] or upstreams.default_pypi(),
            opam=section["opam"] or upstreams.default_opam(),
            index_ttl=float(section["index_ttl"]),
            lists=list(section["lists"]),
            limits=FetchLimits(
                connect_timeout=float(section["connect_timeout"]),
                headers_timeout=float(section["headers_timeout"]),
                read_timeout=float(section["read_timeout"]),
                index_timeout=float(section["index_timeout"]),
            ),
            server=ServerLimits(
                per_address=int(section["per_address"]),
                idle_timeout=float(section["idle_timeout"]),
            ),
            keep_free=int(section["keep_free_bytes"]),
            public_url=str(section["public_url"]),
        )
        return cls(config.host_port(section["listen"]), settings)

    async def start(self, registry: CollectorRegistry, say: Say) -> None:
        self._session = mirror_resolver.session()
        try:
            self.mirror = Mirror(self.settings, self._session)
            self._runner, self._gate = await mirror_server.listen(self.mirror, *self.listen)
        except BaseException:
            await self.stop()
            raise
        registry.register(MirrorCollector(self.status))
        host, port = self._runner.addresses[0][:2]
        local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        self.url = f"http://{local}:{port}"
        lan = lan_address().address if host in ("0.0.0.0", "::") else host
        self.mirror.lan_url = f"http://{lan}:{port}"
        say(f"Mirror listening on http://{host}:{port}/ (store {self.settings.store})")
        for ecosystem in ("pypi", "opam"):
            upstream = getattr(self.settings, ecosystem)
            say(f"Mirror {ecosystem} upstream: {upstream or 'none (pass --' + ecosystem + ' URL)'}")
        self.mirror.start(done=say)  # the store check runs while the mirror serves
        self.advert.start(host, port)

    async def stop(self) -> None:
        await self.advert.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.mirror is not None:
            await self.mirror.close()
        if self._session is not None:
            await self._session.close()

    def status(self) -> dict[str, Any]:
        if self.mirror is None or self._gate is None:
            return {}
        return mirror_status.section(self.mirror, self.url is not None, self._gate.open)

    def admin_routes(self) -> list[web.RouteDef]:
        return mirror_status.admin_routes(lambda: self.mirror)


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
    records = [parse_record(f"{name}={value}") for name, value in section["records"].items()]
    records += [parse_record(r) for r in section.get("record_flags", [])]
    named = {r.name for r in records}
    records += [parse_record(f"{n}={a}") for n, a in own.items() if n not in named]
    upstreams = [dns_server(u) for u in section["upstreams"]] or resolv_conf_upstreams()
    forward = forward_rules(section["forward"], section.get("forward_flags", []))
    if section["block_mode"] not in ("null", "nxdomain"):
        raise ValueError("block mode is null or nxdomain")
    return NameserverSettings(
        listen=config.host_port(section["listen"], 53),
        upstreams=upstreams,
        blocklists=list(section["blocklists"]),
        allow=list(section["allow"]),
        records=records,
        forward=forward,
        block_mode=section["block_mode"],
        networks=list(section["networks"]) or list(LAN),
        rate_limit=int(section["rate_limit"]),
        stale_for=float(section["stale_for"]),
        reload_every=float(section["reload_every"]),
        mirror=mirror or (lambda: section["mirror"] or None),
    )


def forward_rules(table: dict[str, Any], flags: list[str]) -> dict[str, list[tuple[str, int]]]:
    """[nameserver.forward] (domain = "server" or a list) and --forward DOMAIN=SERVER flags."""
    rules: dict[str, list[tuple[str, int]]] = {}
    pairs = [(d, s) for d, v in table.items() for s in ([v] if isinstance(v, str) else v)]
    for flag in flags:
        domain, eq, server = flag.partition("=")
        if not eq:
            raise ValueError(f"expected --forward DOMAIN=SERVER, got {flag!r}")
        pairs.append((domain, server))
    for domain, server in pairs:
        name = normalize(domain)
        if name is None or not isinstance(server, str):
            raise ValueError(f'forward: expected DOMAIN = "SERVER[:PORT]", got {domain!r}')
        rules.setdefault(name, []).append(dns_server(server))
    return rules


def dns_server(text: str) -> tuple[str, int]:
    """`ADDRESS`, `HOST:PORT` or `[V6]:PORT`; a bare IPv6 address is port 53."""
    try:
        return str(ipaddress.ip_address(text.strip("[]"))), 53
    except ValueError:
        return config.host_port(text, 53)


LISTENING = re.compile(
    r"^(Relay|Mirror|Nameserver) listening on (?:http://)?\[?([^\s/\]]+)\]?:(\d+)"
)


def noting_listeners(say: Say, bound: dict[str, tuple[str, int]]) -> Say:
    """`say`, also noting where each service says it listens (the real port of a port 0)."""

    def noted(line: str) -> None:
        match = LISTENING.match(line)
        if match:
            bound[match[1].lower()] = (match[2], int(match[3]))
        say(line)

    return noted


async def serve(
    services: list[Service], admin_at: tuple[str, int], say: Say, dashboard: Dashboard | None = None
) -> int:
    """Start every service and the admin endpoint; run until SIGINT or SIGTERM, or until
    the organiser quits the dashboard."""
    registry = CollectorRegistry()
    stop = _stop_on_signals()  # before anything starts: a SIGTERM at any point stops cleanly
    names = [s.name for s in services]
    bound: dict[str, tuple[str, int]] = {}
    say = noting_listeners(say, bound)
    token = admin_token.load_or_create()
    ring = LogRing(services=tuple(names))
    logging.getLogger("retreatkit").addHandler(ring)
    process = ProcessInfo(names)
    started: list[Service] = []
    runner: web.AppRunner | None = None
    advert: Advertisement | None = None
    try:
        for service in services:
            await service.start(registry, say)
            started.append(service)
        sources = {s.name: s.status for s in services}
        routes = [route for s in services for route in admin_routes(s)]
        app = admin.make_app(
            registry, sources, routes, token=token, bound_host=admin_at[0], ring=ring,
            process=process,
        )  # fmt: skip
        runner, (ahost, aport) = await admin.start(app, *admin_at)
        # what start-up made lives as long as the process: keep the cyclic GC from
        # scanning it again and again (it was a tenth of a nameserver's CPU under load)
        gc.freeze()
        say(f"Admin on http://{ahost}:{aport}/status")
        lan = lan_address().address
        advert = await advertise(admin_at[0], [lan], aport, names)
        named = {"relay", "mirror", "nameserver"} <= set(names)
        process.attendees = startup.attendee_lines(bound, lan, named)
        if process.attendees:
            say("Attendees use:")
            for line in process.attendees:
                say(f"  {line}")
        if dashboard is not None:
            local = "127.0.0.1" if ahost in ("0.0.0.0", "::") else ahost
            await dashboard(f"http://{local}:{aport}".replace("http://::1", "http://[::1]"), token)
        else:
            await stop.wait()
        say("Stopping...")
    finally:
        if advert is not None:
            await advert.close()
        for service in reversed(started):
            try:
                await service.stop()
            except Exception:  # one service failing to stop must not keep the others up
                log.exception("stopping %s failed", service.name)
        if runner is not None:
            await runner.cleanup()
        logging.getLogger("retreatkit").removeHandler(ring)
        if started:
            say(f"Stopped: {', '.join(s.name for s in started)}")
    return 0


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
