"""`retreatkit tui --web`: the same dashboard as a web page (textual-serve), behind the token.

textual-serve starts one dashboard process per browser connection and has no access
control of its own. Here the page answers only a browser that brought the admin token:
once, in the address printed at start, after which an HttpOnly, SameSite=Strict cookie
carries it. The WebSocket that drives the app must also come from the page's own origin,
so another site open in the organiser's browser cannot drive the dashboard.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import shlex
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from textual_serve.server import Server

from retreatkit import version
from retreatkit.admin import token as admin_token
from retreatkit.admin.access import Handler
from retreatkit.config import host_port_text
from retreatkit.httpserver import Runner
from retreatkit.lanaddress import is_loopback
from retreatkit.tui.run import chosen, local_token

COOKIE = "retreatkit_dashboard"
# textual-serve's page asks Google's font servers for its typeface
FROM_THE_INTERNET = re.compile(r"<link\b[^>]*\bhref=\"https?://[^>]*>", re.IGNORECASE)


def access(token: str) -> Any:
    expected = token.encode()

    def good(value: str | None) -> bool:
        # a cookie's bytes that are not UTF-8 come as lone surrogates (see admin.access)
        return value is not None and hmac.compare_digest(
            value.encode(errors="surrogateescape"), expected
        )

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/static/"):
            return await handler(request)  # the terminal's scripts and styles: no secrets
        if request.path == "/" and "token" in request.query:
            if not good(request.query["token"]):
                raise web.HTTPUnauthorized(text="wrong token\n")
            # out of the address bar and the history at once
            response = web.HTTPSeeOther("/")
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
            raise response
        if not good(request.cookies.get(COOKIE)):
            raise web.HTTPUnauthorized(
                text="open the address `retreatkit tui --web` printed: it carries the token\n"
            )
        if request.path == "/ws":
            origin = request.headers.get("Origin", "")
            if origin.split("://", 1)[-1] != request.host:
                raise web.HTTPForbidden(text="the dashboard is driven from its own page only\n")
        return await handler(request)

    return check


class OfflineTemplates(jinja2.FileSystemLoader):
    """textual-serve's templates without what they would fetch from the internet: at an
    event with no uplink the organiser's browser waited on Google's font servers for
    nothing, and with one it told them who opened the dashboard. The terminal then draws
    in the browser's own monospace font."""

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        return FROM_THE_INTERNET.sub("", source), filename, uptodate


class DashboardServer(Server):
    def __init__(self, command: str, host: str, port: int, public_url: str, token: str) -> None:
        super().__init__(command, host=host, port=port, title="retreatkit", public_url=public_url)
        self.token = token

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        aiohttp_jinja2.setup(app, loader=OfflineTemplates(self.templates_path))
        app.middlewares.append(access(self.token))
        return app

    async def on_startup(self, app: web.Application) -> None:
        """textual-serve prints a banner here; the command line says what matters instead."""


def serve_web(
    listen: tuple[str, int], connect: list[str], token_flag: str | None, config: Path | None
) -> int:
    """Serve until SIGINT or SIGTERM; 1 with one line when it cannot."""
    try:
        urls = chosen(connect)
    except ValueError as exc:
        print(f"retreatkit: {exc}", file=sys.stderr)
        return 2
    given = admin_token.given(token_flag)
    token = given or local_token()
    if token is None:
        print(
            f"retreatkit: the web dashboard needs the admin token: start a service here "
            f"first or set {admin_token.ENV}",
            file=sys.stderr,
        )
        return 1
    host, port = listen
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        print(f"retreatkit: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    port = sock.getsockname()[1]
    shown = host
    if host in ("0.0.0.0", "::"):
        from retreatkit.lanaddress import choose

        shown = choose().address
    public = f"http://{host_port_text(shown, port)}"
    argv = version.command()
    if config is not None:
        argv += ["--config", str(config)]
    argv += ["tui", *(a for u in urls for a in ("--connect", u))]
    # a token given reaches each dashboard process in its environment, never in its argv;
    # without one, each reads this machine's as `retreatkit tui` does, and sends a guest
    # named among the endpoints the guest's own (run.guests_own_tokens)
    if given is not None:
        os.environ[admin_token.ENV] = given
    server = DashboardServer(shlex.join(argv), host, port, public, token)
    if not is_loopback(host):
        print(
            "retreatkit: the web dashboard is open to the LAN; the token guards it", file=sys.stderr
        )
    return asyncio.run(_serve(server, sock, f"{public}/?token={token}"))


async def _serve(server: DashboardServer, sock: socket.socket, address: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = Runner(await server._make_app(), logging.getLogger("retreatkit.tui"))
    await runner.setup()
    await web.SockSite(runner, sock).start()
    print(f"Dashboard on {address}", file=sys.stderr, flush=True)
    await stop.wait()
    await runner.cleanup()
    print("Dashboard stopped", file=sys.stderr)
    return 0
