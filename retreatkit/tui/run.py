"""Open the dashboard: against endpoints named or found (`retreatkit tui`), or inside
`retreatkit up` over its own admin endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

from retreatkit.admin import noted
from retreatkit.admin import token as admin_token
from retreatkit.tui.app import Dashboard
from retreatkit.tui.sources import AdminClient, Endpoint, SourceError, endpoint_url

DEFAULT = "http://127.0.0.1:8080"
PROBE_TIMEOUT = 3.0
CHILD_GRACE = 5.0  # seconds the dashboard has to restore the terminal when told to stop


def local_token() -> str | None:
    """This machine's token, if a service has made one (reads work without it on loopback)."""
    try:
        return admin_token.read()
    except admin_token.TokenError:
        return None


def chosen(connect: list[str]) -> list[str]:
    """The endpoints named; else every one running on this machine (admin/noted.py), else
    the default. ValueError for a URL that is none."""
    return [endpoint_url(u) for u in connect] or noted.noted() or [DEFAULT]


async def endpoints(connect: list[str], token: str | None, find: bool) -> list[Endpoint]:
    """`chosen(connect)`; and, when `find`, those announced on the LAN."""
    urls = chosen(connect)
    if find and not connect:
        from retreatkit.tui.discover import discover

        urls += [u for u in await discover() if u not in urls]
    token = token or local_token()
    return [Endpoint(u, token) for u in urls]


async def reachable(found: list[Endpoint]) -> list[str]:
    """One line per endpoint that cannot be read; all of them means nothing to show."""

    async def probe(e: Endpoint) -> str | None:
        async with AdminClient(e, PROBE_TIMEOUT) as client:
            try:
                await client.status()
            except SourceError as exc:
                return str(exc)
        return None

    return [p for p in await asyncio.gather(*map(probe, found)) if p]


def run(connect: list[str], token: str | None, leak_window: float, quit_stops: bool = False) -> int:
    """`retreatkit tui`: 0 when the organiser quits, 1 when nothing can be reached."""
    try:
        found = asyncio.run(endpoints(connect, admin_token.given(token), find=True))
        problems = asyncio.run(reachable(found))
    except ValueError as exc:
        print(f"retreatkit: {exc}", file=sys.stderr)
        return 2
    if len(problems) == len(found):
        print(f"retreatkit: no admin endpoint reachable: {'; '.join(problems)}", file=sys.stderr)
        return 1
    dashboard = Dashboard(
        found, leak_window=leak_window, freeze_gc=True, stop_on_sigterm=True, quit_stops=quit_stops
    )
    result = dashboard.run()
    return result or 0


async def in_child(url: str, token: str, config: Path | None, stop: asyncio.Event) -> None:
    """The dashboard of `retreatkit up`: `retreatkit tui` over its admin endpoint, in a
    process of its own on the terminal. A terminal that goes away (a dropped SSH session)
    or a dashboard that hangs can then never stall the services the LAN depends on. Ends
    when the organiser quits it, or closes it when `stop` is set (SIGTERM)."""
    argv = [sys.executable, "-m", "retreatkit.cli.main"]
    if config is not None:
        argv += ["--config", str(config)]
    argv += ["tui", "--connect", url, "--quit-stops"]
    env = {**os.environ, "RETREATKIT_TOKEN": token}  # never on argv, where ps shows it
    child = await asyncio.create_subprocess_exec(*argv, env=env)
    stopping = asyncio.ensure_future(stop.wait())
    exited = asyncio.ensure_future(child.wait())
    try:
        await asyncio.wait({stopping, exited}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()  # the dashboard restores the terminal on SIGTERM
            try:
                await asyncio.wait_for(exited, CHILD_GRACE)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                await exited
