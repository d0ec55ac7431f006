"""Relay: transfers under way and finished, refused and failed handshakes, for each
endpoint hosting a relay. The relay never knows a passphrase; only the public nameplate
is shown."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from textual.app import ComposeResult
from textual.widgets import Label

from retreatkit.tui import views
from retreatkit.tui.screens.service import Section, ServicePanel
from retreatkit.tui.state import EndpointState
from retreatkit.tui.widgets import Lines, Table

if TYPE_CHECKING:
    from retreatkit.tui.app import Dashboard

COLUMNS = ("Nameplate", "Bytes", "Rate", "Duration", "Started", "State")
CUT = ("Nameplate",)  # what a peer chose; the rest is shown whole, or left out:
DROP = ("Duration", "Started")


class RelaySection(Section):
    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint)
        self.transfers: Any = None
        self.problem: str | None = None

    def body(self) -> ComposeResult:
        yield Lines(id="summary")
        yield Label("Active transfers", classes="heading")
        yield Table(*COLUMNS, id="active", cut=CUT, drop=DROP)
        yield Label("Recent transfers", classes="heading")
        yield Table(*COLUMNS, id="recent", cut=CUT, drop=DROP)

    async def load(self, dash: Dashboard) -> None:
        self.transfers, self.problem = await dash.fetch(self.endpoint, "/relay/transfers")

    def draw(self, dash: Dashboard, e: EndpointState) -> None:
        summary = views.relay_summary(e)
        if self.problem:
            summary.append(f"transfers not reported: {self.problem}")
        self.query_one("#summary", Lines).show(summary)
        # "none yet" read wrong once transfers had come and gone
        now = dash.wall()
        self.query_one("#active", Table).set_rows(
            views.transfer_rows(self.transfers, "active", now), "none now"
        )
        recent = views.transfer_rows(self.transfers, "recent", now)
        self.query_one("#recent", Table).set_rows(recent)


class RelayScreen(ServicePanel):
    TITLE = "Relay"
    SERVICE = "relay"
    SECTION: ClassVar[type[Section]] = RelaySection
