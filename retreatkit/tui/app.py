"""The dashboard app: polls each endpoint, follows its logs, and hands screens the state.

Endpoints are those given at start, plus each VM guest's own admin endpoint, found in its
supervisor's `GET /vm/guests` and watched with the guest's own token, which the supervisor
gives (`GET /vm/guests/NAME/token`): never with the supervisor's, which a guest taken over
would keep. Only an endpoint the organiser named supervises guests: a guest (or a
neighbour's announcement) that says it supervises would otherwise choose where a token
goes and which rows are shown.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any, ClassVar
from urllib.parse import quote

from rich.cells import cell_len
from textual.app import App
from textual.binding import Binding, BindingType
from textual.driver import Driver
from textual.drivers.linux_driver import LinuxDriver
from textual.worker import Worker

from retreatkit.tui import driver, guests
from retreatkit.tui.fmt import get, plural
from retreatkit.tui.logbuffer import LogBuffer
from retreatkit.tui.screens.base import SCREEN_KEYS, SCREENS, Panel
from retreatkit.tui.screens.guests import GuestsScreen
from retreatkit.tui.screens.logs import LogsScreen
from retreatkit.tui.screens.mirror import MirrorScreen
from retreatkit.tui.screens.nameserver import NameserverScreen
from retreatkit.tui.screens.overview import Overview
from retreatkit.tui.screens.relay import RelayScreen
from retreatkit.tui.sources import FOUND, AdminClient, Endpoint, SourceError, endpoint_url
from retreatkit.tui.state import DashboardState, EndpointState
from retreatkit.tui.widgets import ConfirmScreen

RETRY_LOGS = 3.0  # seconds before following a broken log stream again
# the return code of a dashboard closed by SIGTERM: apart from the organiser's quit (0)
TERMINATED = 128 + signal.SIGTERM
MAX_GUESTS = 64  # guest endpoints watched at most: a supervisor's list cannot grow this
MAX_LOCAL = 64  # endpoints noted on this machine watched at most


class Dashboard(App[int]):
    CSS_PATH = "dashboard.tcss"
    TITLE = "retreatkit"
    MODES: ClassVar[dict[str, Any]] = {
        "overview": Overview,
        "relay": RelayScreen,
        "mirror": MirrorScreen,
        "nameserver": NameserverScreen,
        "logs": LogsScreen,
        "guests": GuestsScreen,
    }
    DEFAULT_MODE = "overview"
    # a screen under 120 columns stacks what sits side by side on a wide one (textual
    # declares this a ClassVar already; mypy refuses the annotation again)
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]  # noqa: RUF012
    BINDINGS: ClassVar[list[BindingType]] = [
        *(Binding(key, f"show('{mode}')", name, group=SCREEN_KEYS) for key, mode, name in SCREENS),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "stop", "Quit", show=False, priority=True),
    ]

    def __init__(
        self,
        endpoints: list[Endpoint],
        *,
        leak_window: float = 600.0,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        follow_logs: bool = True,
        freeze_gc: bool = False,
        stop_on_sigterm: bool = False,
        quit_stops: bool = False,
        local: Callable[[], list[str]] | None = None,
        local_token: str | None = None,
    ) -> None:
        super().__init__()
        self.clients = {e.name: AdminClient(e) for e in endpoints}
        self.state = DashboardState(list(self.clients), leak_window)
        for e in endpoints:
            self.state.endpoints[e.name].url = e.url
            self.state.endpoints[e.name].named = not e.found
        self.logs = LogBuffer(wall=wall)
        self.log_problem: str | None = None
        self.interval = interval
        self.clock = clock  # for rates and trends
        self.wall = wall  # what today is and how long ago, for the times shown
        self.follow_logs = follow_logs
        self.freeze_gc = freeze_gc
        self.stop_on_sigterm = stop_on_sigterm
        self.quit_stops = quit_stops  # `retreatkit up`: quitting stops what the LAN uses
        self.retry_logs = RETRY_LOGS
        # the admin endpoints running on this machine (admin/noted.py), read at each poll:
        # one started after the dashboard (`retreatkit vm start` beside `up`) is watched
        # too, as a `retreatkit tui` started then would; named, so its guests are watched
        self.local = local
        self.local_token = local_token
        self.polled = asyncio.Event()  # every endpoint answered or failed at least once
        self._seen: set[str] = set()
        self._pollers: dict[str, list[Worker[None]]] = {}  # each endpoint's poll and logs

    def get_driver_class(self) -> type[Driver]:
        found = super().get_driver_class()
        return driver.Driver if found is LinuxDriver else found  # (the web's stays its own)

    def on_mount(self) -> None:
        if self.freeze_gc:
            # what is alive once the first screen is drawn (modules, classes, the app, its
            # widgets) lives as long as the process: moved out of the collector's sight, a
            # full collection walks only what came after, a few ms instead of ~50 under a
            # log flood (the rendering makes cyclic garbage, so full collections happen)
            self.call_after_refresh(gc.freeze)
        if self.stop_on_sigterm:  # `retreatkit up` closes its dashboard so: terminal restored
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGTERM, partial(self.exit, return_code=TERMINATED)
            )
        for name in self.clients:
            self._start(name)
        if self.local is not None:
            self.run_worker(self._watch_local, group="local", exit_on_error=False)  # type: ignore[arg-type]

    async def _watch_local(self) -> None:
        while True:
            self.add_local()
            await asyncio.sleep(self.interval)  # the polling period, not a synchronisation

    def add_local(self) -> None:
        """Watch each endpoint noted on this machine that is not watched yet."""
        assert self.local is not None
        watched = {c.endpoint.url for c in self.clients.values()}
        for text in self.local()[:MAX_LOCAL]:
            try:
                url = endpoint_url(text)
            except ValueError:
                continue
            endpoint = Endpoint(url, self.local_token)
            if url in watched or endpoint.name in self.clients:
                continue
            watched.add(url)
            self.clients[endpoint.name] = AdminClient(endpoint)
            self.state.add(endpoint.name, url)
            self.state.endpoints[endpoint.name].named = True
            self.polled.clear()  # set again once this one has answered too
            self._start(endpoint.name)

    def _start(self, name: str) -> None:
        # coroutines made when the workers start, not now (see Panel.reload)
        poll, follow = partial(self._poll, name), partial(self._follow, name)
        workers: list[Worker[None]] = [self.run_worker(poll, group="poll", exit_on_error=False)]
        if self.follow_logs:
            workers.append(self.run_worker(follow, group="logs", exit_on_error=False))
        self._pollers[name] = workers

    async def _unwatch(self, name: str) -> None:
        """Stop polling and following `name`, and forget it: its rows, its alarms."""
        for worker in self._pollers.pop(name, []):
            worker.cancel()
        client = self.clients.pop(name, None)
        self.state.forget(name)
        self._seen.discard(name)
        if self._seen >= set(self.clients):
            self.polled.set()
        if client is not None:
            await client.close()

    async def record_guests(self, supervisor: str, found: list[guests.Guest]) -> None:
        """A supervisor's guests, as listed now: a guest removed or stopped is watched no
        longer (started again, it is watched again)."""
        self.state.record_guests(supervisor, found)
        for name in self.state.not_watched_now(supervisor):
            await self._unwatch(name)

    async def on_unmount(self) -> None:
        for client in self.clients.values():
            await client.close()

    async def _poll(self, name: str) -> None:
        while True:
            await self.poll(name)
            await asyncio.sleep(self.interval)  # the polling period, not a synchronisation

    async def poll(self, name: str) -> None:
        """Read one endpoint's status (and a supervisor's guests) once, and redraw. Whatever
        fails is one line for that endpoint: its polling, and every other's, goes on."""
        client = self.clients.get(name)
        if client is None:  # watched no longer (a guest removed or stopped)
            return
        try:
            status = await client.status()
            if name not in self.state.endpoints:  # forgotten while it was read
                return
            self.state.record(name, self.clock(), status=status)
        except SourceError as exc:
            if name not in self.state.endpoints:
                return
            self.state.record(name, self.clock(), error=str(exc))
        except Exception as exc:  # a peer's answer the dashboard failed on
            if name not in self.state.endpoints:
                return
            self.state.record(name, self.clock(), error=failed(name, "status", exc))
        e = self.state.endpoints[name]
        if e.error is None and "vm" in e.services():
            if e.guest_of is None:
                await self._read_guests(name)
            else:  # its list could name its host's endpoint, or any port of this machine
                self.state.record_guests(
                    name,
                    None,
                    f"{name}: a guest's own list of guests is not read (only an endpoint"
                    " named with --connect supervises guests)",
                )
        self._seen.add(name)
        if self._seen >= set(self.clients):
            self.polled.set()
        if isinstance(self.screen, Panel):
            self.screen.reload()

    async def _read_guests(self, name: str) -> None:
        """A supervisor's guests; each guest's admin endpoint is watched from now on, when
        the organiser named the supervisor (one found on the LAN only lists them)."""
        try:
            found = guests.parse(await self.clients[name].get_json("/vm/guests"))
            for guest in found if self.state.endpoints[name].named else ():
                if guest.state != "stopped":  # nothing there to read, nor to act on
                    await self._adopt(name, guest)
        except SourceError as exc:
            self.state.record_guests(name, None, str(exc))
            return
        except ValueError as exc:
            self.state.record_guests(name, None, f"{name}: {exc}")
            return
        except Exception as exc:  # a peer's answer the dashboard failed on
            self.state.record_guests(name, None, failed(name, "list of guests", exc))
            return
        await self.record_guests(name, found)

    async def _adopt(self, supervisor: str, guest: guests.Guest) -> None:
        url = self._to_adopt(supervisor, guest)
        if url is None:
            return
        parent = self.clients[supervisor]
        token = None
        if parent.endpoint.token:
            # the guest's own token, which its supervisor gives for the asking with its
            # own; a guest is never sent the supervisor's (docs/admin-api.md)
            path = f"/vm/guests/{quote(guest.name, safe='')}/token"
            try:
                token = guests.token_of(await parent.get_json(path))
            except (SourceError, ValueError) as exc:
                self.state.unwatched[(supervisor, guest.name)] = f"not watched: {exc}"
                return
        if self._to_adopt(supervisor, guest) != url:  # adopted while the token came
            return
        self.state.unwatched.pop((supervisor, guest.name), None)
        # found on the LAN as its supervisor was
        endpoint = replace(parent.endpoint, url=url, label=f"guest {guest.name}", token=token)
        if endpoint.name in self.clients:
            where = supervisor.removesuffix(f" {FOUND}")  # said once, at the end
            endpoint = replace(endpoint, label=f"guest {guest.name}@{where}")
        name = endpoint.name
        self.clients[name] = AdminClient(endpoint)
        self.state.add(name, url, (supervisor, guest.name))
        self.polled.clear()  # set again once this one has answered too
        self._start(name)

    def _to_adopt(self, supervisor: str, guest: guests.Guest) -> str | None:
        """The URL to watch `supervisor`'s guest at, if it is not watched yet."""
        if self.state.watching(supervisor, guest.name) is not None:
            return None
        url, _why = guests.watch_url(self.clients[supervisor].endpoint.url, guest.admin)
        if url is None:
            return None
        for e in self.state.endpoints.values():
            if e.url == url:  # watched already: never adopted a second time
                if linkable(e, supervisor):
                    e.guest_of = (supervisor, guest.name)  # given with --connect: whose it is
                return None
        if sum(1 for e in self.state.endpoints.values() if e.guest_of) >= MAX_GUESTS:
            return None
        return url

    async def _follow(self, name: str) -> None:
        client = self.clients[name]
        after, started = 0, None
        while True:
            try:
                # a process that started again numbers its records from 1 again
                began = get(await client.status(), "process", "started_at")
                if began != started:
                    after, started = 0, began
                async for batch in client.logs(after):
                    # past this batch first: one the dashboard fails on is not asked again
                    seqs = [r["seq"] for r in batch if type(r.get("seq")) is int]
                    after = max(after, *seqs) if seqs else after
                    self.logs.extend(batch, name if len(self.clients) > 1 else "")
                    self.log_problem = None
            except SourceError as exc:
                self.log_problem = str(exc)
            except Exception as exc:  # a peer's records the dashboard failed on
                self.log_problem = failed(name, "log records", exc)
            await asyncio.sleep(self.retry_logs)

    def title_line(self, screen: str, width: int = 0) -> str:
        """The screen, the alarms, the endpoints: as many endpoints as fit in `width`
        cells (0: all), each whole, then how many more (a cut address names none; the
        overview's Processes table lists them all)."""
        alarms = len(self.state.alarms(self.clock()))
        said = {0: "no alarms", 1: "1 alarm"}.get(alarms, f"{alarms} alarms")
        head, names = f"retreatkit · {screen} · {said}", list(self.clients)
        for shown in range(len(names), 0, -1):
            more = len(names) - shown
            line = f"{head} · {', '.join(names[:shown])}" + (f" and {more} more" if more else "")
            if not width or cell_len(line) <= width:
                return line
        return f"{head} · {plural(len(names), 'endpoint', 'endpoints')}"

    async def action_show(self, mode: str) -> None:
        await self.switch_mode(mode)

    async def action_quit(self) -> None:
        """Under `retreatkit up`, q stops every service: asked first, so a stray key never
        takes DNS and the mirror from the whole LAN. Ctrl+C goes at once."""
        if not self.quit_stops:
            self.exit(0)
        elif not isinstance(self.screen, ConfirmScreen):
            self.push_screen(ConfirmScreen(self.quit_question()), self._quit_if)

    def action_stop(self) -> None:
        self.exit(0)

    def quit_question(self) -> str:
        named = sorted({s for e in self.state.endpoints.values() for s in e.services()})
        what = ", ".join(named) if named else "the services"
        return f"Quit and stop {what} for everyone on the LAN?"

    def _quit_if(self, yes: bool | None) -> None:
        if yes:
            self.exit(0)

    async def fetch(self, endpoint: str, path: str) -> tuple[Any, str | None]:
        """A list from one endpoint: (the JSON, None) or (None, a line)."""
        try:
            return await self.clients[endpoint].get_json(path), None
        except SourceError as exc:
            return None, str(exc)

    async def act(
        self,
        endpoint: str,
        method: str,
        path: str,
        body: Any = None,
        timeout: float | None = None,
    ) -> tuple[Any, str | None]:
        """An action at one endpoint: (its answer, None) or (None, a line)."""
        try:
            return await self.clients[endpoint].request(method, path, body, timeout), None
        except SourceError as exc:
            return None, str(exc)

    async def act_all(
        self, service: str | None, method: str, path: str, body: Any = None
    ) -> list[tuple[str, Any, str | None]]:
        """The same action at every endpoint hosting `service` (every endpoint for None),
        at once: (endpoint, answer, problem) each."""
        if service is None:
            names = list(self.clients)
        else:
            names = [e.name for e in self.state.hosting(service)]
        answers = await asyncio.gather(*(self.act(n, method, path, body) for n in names))
        return [(n, answer, problem) for n, (answer, problem) in zip(names, answers, strict=True)]


def linkable(e: EndpointState, supervisor: str) -> bool:
    """Whether `e`, watched already (named too, or found on the LAN), may be shown as
    `supervisor`'s guest (its rows then follow the guest's state): not the supervisor
    itself, nor another's guest, nor a supervisor (once its status says so), whose rows a
    list must never take over."""
    return (
        e.name != supervisor
        and e.guest_of is None
        and e.status is not None
        and "vm" not in e.services()
    )


def failed(name: str, what: str, exc: Exception) -> str:
    """One line for an answer the dashboard itself failed on; the next poll asks again."""
    said = str(exc).strip().splitlines()
    why = f"{type(exc).__name__}: {said[0][:200]}" if said else type(exc).__name__
    return f"{name}: the dashboard failed on its {what} ({why}); it asks again"
