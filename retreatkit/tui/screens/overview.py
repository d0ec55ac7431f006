"""Overview: every service up or down and where attendees reach it, uptime, connections,
throughput and its trend, alarms (leaks among them), VM guests, each process's memory
and files, and what attendees use."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Label

from retreatkit.tui import views
from retreatkit.tui.screens.base import SCREENS, Panel
from retreatkit.tui.times import clocks
from retreatkit.tui.widgets import Lines, Table

TRENDS = ("Trend",)  # the throughput's per poll, or the memory's


class Overview(Panel):
    TITLE = "Overview"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(key, f"app.show('{mode}')", name) for key, mode, name in SCREENS
    ]

    def body(self) -> ComposeResult:
        yield Label("Services", classes="heading")
        yield Table(
            "Service",
            "Address",
            "State",
            "Uptime",
            "Conns",
            "Throughput",
            "Trend",
            id="services",
            cut_first=TRENDS,
            cut_start=TRENDS,  # the newest end of a trend stays
            # a long IPv6 address at 80 columns: what the service screens say give way
            drop=("Trend", "Conns", "Uptime", "Throughput"),
        )
        yield Label("Alarms", classes="heading")
        yield Lines(id="alarms")
        yield Label("Guests (6 to start or stop them)", classes="heading", id="guests_heading")
        yield Lines(id="guests")
        yield Label("Processes", classes="heading")
        yield Table(
            "Endpoint",
            "PID",
            "Uptime",
            "Memory",
            "Trend",
            "Files",
            "Log level",
            "Version",
            id="processes",
            cut_first=TRENDS,
            cut_start=TRENDS,
            drop=("Trend", "Version", "Files", "Log level", "PID"),
        )
        yield Label("Attendees use", classes="heading")
        yield Lines(id="attendees")

    def draw(self) -> None:
        state = self.dash.state
        self.query_one("#services", Table).set_rows(views.overview_rows(state))
        alarms = state.alarms(self.dash.clock())
        alarm_lines = self.query_one("#alarms", Lines)
        alarm_lines.set_class(bool(alarms), "alarm")
        now = self.dash.wall()
        alarm_lines.show([f"! {clocks(a, now)}" for a in alarms] or ["none"])
        guests = views.guest_lines(state)
        for part in ("#guests_heading", "#guests"):
            self.query_one(part).display = bool(guests)
        self.query_one("#guests", Lines).show(guests)
        self.query_one("#processes", Table).set_rows(views.process_rows(state))
        attendees = views.attendee_lines(state)
        self.query_one("#attendees", Lines).show(attendees or ["not reported"])
