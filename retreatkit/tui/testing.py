"""Test tools shipped with the dashboard: a fake admin endpoint (an aiohttp app on port 0,
in a thread) serving canned JSON, garbage, bytes of a test's choosing (over a slow link,
too), or nothing at all (it hangs)."""

from __future__ import annotations

import asyncio
import html
import io
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from rich.console import Console
from textual.pilot import Pilot

from retreatkit.tui.app import Dashboard
from retreatkit.tui.screens.base import Panel
from retreatkit.tui.screens.service import Section
from retreatkit.tui.sources import Endpoint

PAUSE = 0.05  # seconds between the pieces of an answer over a slow link
HOSTILE = "[@click=app.quit]x[/] [bold]boom \x1b]0;pwned\x07\x1b[2J\x9b31m\u202etxt.exe"


def canned(name: str = HOSTILE) -> dict[str, Any]:
    """A /status as the contract describes it, with a hostile name wherever a peer chose one."""
    return {
        "process": {
            "pid": 4242,
            "started_at": "2026-01-01T10:00:00+00:00",
            "uptime_seconds": 3725,
            "memory_bytes": 52428800,
            "open_files": 31,
            "services": ["relay", "mirror", "nameserver"],
            "version": "0.1.0",
            "log_level": "INFO",
            "attendees": [
                "bob relay: relay.retreat.lan:9000 (10.0.0.2:9000)",
                "DNS server: 10.0.0.2 port 53 (hand it out by DHCP)",
            ],
            "addresses": {
                "relay": "10.0.0.2:9000",
                "mirror": "10.0.0.2:8000",
                "nameserver": "10.0.0.2:53",
            },
        },
        "relay": {
            "up": True,
            "uptime_seconds": 3720,
            "connections_open": 4,
            "warnings": [],
            "waiting_senders": 1,
            "transfers_active": 1,
            "transfers_completed": 12,
            "bytes_relayed": 734003200,
            "handshakes_refused": 2,
            "handshakes_failed": 1,
            "ended": {"completed": 12, "abandoned": 1},
        },
        "mirror": {
            "up": True,
            "uptime_seconds": 3720,
            "connections_open": 2,
            "warnings": [
                f"upstream pypi down: {name}",
                "apt debian/bookworm: its Release expires at 2026-01-02T09:00:00+00:00;"
                " offline, apt then needs [check-valid-until=no] in its sources line",
            ],
            "hits": 70,
            "misses": 10,
            "hit_ratio": 0.875,
            "stale_served": 4,
            "offline_pages": 2,
            "verify_failures": 1,
            "upstream_errors": 3,
            "connections_refused": 0,
            "evicted": 12,
            "evicted_bytes": 314572800,
            "bytes_from_cache": 1073741824,
            "bytes_from_upstream": 157286400,
            "bytes_saved": 916455424,
            "upstream_bytes": 314572800,
            "upstream_index_bytes": 2411724,
            "downloads_in_progress": 1,
            "top_packages": [[name, 9], ["numpy", 7]],
            "upstreams": {
                "pypi": {
                    "url": "http://192.0.2.1/simple/",
                    "state": "down",
                    "last_error": "connection refused",
                    "down_since_at": "2026-01-01T10:58:00+00:00",
                    "retry_in_seconds": 42.0,
                },
                "opam": {"url": "http://192.0.2.2/opam", "state": "up", "last_error": None},
                "npm": {"url": "http://192.0.2.3/npm/", "state": "unknown", "last_error": None},
                "apt/debian": {
                    "url": "http://192.0.2.4/debian",
                    "state": "up",
                    "last_error": None,
                },
                "apt/debian-security": {
                    "url": "http://192.0.2.4/debian-security",
                    "state": "up",
                    "last_error": None,
                },
            },
            "store": {
                "size_bytes": 1231028224,
                "free_bytes": 50 << 30,
                "files": 80,
                "max_size_bytes": 4 << 30,
                "disk_full": False,
                "check": {"state": "done", "checked": 80, "dropped": 0},
            },
        },
        "nameserver": {
            "up": False,
            "uptime_seconds": 3720,
            "connections_open": 0,
            "warnings": [],
            "queries": 5000,
            "cache_hits": 4000,
            "blocked": 1500,
            "stale_served": 3,
            "forwarded": 900,
            "servfail": 2,
            "blocking": "on",
            "top_domains": [[name, 40], ["example.org", 30]],
            "top_blocked": [["ads.example", 20]],
            "top_clients": [["10.0.0.7", 99]],
            "upstreams": [{"address": "192.0.2.53:53", "state": "up", "latency_ms": 12.5}],
            "blocklists": [
                {
                    "source": "/srv/ads.txt",
                    "entries": 1200,
                    "bad_lines": 3,
                    "loaded_at": "2026-01-01T10:00:02+00:00",
                    "last_error": None,
                }
            ],
        },
    }


