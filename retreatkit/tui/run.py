"""Open the dashboard: against endpoints named or found (`retreatkit tui`), or inside
`retreatkit up` over its own admin endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import termios
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote, urlsplit

from retreatkit import version
from retreatkit.admin import noted
from retreatkit.admin import token as admin_token
from retreatkit.tui import guests
from retreatkit.tui.app import TERMINATED, Dashboard
from retreatkit.tui.sources import AdminClient, Endpoint, SourceError, endpoint_url

DEFAULT = "http://127.0.0.1:8080"
PROBE_TIMEOUT = 3.0
CHILD_GRACE = 5.0  # seconds the dashboard has to restore the terminal when told to stop
CHILD_RESTARTS = 5  # a dashboard that keeps crashing is left off after so many starts
PR_SET_PDEATHSIG = 1  # linux/prctl.h
log = logging.getLogger("retreatkit")


def local_token() -> str | None:
    """This machine's token, if a service has made one (reads work without it on loopback)."""
    try:
        return admin_token.read()
    except admin_token.TokenError:
        return None


def chosen(connect: list[str], local: bool = False) -> list[str]:
    """The endpoints named; else every one running on this machine (admin/noted.py), else
    the default. With `local` (`up`'s own dashboard), the named and those on this machine:
    a `retreatkit vm start` supervisor beside `up` is shown as `retreatkit tui` shows it.
    ValueError for a URL that is none."""
    named = [endpoint_url(u) for u in connect]
    if not named or local:
        named += [u for u in here() if u not in named]
    return named or [DEFAULT]


def here() -> list[str]:
    """The admin endpoints noted on this machine, as URLs; a note that is none is left out."""
    urls = []
    for text in noted.noted():
        try:
            urls.append(endpoint_url(text))
        except ValueError:
            continue
    return urls


async def endpoints(
    connect: list[str], token: str | None, find: bool, local: bool = False
) -> list[Endpoint]:
    """`chosen(connect)`, with the token; and, when `find`, those announced on the LAN,
    each at the address that answered within PROBE_TIMEOUT (discover.py), without it: a
    neighbour can announce an endpoint of its own, and would be sent the token that opens
    the organiser's (its DNS names, its blocklists). Each found is listed as found and only
    read (sources.Endpoint.found). The organiser names one to send it the token. Without
    a token given, one named that is a guest of a supervisor on this machine gets the
    guest's own (`guests_own_tokens`)."""
    urls = chosen(connect, local)
    named = [Endpoint(u, token or local_token()) for u in urls]
    if token is None and (host := local_token()) is not None:
        named = await guests_own_tokens(named, host)
    if not (find and not connect):
        return named
    from retreatkit.tui.discover import discover

    found = [u for u in await discover(answer=PROBE_TIMEOUT) if u not in urls]
    return named + [Endpoint(u, None, found=True) for u in found]


async def guests_own_tokens(named: list[Endpoint], host: str) -> list[Endpoint]:
    """`named`, each that is a guest's admin endpoint (as a supervisor noted on this
    machine lists it) with the guest's own token, which the supervisor gives for this
    machine's `host` token, in place of `host`: a guest is never sent its host's token,
    which opens every guest and service there (docs/admin-api.md). An endpoint on this
    machine that is none noted here may be a guest's forward: when its supervisor cannot
    say (it refused, failed or gave no token), it is sent none."""
    noted_here = here()
    if not noted_here:
        return named
    # a guest's forward is a port of this machine, whichever of its names the URL says,
    # and not one where an endpoint noted here listens
    noted_ports = {_port_here(u) for u in noted_here}

    def maybe_guest(url: str) -> int | None:
        port = _port_here(url)
        return None if port in noted_ports else port

    local = {maybe_guest(e.url) for e in named} - {None}
    if not local:
        return named
    owned: dict[int, str] = {}
    for supervisor in noted_here:
        async with AdminClient(Endpoint(supervisor, host), PROBE_TIMEOUT) as client:
            try:
                listed = guests.parse(await client.get_json("/vm/guests"))
            except (SourceError, ValueError):
                continue  # not a supervisor, or not answering: its guests go unsent
            for guest in listed:
                where = _port_here(guest.admin or "")
                if where is None or where not in local or where in owned:
                    continue
                path = f"/vm/guests/{quote(guest.name, safe='')}/token"
                try:
                    owned[where] = guests.token_of(await client.get_json(path))
                except (SourceError, ValueError):
                    continue
    out = []
    for e in named:
        where = maybe_guest(e.url)
        out.append(e if where is None else replace(e, token=owned.get(where)))
    return out


