"""What every screen shares: a title line, a result line, and a refresh while shown."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer

from retreatkit.tui.widgets import AskScreen, ConfirmScreen, Lines

if TYPE_CHECKING:
    from retreatkit.tui.app import Dashboard

# the screens' keys: named in full on the overview; elsewhere one item, "123456 Screens"
# (each key's name its tooltip), so that a screen's own keys fit an 80-column footer
SCREENS = (
    ("1", "overview", "Overview"), ("2", "relay", "Relay"), ("3", "mirror", "Mirror"),
    ("4", "nameserver", "DNS"), ("5", "logs", "Logs"), ("6", "guests", "Guests"),
)  # fmt: skip
SCREEN_KEYS = Binding.Group("Screens", compact=True)


class Panel(Screen[None]):
    """A screen that redraws from the app's state and may fetch its own lists."""

    TITLE = ""
    HELP = ""

    def __init__(self) -> None:
        super().__init__()
        self.loaded = asyncio.Event()  # set when a refresh has been drawn and none is pending
        self._loading = False
        self._again = False

    @property
    def dash(self) -> Dashboard:
        from retreatkit.tui.app import Dashboard

        assert isinstance(self.app, Dashboard)
        return self.app

    def compose(self) -> ComposeResult:
        yield Lines(id="title")
        with VerticalScroll(id="body"):
            yield from self.body()
        yield Lines(id="result")
        yield Footer(compact=True, show_command_palette=False)  # ctrl+p still opens it

    def body(self) -> ComposeResult:
        yield from ()

    def on_screen_resume(self) -> None:
        self.reload()

    def reload(self) -> None:
        """Fetch this screen's lists (if any) and redraw, unless a fetch is under way."""
        if self._loading:
            self._again = True  # asked again while fetching: go once more, with the news
            return
        self._loading = True
        # the method, not a coroutine made now: a worker cancelled before it starts (the
        # dashboard quitting as a poll redraws) would leave that coroutine never awaited.
        # (textual's WorkType makes mypy take an async method's result for Never)
        self.run_worker(self._reload, group="load", exit_on_error=False)  # type: ignore[arg-type]

    async def _reload(self) -> None:
        try:
            await self.load()
            self.draw()
            self.show_title()
        finally:
            self._loading = False
            if self._again:
                self._again = False
                self.reload()
            else:
                self.loaded.set()

    def show_title(self) -> None:
        title = self.query_one("#title", Lines)
        title.show([self.dash.title_line(self.TITLE, title.content_size.width)])

    def on_resize(self) -> None:
        self.call_after_refresh(self.show_title)  # the endpoints that fit, once laid out

    async def load(self) -> None:
        """Fetch what only this screen needs (lists); the status is the app's."""

    def draw(self) -> None:
        """Redraw from the app's state and what `load` fetched."""

    def say(self, *lines: str) -> None:
        """The screen's result: what an action did or why it failed, a line each place."""
        self.query_one("#result", Lines).show(lines)

    async def ask(
        self, question: str, doing: str, default: str | None = None, example: str = ""
    ) -> str | None:
        """The organiser's answer, or None when they cancelled `doing` (and it says so)."""
        answer = await self.app.push_screen_wait(AskScreen(question, default, example))
        if answer is None:
            self.say(f"{doing} cancelled")
        return answer

    async def sure(self, question: str, doing: str) -> bool:
        """Whether the organiser goes ahead with `doing` (it says so when they do not)."""
        yes: bool = await self.app.push_screen_wait(ConfirmScreen(question))
        if not yes:
            self.say(f"{doing} cancelled")
        return yes
