"""Guests: the VM guests each supervising endpoint runs (`retreatkit up` with `[images]
run`, or `retreatkit vm serve`): state, uptime, restarts, qemu's memory and CPU time, how
each last ended; start the one under the cursor, or stop it (asked first). Under it, that
guest in full: a narrow terminal cuts the table's columns, or leaves some out."""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import quote

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Label

from retreatkit.tui import guests, views
from retreatkit.tui.screens.base import Panel
from retreatkit.tui.widgets import Lines, Table

COLUMNS = (
    "Guest", "Service", "State", "Uptime", "Restarts", "Memory", "CPU", "RAM", "Admin",
    "Last exit", "Supervisor",
)  # fmt: skip
# what a narrow terminal leaves out of the table first (the line under it has them): an
# address is shown whole or not at all
DROP = ("Supervisor", "Admin", "RAM", "CPU", "Memory", "Restarts", "Uptime")
# a clean stop lets the service close and the guest sync its disk; the supervisor powers
# it off if that takes 30 s, so its answer can take that long
STOP_TIMEOUT = 40.0


class GuestsScreen(Panel):
    TITLE = "Guests"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "start", "Start", tooltip="Start the guest under the cursor"),
        Binding("x", "stop", "Stop", tooltip="Stop the guest under the cursor (asked first)"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[tuple[str, str]] = []  # (supervisor, guest) of each row shown
        self.rows: list[views.Row] = []
        self.starting: tuple[str, str] | None = None  # a guest started here, not yet up

    def body(self) -> ComposeResult:
        yield Lines(id="summary")
        yield Label("Guests (s starts the one under the cursor, x stops it)", classes="heading")
        yield Table(*COLUMNS, id="guests", cut=("Last exit",), drop=DROP)
        yield Lines(id="detail")

    def draw(self) -> None:
        state = self.dash.state
        summary = views.supervisor_lines(state) or [
            "no endpoint supervises VM guests (retreatkit up with [images] run, or "
            "retreatkit vm serve)"
        ]
        self.query_one("#summary", Lines).show(summary)
        found = views.guest_rows(state)
        self.keys = [key for key, _ in found]
        self.rows = [row for _, row in found]
        self.query_one("#guests", Table).set_rows(
            self.rows, "no guests", ["\0".join(key) for key in self.keys]
        )
        self.show_detail()
        self.tell_started()

    def tell_started(self) -> None:
        """Once the guest started here is up, or has ended, the result line says so in
        place of `starting` (its row says it too)."""
        if self.starting is None:
            return
        guest = self.known(*self.starting)
        if guest is None:  # removed meanwhile
            pass
        elif guest.up:
            self.say(f"guest {guest.name} up")
        elif guest.state != "running":
            ended = f": {guest.last_exit}" if guest.last_exit else ""
            self.say(f"guest {guest.name} {guest.state}{ended}")
        else:
            return
        self.starting = None

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_detail()

    def show_detail(self) -> None:
        """The guest under the cursor, every column of it."""
        row = self.query_one("#guests", Table).cursor_row
        found = self.rows[row] if 0 <= row < len(self.rows) else None
        self.query_one("#detail", Lines).show([views.guest_detail(COLUMNS, found)] if found else [])

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        self.query_one("#guests", Table).focus()  # the arrows move its cursor at once

    def selected(self) -> tuple[str, str] | None:
        """The guest on the row under the cursor."""
        row = self.query_one("#guests", Table).cursor_row
        return self.keys[row] if 0 <= row < len(self.keys) else None

    def known(self, supervisor: str, name: str) -> guests.Guest | None:
        """The guest as its supervisor last listed it."""
        found = self.dash.state.endpoints[supervisor].guests or []
        return next((g for g in found if g.name == name), None)

    def action_start(self) -> None:
        self.run_worker(self._act("start"), group="action")

    def action_stop(self) -> None:
        self.run_worker(self._act("stop"), group="action")

    async def _act(self, verb: str) -> None:
        key = self.selected()
        if key is None:
            self.say("no guest selected")
            return
        supervisor, name = key
        self.starting = None
        why = self.dash.clients[supervisor].endpoint.read_only()
        if why:
            self.say(why)  # nothing to ask: nothing would be sent
            return
        before = self.known(supervisor, name)
        already = {"stop": "stopped", "start": "running"}[verb]
        if before is not None and before.state == already:
            self.say(f"guest {name} is already {already}")  # nothing to ask, nothing to send
            return
        if verb == "start" and self.dash.state.endpoints[supervisor].ended:
            self.say(f"guest {name}'s supervisor ended with its last guest: start it with "
                     f"`retreatkit vm start {name}`")  # fmt: skip
            return
        if verb == "stop":
            if not await self.sure(
                f"Stop the guest {name}? What it serves is down until it is started again.",
                f"stopping the guest {name}",
            ):
                return
            self.say(f"stopping {name} (a clean stop can take half a minute)")
        answer, problem = await self.dash.act(
            supervisor,
            "POST",
            f"/vm/guests/{quote(name, safe='')}/{verb}",
            timeout=STOP_TIMEOUT if verb == "stop" else None,
        )
        if problem:
            self.say(problem)
            return
        try:
            [guest] = guests.parse({"guests": [answer]})
        except ValueError:
            self.say(f"{name}: {verb} sent; the answer was not a guest")
        else:
            if verb == "start" and guest.state == "running":  # booting: it may fail yet
                self.say(f"guest {name} starting: its row says when it is up, or how it ended")
                self.starting = key
            else:
                self.say(f"guest {name} {guest.state}")
            await self.dash.record_guests(supervisor, self._replaced(supervisor, guest))
        self.reload()

    def _replaced(self, supervisor: str, guest: guests.Guest) -> list[guests.Guest]:
        known = self.dash.state.endpoints[supervisor].guests or []
        return [guest if g.name == guest.name else g for g in known]
