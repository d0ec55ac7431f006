"""What the relay, mirror and DNS screens share: a section for each endpoint hosting the
service (a relay in-process and one in a guest, two hosts), stacked, each headed with its
endpoint when there are several, so none is hidden behind another. Each section fetches
its endpoint's lists on its own and is drawn once they came: an endpoint that holds its
lists for as long as its timeout holds back no other."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import TYPE_CHECKING, ClassVar

from textual.app import ComposeResult
from textual.containers import Vertical

from retreatkit.tui.screens.base import Panel
from retreatkit.tui.state import EndpointState
from retreatkit.tui.widgets import Lines

if TYPE_CHECKING:
    from retreatkit.tui.app import Dashboard


class Section(Vertical):
    """One endpoint's part of a service screen: `load` fetches its lists, `draw` shows
    them with its status."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(classes="section")
        self.endpoint = endpoint
        self.fetched = False  # its lists were read (or failed) once: it can be drawn
        self.loaded = asyncio.Event()  # set when its lists were read and none is pending
        self._loading = False
        self._again = False

    def compose(self) -> ComposeResult:
        yield Lines(classes="heading endpoint")
        yield from self.body()

    def body(self) -> ComposeResult:
        yield from ()

    def label(self, title: str, alone: bool) -> None:
        heading = self.query_one(".endpoint", Lines)
        heading.display = not alone
        heading.show([f"{title} on {self.endpoint}"])

    def reload(self, dash: Dashboard) -> None:
        """Fetch this endpoint's lists, then redraw the screen, unless a fetch is under
        way (as Panel.reload: once more after it, with the news)."""
        self.loaded.clear()
        if self._loading:
            self._again = True
            return
        self._loading = True
        fetch = partial(self._reload, dash)
        self.run_worker(fetch, group="lists", exit_on_error=False)  # type: ignore[arg-type]

    async def _reload(self, dash: Dashboard) -> None:
        try:
            await self.load(dash)
            self.fetched = True
            if self.is_attached and isinstance(self.screen, ServicePanel):
                self.screen.draw()
        except asyncio.CancelledError:  # the screen or the dashboard goes: nothing more
            self._again = False
            raise
        finally:
            self._loading = False
            if self._again:
                self._again = False
                self.reload(dash)
            else:
                self.loaded.set()

    async def load(self, dash: Dashboard) -> None:
        """Fetch this endpoint's lists (if the screen has any)."""

    def draw(self, dash: Dashboard, e: EndpointState) -> None:
        """Redraw from the endpoint's status and what `load` fetched."""


class ServicePanel(Panel):
    SERVICE: ClassVar[str] = ""
    SECTION: ClassVar[type[Section]] = Section

    def body(self) -> ComposeResult:
        yield from self.above()
        yield Lines(id="nobody")
        yield Vertical(id="sections")

    def above(self) -> ComposeResult:
        """What the screen shows once, above the sections."""
        yield from ()

    def sections(self) -> list[Section]:
        return list(self.query_one("#sections").query_children(Section))

    async def load(self) -> None:
        hosting = [e.name for e in self.dash.state.hosting(self.SERVICE)]
        current = {s.endpoint: s for s in self.sections()}
        for name, section in current.items():
            if name not in hosting:
                await section.remove()
        new = [self.SECTION(name) for name in hosting if name not in current]
        if new:
            await self.query_one("#sections").mount_all(new)
        for section in self.sections():
            section.reload(self.dash)  # each drawn when its own lists came

    def draw(self) -> None:
        hosting = {e.name: e for e in self.dash.state.hosting(self.SERVICE)}
        nobody = self.query_one("#nobody", Lines)
        nobody.display = not hosting
        nobody.show([f"no endpoint hosts a {self.SERVICE}"])
        for section in self.sections():
            e = hosting.get(section.endpoint)
            if e is not None:
                section.label(self.TITLE, len(hosting) == 1)
                if section.fetched:  # before, its tables would say "none" of lists unread
                    section.draw(self.dash, e)
