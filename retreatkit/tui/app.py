"""The dashboard app: polls each endpoint, follows its logs, and hands screens the state."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType

from retreatkit.tui.logbuffer import LogBuffer
from retreatkit.tui.screens.base import Panel
from retreatkit.tui.screens.logs import LogsScreen
from retreatkit.tui.screens.mirror import MirrorScreen
from retreatkit.tui.screens.nameserver import NameserverScreen
from retreatkit.tui.screens.overview import Overview
from retreatkit.tui.screens.relay import RelayScreen
from retreatkit.tui.sources import AdminClient, Endpoint, SourceError
from retreatkit.tui.state import DashboardState

RETRY_LOGS = 3.0  # seconds before following a broken log stream again


class Dashboard(App[int]):
    CSS_PATH = "dashboard.tcss"
    TITLE = "retreatkit"
    MODES: ClassVar[dict[str, Any]] = {
        "overview": Overview,
        "relay": RelayScreen,
        "mirror": MirrorScreen,
        "nameserver": NameserverScreen,
        "logs": LogsScreen,
    }
    DEFAULT_MODE = "overview"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "show('overview')", "Overview"),
        Binding("2", "show('relay')", "Relay"),
        Binding("3", "show('mirror')", "Mirror"),
        Binding("4", "show('nameserver')", "DNS"),
        Binding("5", "show('logs')", "Logs"),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(
        self,
        endpoints: list[Endpoint],
        *,
        leak_window: float = 600.0,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        follow_logs: bool = True,
        freeze_gc: bool = False,
    ) -> None:
        super().__init__()
        self.clients = {e.name: AdminClient(e) for e in endpoints}
        self.state = DashboardState(list(self.clients), leak_window)
        self.logs = LogBuffer()
        self.log_problem: str | None = None
        self.interval = interval
        self.clock = clock
        self.follow_logs = follow_logs
        self.freeze_gc = freeze_gc
        self.polled = asyncio.Event()  # every endpoint answered or failed at least once
        self._seen: set[str] = set()

    def on_mount(self) -> None:
        if self.freeze_gc:
            # what is alive once the first screen is drawn (modules, classes, the app, its
            # widgets) lives as long as the process: moved out of the collector's sight, a
            # full collection walks only what came after, a few ms instead of ~50 under a
            # log flood (the rendering makes cyclic garbage, so full collections happen)
            self.call_after_refresh(gc.freeze)
        for name in self.clients:
            self.run_worker(self._poll(name), group="poll", exit_on_error=False)
            if self.follow_logs:
                self.run_worker(self._follow(name), group="logs", exit_on_error=False)

    async def on_unmount(self) -> None:
        for client in self.clients.values():
            await client.close()

    async def _poll(self, name: str) -> None:
        client = self.clients[name]
        while True:
            try:
                self.state.record(name, self.clock(), status=await client.status())
            except SourceError as exc:
                self.state.record(name, self.clock(), error=str(exc))
            self._seen.add(name)
            if len(self._seen) == len(self.clients):
                self.polled.set()
            if isinstance(self.screen, Panel):
                self.screen.reload()
            await asyncio.sleep(self.interval)  # the polling period, not a synchronisation

    async def _follow(self, name: str) -> None:
        client = self.clients[name]
        where = name if len(self.clients) > 1 else ""
        after = 0
        while True:
            try:
                async for batch in client.logs(after):
                    self.logs.extend(batch, where)
                    after = max(
                        after, *(r.get("seq", 0) for r in batch if isinstance(r.get("seq"), int))
                    )
                    self.log_problem = None
            except SourceError as exc:
                self.log_problem = str(exc)
            await asyncio.sleep(RETRY_LOGS)

    def title_line(self, screen: str) -> str:
        alarms = len(self.state.alarms(self.clock()))
        names = ", ".join(self.clients)
        return f"retreatkit · {screen} · {names} · " + (
            f"{alarms} alarms" if alarms else "no alarms"
        )

    async def action_show(self, mode: str) -> None:
        await self.switch_mode(mode)

    async def action_quit(self) -> None:
        self.exit(0)

    async def fetch(self, service: str, path: str) -> tuple[Any, str | None]:
        """A list from the endpoint hosting `service`: (the JSON, None) or (None, a line)."""
        e = self.state.hosting(service)
        if e is None:
            return None, f"no endpoint hosts a {service}"
        try:
            return await self.clients[e.name].get_json(path), None
        except SourceError as exc:
            return None, str(exc)

    async def act(
        self, service: str | None, method: str, path: str, body: Any
    ) -> tuple[Any, str | None]:
        """An action at the endpoint hosting `service` (every endpoint for None)."""
        if service is None:
            names = list(self.clients)
        else:
            e = self.state.hosting(service)
            if e is None:
                return None, f"no endpoint hosts a {service}"
            names = [e.name]
        answer: Any = None
        for name in names:
            try:
                answer = await self.clients[name].request(method, path, body)
            except SourceError as exc:
                return None, str(exc)
        return answer, None