def hosting(
    *services: str, name: str = HOSTILE, addresses: dict[str, str] | None = None
) -> dict[str, Any]:
    """A /status like `canned`, of a process hosting only `services` (a guest hosts one);
    `addresses` where attendees reach them, none by default (a guest faces no LAN: its
    supervisor says where its service is reached)."""
    full = canned(name)
    process = {**full["process"], "services": list(services), "addresses": addresses or {}}
    return {"process": process, **{s: full[s] for s in services}}


def guest(name: str, service: str, admin: str | None, state: str = "running") -> dict[str, Any]:
    """A guest as a supervisor lists it at `GET /vm/guests`."""
    running = state == "running"
    return {
        "name": name,
        "service": service,
        "image": f"/srv/images/{service}",
        "state": state,
        "pid": 5151 if running else None,
        "uptime_seconds": 3600.0 if running else 0.0,
        "restarts": 2,
        "memory_bytes": 140 << 20 if running else 0,
        "cpu_seconds": 93.25,
        "forwards": ["tcp:0.0.0.0:9000:9000", "tcp:127.0.0.1:41235:8080"],
        "admin": admin,
        "memory_mb": 128,
        "restart": True,
        "last_exit": "qemu exit code 1",
        "console": f"/home/o/.local/state/retreatkit/vm/{name}/console.log",
    }


def lists(name: str = HOSTILE) -> dict[str, Any]:
    transfer = {
        "nameplate": "7",
        "bytes": 1048576,
        "started_at": "2026-01-01T10:59:00+00:00",
        "duration_seconds": 4,
        "rate_bytes_per_second": 262144,
    }
    fetch = {
        "ecosystem": "pypi",
        "package": name,
        "file": f"{name}.whl",
        "bytes": 1000,
        "size_bytes": 4000,
        "started_at": "2026-01-01T10:59:30+00:00",
    }
    return {
        "/relay/transfers": {
            "active": [transfer],
            "recent": [{**transfer, "nameplate": "3", "ended": "completed"}],
        },
        "/mirror/fetches": {"in_progress": [fetch], "recent": [{**fetch, "ended": "stored"}]},
        "/nameserver/records": {
            "total": 3,
            "records": [
                {"name": "printer.retreat.lan", "type": "A", "value": "10.0.0.9"},
                {"name": "wiki.retreat.lan", "type": "CNAME", "value": "www.retreat.lan"},
            ],
        },
        "/nameserver/queries": {
            "next": 2,
            "queries": [
                {
                    "seq": 1,
                    "at": "2026-01-01T10:59:58+00:00",
                    "client": "10.0.0.7",
                    "name": name,
                    "type": "A",
                    "answer": "blocked",
                    "rcode": "NOERROR",
                    "ms": 0.1,
                },
                {
                    "seq": 2,
                    "at": "2026-01-01T10:59:59+00:00",
                    "client": "10.0.0.8",
                    "name": "example.org",
                    "type": "AAAA",
                    "answer": "cached",
                    "rcode": "NOERROR",
                    "ms": 0.2,
                },
            ],
        },
    }


