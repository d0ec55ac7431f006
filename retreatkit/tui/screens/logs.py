"""Logs: every service's lines live, filtered by service, level and text; a service's
log level changed from here (louder to chase a problem, quieter after)."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Input

from retreatkit.tui import answers
from retreatkit.tui.logbuffer import LEVELS, LogFilter
from retreatkit.tui.logview import LogView
from retreatkit.tui.screens.base import Panel
from retreatkit.tui.widgets import Lines

SERVICES = (None, "relay", "mirror", "nameserver", "vm", "process")
HOSTED = ("relay", "mirror", "nameserver", "vm")


class LogsScreen(Panel):
    TITLE = "Logs"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "next_service", "Service"),
        Binding("v", "next_level", "Level", tooltip="The lowest level shown"),
        Binding("L", "set_level", "Set level", tooltip="Set a service's log level"),
        Binding("slash", "filter", "Filter"),
        Binding("escape", "unfocus", "Leave filter", show=False),
        Binding("e", "follow", "Newest"),
    ]

    def body(self) -> ComposeResult:
        yield Lines(id="filters")
        yield Input(placeholder="filter: text in the line", id="filter")

    def compose(self) -> ComposeResult:
        yield from super().compose()
        # the log takes the rest of the screen; it scrolls itself (arrows, page keys,
        # home, end, the wheel)
        yield LogView(self.dash.logs, id="log")

    def on_mount(self) -> None:
        self.set_interval(0.1, self.tick)  # at most 10 redraws a second, however fast lines come

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        # the arrows, page keys, Home and End scroll the log at once (unfocused, they did
        # nothing until Tab had been pressed twice); `/` moves to the filter
        self.query_one(LogView).focus()

    def tick(self) -> None:
        self.query_one(LogView).sync()
        self.show_filters()

    def draw(self) -> None:
        self.tick()

    def show_filters(self) -> None:
        f = self.dash.logs.filter
        buffer = self.dash.logs
        line = (
            f"service {f.service or 'all'} (s) · level {f.level} and above (v) · "
            f"{len(buffer.shown):,} of {len(buffer.lines):,} lines kept · "
            f"{buffer.received:,} received · {self.query_one(LogView).position()}"
        )
        if buffer.dropped:
            line += f" · {buffer.dropped:,} skipped (too fast to show)"
        problem = self.dash.log_problem
        self.query_one("#filters", Lines).show([line, *([problem] if problem else [])])

    def _refilter(self, **change: object) -> None:
        f = self.dash.logs.filter
        values = {"service": f.service, "level": f.level, "text": f.text, **change}
        self.dash.logs.set_filter(LogFilter(**values))  # type: ignore[arg-type]
        self.query_one(LogView).filtered()
        self.tick()

    def action_next_service(self) -> None:
        current = SERVICES.index(self.dash.logs.filter.service)
        self._refilter(service=SERVICES[(current + 1) % len(SERVICES)])

    def action_next_level(self) -> None:
        current = LEVELS.index(self.dash.logs.filter.level)
        self._refilter(level=LEVELS[(current + 1) % len(LEVELS)])

    def on_input_changed(self, event: Input.Changed) -> None:
        self._refilter(text=event.value)

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_unfocus(self) -> None:
        self.query_one(LogView).focus()

    def action_follow(self) -> None:
        self.query_one(LogView).action_newest()

    def action_set_level(self) -> None:
        self.run_worker(self._set_level(), group="action")

    async def _set_level(self) -> None:
        service = self.dash.logs.filter.service
        logger = "retreatkit" if service in (None, "process") else f"retreatkit.{service}"
        text = await self.ask(
            f"Log level for {logger}: debug, info, warning or error",
            "setting the log level",
            "debug",
        )
        if text is None:
            return
        if text.upper() not in LEVELS:
            self.say(f"not a level: {text} (debug, info, warning, error, critical)")
            return
        results = await self.dash.act_all(
            service if service in HOSTED else None,
            "PUT",
            "/loglevel",
            {"level": text.lower(), "logger": logger},
        )
        failed = [problem for _, _, problem in results if problem]
        done = [(name, answer) for name, answer, problem in results if not problem]
        line = answers.log_level(logger, text, done[0][1]) if done else ""
        line += f" on {', '.join(name for name, _ in done)}" if line and len(results) > 1 else ""
        self.say(*failed, *([line] if line else []))
