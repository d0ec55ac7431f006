"""Host a set of services in one process, with one admin endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry

from retreatkit import startup
from retreatkit.admin import noted
from retreatkit.admin import token as admin_token
from retreatkit.admin.logs import LogRing
from retreatkit.admin.process import ProcessInfo
from retreatkit.config import host_port_text
from retreatkit.lanaddress import choose as lan_address
from retreatkit.logfile import LOG_FORMAT, log_file

if TYPE_CHECKING:
    from aiohttp import web

    from retreatkit.mdns import LanAdvert

log = logging.getLogger("retreatkit")
Say = Callable[[str], None]
# (admin URL, token, stop): runs until the organiser quits it, or until `stop` is set
Dashboard = Callable[[str, str, asyncio.Event], Awaitable[None]]
# the admin endpoint's code, aiohttp's server among it: loaded once the services listen
# (see serve), since no service needs it to answer
ADMIN_CODE = "retreatkit.admin.app"


# `extra=` for a record that is also a line for the organiser (a guest restarted): on
# stderr it reads as the line alone, as `say` prints one; /logs and a log file date it
SAID = {"said": True}


class ConsoleFormatter(logging.Formatter):
    """LOG_FORMAT, except for a record logged with `extra=SAID`: its message alone."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "said", False):
            return record.getMessage()
        return super().format(record)


def setup_logging(level: str = "INFO", to_file: Path | None = None) -> None:
    """Logs go to stderr, or to `to_file` while the dashboard holds the terminal (a line on
    stderr would tear its screen); the admin endpoint keeps the last ones for /logs too."""
    if to_file is None:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(ConsoleFormatter())
        logging.basicConfig(handlers=[console], level="WARNING")
    else:
        to_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handler = log_file(to_file)
        logging.basicConfig(handlers=[handler], level="WARNING")
    logging.getLogger("retreatkit").setLevel(level)


class StartError(Exception):
    """A service cannot start, for a reason its user can act on: one line, no traceback
    (the mirror's store held by another process, say)."""


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


def served_elsewhere(service: Service) -> dict[str, tuple[str, int]]:
    """Services a service runs outside this process (a supervisor's VM guests), each with
    the host address attendees reach it at: an optional `attendee_addresses()` method."""
    own = getattr(service, "attendee_addresses", None)
    return dict(own()) if own is not None else {}


