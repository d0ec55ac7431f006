"""The admin endpoint of one process, hosting the status of every service in it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from retreatkit.admin import access
from retreatkit.admin.gate import IDLE_TIMEOUT, AdminGate
from retreatkit.admin.logs import LogRing
from retreatkit.admin.logstream import RING_KEY, close_streams, stream
from retreatkit.admin.process import ProcessInfo
from retreatkit.httpserver import GuardedSite, Runner, body_text

StatusSource = Callable[[], dict[str, Any]]

REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
SOURCES_KEY = web.AppKey("sources", dict)
PROCESS_KEY = web.AppKey("process", ProcessInfo)
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def make_app(
    registry: CollectorRegistry,
    sources: dict[str, StatusSource],
    routes: Sequence[web.AbstractRouteDef] = (),
    *,
    token: str,
    bound_host: str = "127.0.0.1",
    ring: LogRing | None = None,
    process: ProcessInfo | None = None,
) -> web.Application:
    """`sources` maps a service name to a function giving its status (no secrets, ever);
    `routes` are the services' own lists and actions, each under `/<service>/`
    (docs/admin-api.md). Every route, theirs included, is behind the access rules."""
    check = access.middleware(token, bound_host)
    app = web.Application(client_max_size=4096, middlewares=[check])  # type: ignore[list-item]
    app[REGISTRY_KEY] = registry
    app[SOURCES_KEY] = sources
    app[PROCESS_KEY] = process or ProcessInfo(list(sources))
    app[RING_KEY] = ring or LogRing(services=tuple(sources))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_put("/loglevel", loglevel)
    app.router.add_get("/loglevel", get_loglevel)
    app.router.add_get("/logs", stream)
    app.router.add_routes(routes)
    app.on_shutdown.append(close_streams)
    return app


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def status(request: web.Request) -> web.Response:
    sources: dict[str, StatusSource] = request.app[SOURCES_KEY]
    body: dict[str, Any] = {"process": request.app[PROCESS_KEY].status()}
    body.update({name: source() for name, source in sources.items()})
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def get_loglevel(request: web.Request) -> web.Response:
    level = logging.getLogger("retreatkit").getEffectiveLevel()
    return web.json_response({"logger": "retreatkit", "level": logging.getLevelName(level)})


async def loglevel(request: web.Request) -> web.Response:
    """Body: `debug`, or JSON {"level": "debug", "logger": "retreatkit.relay"}."""
    raw = (await body_text(request)).strip()
    logger_name = "retreatkit"
    level = raw
    if raw.startswith("{"):
        try:
            doc = json.loads(raw)
            level = str(doc["level"])
            logger_name = str(doc.get("logger", logger_name))
        # RecursionError: JSON nested deeper than Python recurses, as 4 KB can be
        except (ValueError, KeyError, TypeError, RecursionError):
            raise web.HTTPBadRequest(text='expected {"level": "...", "logger": "..."}\n') from None
    level = level.upper()
    if level not in LEVELS:
        raise web.HTTPBadRequest(text=f"unknown level {level!r}; one of {', '.join(LEVELS)}\n")
    if logger_name != "retreatkit" and not logger_name.startswith("retreatkit."):
        raise web.HTTPBadRequest(text="only retreatkit loggers can be set\n")
    logging.getLogger(logger_name).setLevel(level)
    logging.getLogger("retreatkit.admin").warning("log level of %s set to %s", logger_name, level)
    return web.json_response({"logger": logger_name, "level": level})


async def start(
    app: web.Application, host: str, port: int
) -> tuple[web.AppRunner, tuple[str, int]]:
    """Serve the admin endpoint; returns the runner (to clean up) and the bound address."""
    # every connection passes the gate before aiohttp sees it (admin/gate.py: silent
    # connections held the process's open files), and an idle one closes
    runner = Runner(app, logging.getLogger("retreatkit.admin"), keepalive_timeout=IDLE_TIMEOUT)
    await runner.setup()
    site = GuardedSite(runner, host, port, AdminGate())
    await site.start()
    address: tuple[str, int] = tuple(runner.addresses[0][:2])  # the real port of a port-0 bind
    return runner, address
