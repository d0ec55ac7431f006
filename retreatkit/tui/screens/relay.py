"""Relay: transfers under way and finished, refused and failed handshakes. The relay
never knows a passphrase; only the public nameplate is shown."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.widgets import Label

from retreatkit.tui import views
from retreatkit.tui.screens.base import Panel
from retreatkit.tui.widgets import Lines, Table

COLUMNS = ("Nameplate", "Bytes", "Rate", "Duration", "Started", "Ended")


class RelayScreen(Panel):
    TITLE = "Relay"

    def __init__(self) -> None:
        super().__init__()
        self.transfers: Any = None
        self.problem: str | None = None

    def body(self) -> ComposeResult:
        yield Lines(id="summary")
        yield Label("Active transfers", classes="heading")
        yield Table(*COLUMNS, id="active")
        yield Label("Recent transfers", classes="heading")
        yield Table(*COLUMNS, id="recent")

    async def load(self) -> None:
        self.transfers, self.problem = await self.fetch("relay", "/relay/transfers")

    def draw(self) -> None:
        e = self.dash.state.hosting("relay")
        summary = views.relay_summary(e) if e else ["no endpoint hosts a relay"]
        if self.problem:
            summary.append(f"transfers not reported: {self.problem}")
        self.query_one("#summary", Lines).show(summary)
        self.query_one("#active", Table).set_rows(views.transfer_rows(self.transfers, "active"))
        self.query_one("#recent", Table).set_rows(views.transfer_rows(self.transfers, "recent"))