def _port_here(url: str) -> int | None:
    """The port of an admin URL on this machine (loopback or one of its addresses, by any
    name of them), else None."""
    try:
        parts = urlsplit(endpoint_url(url))
    except ValueError:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = (parts.hostname or "").lower()
    here_too = host == "localhost" or guests.is_local(host)
    return port if here_too else None


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
    """`retreatkit tui`: 0 when the organiser quits, 1 when nothing can be reached or the
    dashboard failed."""
    if quit_stops:  # `retreatkit up`'s own: it ends with the services' process
        end_with_parent()
    try:
        given = admin_token.given(token)
        found = asyncio.run(endpoints(connect, given, find=True, local=quit_stops))
        token = given or local_token()
        problems = asyncio.run(reachable(found))
    except ValueError as exc:
        print(f"retreatkit: {exc}", file=sys.stderr)
        return 2
    if len(problems) == len(found):
        print(f"retreatkit: no admin endpoint reachable: {'; '.join(problems)}", file=sys.stderr)
        return 1
    dashboard = Dashboard(
        found,
        leak_window=leak_window,
        freeze_gc=True,
        stop_on_sigterm=True,
        quit_stops=quit_stops,
        # endpoints started on this machine later, where the dashboard shows this machine's
        local=here if quit_stops or not connect else None,
        local_token=token,
    )
    dashboard.run()
    return ended(dashboard)


def ended(dashboard: Dashboard) -> int:
    """How a dashboard that ran ends its process: 0 only for the organiser's quit, which
    under `up` stops every service. Textual ends a dashboard that failed in its input
    thread (a byte that is not UTF-8) with no return code, and SIGTERM closed it with 0:
    `up` read both as that quit. A dashboard closed by SIGTERM, its terminal restored,
    ends of the signal, as its sender (`up`, or the organiser's `kill`) reads it."""
    if dashboard.return_code == TERMINATED:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    return 0 if dashboard.return_code == 0 else 1


async def in_child(url: str, token: str, config: Path | None, stop: asyncio.Event) -> None:
    """The dashboard of `retreatkit up`: `retreatkit tui` over its admin endpoint, in a
    process of its own on the terminal. A terminal that goes away (a dropped SSH session)
    or a dashboard that hangs can then never stall the services the LAN depends on. Ends
    when the organiser quits it or its terminal goes, or closes it when `stop` is set
    (SIGTERM). A dashboard that crashed or was killed is started again: the services
    never stop for it."""
    argv = version.command()
    if config is not None:
        argv += ["--config", str(config)]
    argv += ["tui", "--connect", url, "--quit-stops"]
    env = {**os.environ, "RETREATKIT_TOKEN": token}  # never on argv, where ps shows it
    restarts = 0
    while True:
        code = await _one_child(argv, env, stop)
        if code is None or not crashed(code):
            return
        restarts += 1
        if restarts > CHILD_RESTARTS:
            log.warning("the dashboard ended (%s) %d times; the services run on", how(code),
                        restarts)  # fmt: skip
            await stop.wait()
            return
        log.warning("the dashboard ended (%s); it starts again, the services never stopped",
                    how(code))  # fmt: skip


def crashed(code: int) -> bool:
    """Whether a dashboard that ended with `code` crashed (an error, a signal such as
    SIGKILL or SIGSEGV, a stray SIGHUP meant for `up`'s blocklists), rather than ended by
    the organiser's quit (0) or its terminal's hangup (nobody would see it again)."""
    if code == -signal.SIGHUP:
        return terminal_alive()
    return code != 0


def terminal_alive() -> bool:
    """Whether our terminal is still there: a hung-up one (a dropped SSH session, a tmux
    server killed) answers EIO to every ioctl."""
    try:
        termios.tcgetattr(sys.stdin.fileno())
    except (OSError, termios.error, ValueError):
        return False
    return True


def how(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"exit code {code}"


async def _one_child(argv: list[str], env: dict[str, str], stop: asyncio.Event) -> int | None:
    """Run the dashboard until it ends (its exit code) or `stop` is set (None)."""
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
    return None if stop.is_set() else child.returncode


def end_with_parent() -> None:
    """`retreatkit up`'s dashboard: closed (SIGTERM, so the terminal is restored) when the
    process that runs the services dies, killed or crashed, rather than left on the
    terminal fighting the shell for its keys (prctl(2), Linux). One that died before this
    leaves nothing to reach: the dashboard then stops with its line before it draws."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