@dataclass
class FakeAdmin:
    """`mode`: "ok" (canned JSON), "garbage" (not JSON), "hang" (never answers),
    "unauthorized" (401 to everything: a token it does not take). With `guests`, it
    supervises them as `retreatkit up` does: `/vm/guests`, each guest's token (to the
    supervisor's token only: `guest_token`), and start and stop, which only change the
    state it lists (no VM boots). `raw` answers a path with bytes as they are
    (as JSON), in `pieces` writes with a pause between each, as a slow link brings them;
    a log record given as bytes is sent as they are. `redirects` answers a path with a 302
    to the URL given; a path in `hangs` is never answered."""

    mode: str = "ok"
    status: dict[str, Any] = field(default_factory=canned)
    lists: dict[str, Any] = field(default_factory=lists)
    logs: list[dict[str, Any] | bytes] = field(default_factory=list)
    guests: list[dict[str, Any]] | None = None
    gives_tokens: bool = True  # False: a supervisor whose guests have no token of their own
    logs_end: bool = False  # end the log stream once `logs` are sent
    raw: dict[str, bytes] = field(default_factory=dict)
    pieces: int = 1
    redirects: dict[str, str] = field(default_factory=dict)
    hangs: tuple[str, ...] = ()
    seen: list[tuple[str, str, str | None, str]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.text()
        self.seen.append((request.method, request.path, request.headers.get("Authorization"), body))
        if self.mode == "hang" or request.path in self.hangs:
            await asyncio.Event().wait()
        if self.mode == "garbage":
            return web.Response(text="<html>\x1b[31mnot json", content_type="application/json")
        if self.mode == "unauthorized":
            raise web.HTTPUnauthorized(text="needs the admin token\n")
        if request.path in self.redirects:
            raise web.HTTPFound(self.redirects[request.path])
        if request.path in self.raw:
            return await self._raw(request, self.raw[request.path])
        if request.path == "/status":
            return web.json_response(self._status())
        if request.path.startswith("/vm/guests") and self.guests is not None:
            return self._supervise(request)
        if request.path == "/logs":
            after = int(request.query.get("after", "0"))
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for record in self.logs:
                if isinstance(record, bytes):
                    await response.write(b"data: " + record + b"\n\n")
                elif record.get("seq", 0) > after:
                    await response.write(f"data: {json.dumps(record)}\n\n".encode())
            if self.logs_end:
                return response  # the process went away
            await asyncio.Event().wait()  # a live stream with nothing more to say
        if request.method != "GET":
            return web.json_response({"done": request.path})
        if request.path == "/nameserver/queries" and request.path in self.lists:
            queries = self.lists[request.path]["queries"]
            after = int(request.query.get("after", "-1"))
            found = [q for q in queries if q["seq"] > after]
            last = max((q["seq"] for q in queries), default=0)
            return web.json_response(
                {"next": found[-1]["seq"] if found else last, "queries": found}
            )
        if request.path in self.lists:
            return web.json_response(self.lists[request.path])
        raise web.HTTPNotFound()

    async def _raw(self, request: web.Request, body: bytes) -> web.StreamResponse:
        if self.pieces <= 1:
            return web.Response(body=body, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        step = -(-len(body) // self.pieces)
        try:
            for at in range(0, len(body), step):
                if at:
                    await asyncio.sleep(PAUSE)  # the link is slow, not a synchronisation
                await response.write(body[at : at + step])  # each drained before the next
            await response.write_eof()
        except ConnectionResetError:
            pass  # the dashboard read enough of it
        return response

    def _status(self) -> dict[str, Any]:
        if self.guests is None:
            return self.status
        process = self.status.get("process", {})
        hosted = [*process.get("services", []), "vm"]
        running = sum(1 for g in self.guests if g["state"] == "running")
        vm = {
            "up": True,
            "uptime_seconds": 7200,
            "guests": len(self.guests),
            "guests_running": running,
            "restarts": sum(g["restarts"] for g in self.guests),
            "warnings": [
                f"guest {g['name']} failed: {g['last_exit']}"
                for g in self.guests
                if g["state"] == "failed"
            ],
        }
        return {**self.status, "process": {**process, "services": hosted}, "vm": vm}

    def _supervise(self, request: web.Request) -> web.Response:
        assert self.guests is not None
        if request.path == "/vm/guests" and request.method == "GET":
            return web.json_response({"guests": self.guests})
        parts = request.path.split("/")  # "", "vm", "guests", NAME, VERB
        found = [g for g in self.guests if len(parts) == 5 and g["name"] == parts[3]]
        if found and parts[4] == "token" and request.method == "GET" and self.gives_tokens:
            if request.headers.get("Authorization") != f"Bearer {TOKEN}":
                raise web.HTTPUnauthorized(text="this needs the admin token\n")
            return web.json_response({"token": guest_token(parts[3])})
        if request.method != "POST" or not found or parts[4] not in ("start", "stop"):
            raise web.HTTPNotFound(text="no such guest\n")
        found[0]["state"] = "running" if parts[4] == "start" else "stopped"
        return web.json_response(found[0])


@contextmanager
def serve(fake: FakeAdmin) -> Iterator[FakeAdmin]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        ready.set()

    thread = threading.Thread(
        target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True
    )
    thread.start()
    ready.wait(10)
    try:
        yield fake
    finally:

        async def stop() -> None:
            for task in asyncio.all_tasks(loop):
                if task is not asyncio.current_task():
                    task.cancel()
            await runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


TOKEN = "test-token"  # noqa: S105 - a fake endpoint's, in tests only


def guest_token(name: str) -> str:
    """The token a fake supervisor gives for its guest `name`."""
    return f"guest-{name}-token"


class Clock:
    """A clock that stands still unless a test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# the wall clock of a test's dashboard: an hour after `canned`'s process started
NOW = datetime(2026, 1, 1, 11, 0, tzinfo=UTC).timestamp()


def make_dashboard(
    *urls: str, follow_logs: bool = False, label: str | None = None, wall: float = NOW
) -> Dashboard:
    """A dashboard that polls once (its period is an hour) on clocks that stand still
    (its wall clock at `wall`); `label` names the endpoint on screen in place of its
    port-0 address."""
    endpoints = [Endpoint(url, TOKEN, label) for url in urls]
    return Dashboard(
        endpoints, interval=3600, clock=Clock(), wall=Clock(wall), follow_logs=follow_logs
    )


@contextmanager
def time_zone(name: str) -> Iterator[None]:
    """The process's local time zone is `name` (`UTC`, `Europe/Berlin`) meanwhile."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


def screen_text(app: Dashboard) -> str:
    """What the terminal would show, a line a row (the SVG export, tags dropped; the
    blanks between widgets side by side are dropped too)."""
    svg = app.export_screenshot()
    return html.unescape(re.sub(r"<[^>]+>", "", svg)).replace("\xa0", " ")


def screen_lines(app: Dashboard) -> list[str]:
    """What the terminal shows, row by row, each as wide as the terminal: the frame
    export_screenshot draws, as text (so what sits in a column stays in it)."""
    width, height = app.size
    console = Console(
        width=width, height=height, file=io.StringIO(), record=True, force_terminal=True
    )
    console.print(
        app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    )
    return console.export_text().splitlines()


async def scrolled_through(pilot: Pilot[int]) -> list[str]:
    """The screen's lines at each position of its body, scrolled from top to bottom a
    screenful at a time: every line the organiser can bring into view."""
    app = pilot.app
    assert isinstance(app, Dashboard)
    body = app.screen.query_one("#body")
    seen: list[str] = []
    y = 0
    while True:
        body.scroll_to(y=y, animate=False, immediate=True)
        await pilot.pause()
        seen += screen_lines(app)
        if y >= body.max_scroll_y:
            return seen
        y = min(y + max(body.size.height - 1, 1), body.max_scroll_y)


async def settle(pilot: Pilot[int]) -> None:
    """Every endpoint polled once, and the screen drawn from it and its lists."""
    app = pilot.app
    assert isinstance(app, Dashboard)
    await app.polled.wait()
    screen = app.screen
    assert isinstance(screen, Panel)
    screen.loaded.clear()
    screen.reload()
    await screen.loaded.wait()
    for section in screen.query(Section):  # each fetches its own lists
        await section.loaded.wait()
    await pilot.pause()


async def actions_done(pilot: Pilot[int]) -> None:
    """Every action the organiser started has finished (its question answered, its
    request back)."""
    app = pilot.app
    actions = [w for w in app.workers if w.group == "action"]
    if actions:  # an empty list would mean every worker, the pollers too
        await app.workers.wait_for_complete(actions)
    await pilot.pause()