async def hang_up(services: list[Service]) -> None:
    """SIGHUP: what each started service can reload, reloaded (the nameserver's lists, a
    nameserver guest's lists from this host's files), each said in the log. An optional
    `hangup()` method returns the lines; a process with none says there is nothing to
    reload. SIGHUP's default action, ending the process, took every service and guest
    with it when no in-process nameserver had caught the signal."""
    able = [(s, hook) for s in services if (hook := getattr(s, "hangup", None)) is not None]
    if not able:
        names = ", ".join(s.name for s in services) or "no service started yet"
        log.info("SIGHUP: nothing to reload (%s)", names, extra=SAID)
        return
    results = await asyncio.gather(*(hangup() for _, hangup in able), return_exceptions=True)
    for (service, _), result in zip(able, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result
            log.warning("SIGHUP: %s reloaded nothing: %s", service.name, result, extra=SAID)
            continue
        for line in result:
            log.info("SIGHUP: %s", line, extra=SAID)


def stopped_name(service: Service) -> str:
    """How `Stopped:` names a service: an optional `stopped_as()` method says more (the
    guests a supervisor stopped with it, which serve their services outside this process)."""
    own = getattr(service, "stopped_as", None)
    return str(own()) if own is not None else service.name


def stopped_names(started: list[Service], cut_short: list[Service]) -> list[str]:
    """What `Stopped:` names: each service started, then each whose start was cut short
    (Ctrl-C while the supervisor built its second image) if it says it stopped something
    it had begun (the first guest, already up) rather than only its own name."""
    return [
        *(stopped_name(s) for s in started),
        *(name for s in cut_short if (name := stopped_name(s)) != s.name),
    ]


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
    services: list[Service],
    admin_at: tuple[str, int],
    say: Say,
    dashboard: Dashboard | None = None,
    *,
    lan: str | None = None,
    on_lan: bool = True,
) -> int:
    """Start every service and the admin endpoint; run until SIGINT or SIGTERM, or until
    the organiser quits the dashboard. `lan` is the address attendees reach (default: the
    LAN-facing interface's). `on_lan`: the process faces the LAN, so it advertises its admin
    endpoint by zeroconf (when not on loopback) and says what attendees use; a VM guest
    behind qemu's user network does neither: its addresses are not the LAN's."""
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
    hangups = _reload_on_hangup(started)  # before anything starts, as the stop
    cut_short: list[Service] = []  # a start stopped or failed midway: it stopped its part
    runner: web.AppRunner | None = None
    advert: LanAdvert | None = None
    note: Path | None = None
    try:
        if not await _start_unless_stopped(services, started, cut_short, registry, say, stop):
            say("Stopping...")
            return 0
        # in a thread, so the services answer meanwhile: on a VM guest's emulated CPU the
        # import takes about a second, which would otherwise come before every first answer
        await asyncio.to_thread(importlib.import_module, ADMIN_CODE)
        from retreatkit.admin import app as admin

        sources = {s.name: s.status for s in services}
        routes = [route for s in services for route in admin_routes(s)]
        app = admin.make_app(
            registry, sources, routes, token=token, bound_host=admin_at[0], ring=ring,
            process=process,
        )  # fmt: skip
        runner, (ahost, aport) = await admin.start(app, *admin_at)
        if on_lan:
            from retreatkit.admin.advertise import announcement

            advert = announcement(names)
            advert.start(admin_at[0], aport)
            lan = lan or lan_address().address
            for service in services:  # a guest's service is one attendees use all the same
                for name, at in served_elsewhere(service).items():
                    bound.setdefault(name, at)
            named = {"relay", "mirror", "nameserver"} <= set(names) | set(bound)
            public = {s.name: getattr(s, "public_url", "") for s in services}
            process.attendees = startup.attendee_lines(bound, lan, named, public)
            process.addresses = startup.attendee_addresses(bound, lan, public)
        # what start-up made lives as long as the process: keep the cyclic GC from
        # scanning it again and again (it was a tenth of a nameserver's CPU under load)
        gc.freeze()
        local = "127.0.0.1" if ahost in ("0.0.0.0", "::") else ahost
        url = f"http://{host_port_text(local, aport)}"
        if on_lan:  # a guest's own folder is not the organiser's
            note = noted.note(url)  # a `retreatkit tui` finds it (admin/noted.py)
        # the last line of start-up: whoever waits for it finds nothing left half done
        # (no import or address lookup with a file still open, the note written)
        say(f"Admin on http://{host_port_text(ahost, aport)}/status")
        if process.attendees:
            say("Attendees use:")
            for line in process.attendees:
                say(f"  {line}")
        if dashboard is not None:
            await dashboard(url, token, stop)
        else:
            await stop.wait()
        say("Stopping...")
    finally:
        hangups.close()  # a reload under way ends with the services; none starts now
        noted.forget(note)
        if advert is not None:
            await advert.stop()
        for service in reversed(started):
            try:
                await service.stop()
            except Exception:  # one service failing to stop must not keep the others up
                log.exception("stopping %s failed", service.name)
        if runner is not None:
            await runner.cleanup()
        logging.getLogger("retreatkit").removeHandler(ring)
        stopped = stopped_names(started, cut_short)
        if stopped:
            say(f"Stopped: {', '.join(stopped)}")
        elif stop.is_set():  # asked while the first was starting (building an image)
            say("Stopped before any service had started")
    return 0


async def _start_unless_stopped(
    services: list[Service],
    started: list[Service],
    cut_short: list[Service],
    registry: CollectorRegistry,
    say: Say,
    stop: asyncio.Event,
) -> bool:
    """Start each service in turn, noting it in `started` (or in `cut_short`, the one whose
    start a stop or an error ended midway); False if a stop came first.
    Ctrl-C while `up` built its images waited for every guest to boot: the start under
    way is now cancelled, and stops what it had begun."""

    async def start_all() -> None:
        for service in services:
            try:
                await service.start(registry, say)
            except BaseException:
                cut_short.append(service)
                raise
            started.append(service)

    starting = asyncio.ensure_future(start_all())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # serve() itself cancelled (a guest asked to stop by its host)
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        raise
    finally:
        stopping.cancel()
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        return False
    starting.result()  # its error, if it failed
    return True


class Hangups:
    """SIGHUPs as reloads, one at a time: a SIGHUP during a reload asks for one more after
    it, however many come (the organiser edited again), never a second reload beside it,
    where a guest's copy of a list was being written twice at once."""

    def __init__(self, reload: Callable[[], Awaitable[None]]) -> None:
        self.reload = reload
        self.tasks: set[asyncio.Task[None]] = set()  # the reload under way, to cancel
        self.again = False
        self.closed = False

    def close(self) -> None:
        self.closed = True
        for task in list(self.tasks):
            task.cancel()

    def __call__(self) -> None:
        if self.closed:  # the services are stopping: nothing to reload, nor to die of
            return
        if self.tasks:
            self.again = True
            return
        task = asyncio.ensure_future(self.reload())
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self.again and not task.cancelled():
            self.again = False
            self()


def _reload_on_hangup(started: list[Service]) -> Hangups:
    """SIGHUP reloads the started services (hang_up), until `close`d as they stop."""
    hangups = Hangups(lambda: hang_up(list(started)))
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hangups)
    return hangups


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
