"""Mirror: hit ratio, bytes from cache against bytes fetched, the store and its disk,
upstreams, top packages, downloads in progress and recent fetches."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label

from retreatkit.tui import views
from retreatkit.tui.screens.base import Panel
from retreatkit.tui.widgets import Lines, Table

FETCH = ("Ecosystem", "Package", "File", "Bytes", "Size", "Started", "Ended")


class MirrorScreen(Panel):
    TITLE = "Mirror"

    def __init__(self) -> None:
        super().__init__()
        self.fetches: Any = None
        self.problem: str | None = None

    def body(self) -> ComposeResult:
        yield Lines(id="summary")
        with Horizontal(classes="pair"):
            with Vertical():
                yield Label("Upstreams", classes="heading")
                yield Table("Ecosystem", "URL", "State", "Last error", id="upstreams")
            with Vertical():
                yield Label("Top packages", classes="heading")
                yield Table("Package", "Requests", id="top")
        yield Label("Downloads in progress", classes="heading")
        yield Table(*FETCH, id="in_progress")
        yield Label("Recent fetches", classes="heading")
        yield Table(*FETCH, id="recent")

    async def load(self) -> None:
        self.fetches, self.problem = await self.fetch("mirror", "/mirror/fetches")

    def draw(self) -> None:
        e = self.dash.state.hosting("mirror")
        summary = views.mirror_summary(e) if e else ["no endpoint hosts a mirror"]
        if self.problem:
            summary.append(f"fetches not reported: {self.problem}")
        self.query_one("#summary", Lines).show(summary)
        section = e.section("mirror") if e else {}
        self.query_one("#upstreams", Table).set_rows(views.upstream_rows(e) if e else [])
        self.query_one("#top", Table).set_rows(views.top_rows(section.get("top_packages")))
        self.query_one("#in_progress", Table).set_rows(
            views.fetch_rows(self.fetches, "in_progress")
        )
        self.query_one("#recent", Table).set_rows(views.fetch_rows(self.fetches, "recent"))
