"""Nameserver: queries per second, blocked share, stale answers, top lists, upstream health,
blocklists, a live query log with a filter, and the organiser's actions."""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar
from urllib.parse import quote

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Label

from retreatkit.tui import views
from retreatkit.tui.screens.base import Panel
from retreatkit.tui.widgets import AskScreen, ConfirmScreen, Lines, Table

QUERY_LOG = 500  # queries kept on screen
PAGE = 200


class NameserverScreen(Panel):
    TITLE = "Nameserver"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "reload_lists", "Reload lists"),
        Binding("p", "pause", "Pause blocking"),
        Binding("a", "add_name", "Add name"),
        Binding("d", "remove_name", "Remove name"),
        Binding("f", "flush", "Flush name"),
        Binding("slash", "filter", "Filter"),
        Binding("escape", "unfocus", "Leave filter", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.queries: deque[dict[str, Any]] = deque(maxlen=QUERY_LOG)
        self.after = 0
        self.problem: str | None = None

    def body(self) -> ComposeResult:
        yield Lines(id="summary")
        with Horizontal(classes="pair"):
            for key, title in (
                ("domains", "Top domains"),
                ("blocked", "Top blocked"),
                ("clients", "Top clients"),
            ):
                with Vertical():
                    yield Label(title, classes="heading")
                    yield Table("Name", "Queries", id=f"top_{key}")
        with Horizontal(classes="pair"):
            with Vertical():
                yield Label("Upstreams", classes="heading")
                yield Table("Address", "State", "Latency", id="upstreams")
            with Vertical():
                yield Label("Blocklists", classes="heading")
                yield Table("Source", "Entries", "Bad lines", "Loaded", "Error", id="lists")
        yield Label("Query log (/ to filter)", classes="heading")
        yield Input(placeholder="filter: part of a name, client or answer", id="filter")
        yield Table("Time", "Client", "Name", "Type", "Answer", "ms", id="queries")

    async def load(self) -> None:
        doc, problem = await self.fetch(
            "nameserver", f"/nameserver/queries?after={self.after}&limit={PAGE}"
        )
        self.problem = problem
        if isinstance(doc, dict) and isinstance(doc.get("queries"), list):
            self.queries.extend(q for q in doc["queries"] if isinstance(q, dict))
            if isinstance(doc.get("next"), int):
                self.after = doc["next"]

    def draw(self) -> None:
        e = self.dash.state.hosting("nameserver")
        summary = views.nameserver_summary(e) if e else ["no endpoint hosts a nameserver"]
        if self.problem:
            summary.append(f"query log not reported: {self.problem}")
        self.query_one("#summary", Lines).show(summary)
        section = e.section("nameserver") if e else {}
        for key in ("domains", "blocked", "clients"):
            rows = views.top_rows(section.get(f"top_{key}"))
            self.query_one(f"#top_{key}", Table).set_rows(rows)
        self.query_one("#upstreams", Table).set_rows(views.dns_upstream_rows(e) if e else [])
        self.query_one("#lists", Table).set_rows(views.blocklist_rows(e) if e else [])
        self.draw_queries()

    def draw_queries(self) -> None:
        rows = [views.query_row(q) for q in reversed(self.queries)]  # newest first
        needle = self.query_one("#filter", Input).value.strip().casefold()
        if needle:
            rows = [r for r in rows if any(needle in cell.casefold() for cell in r)]
        self.query_one("#queries", Table).set_rows(
            rows, "no queries" + (" match" if needle else " yet")
        )

    def on_input_changed(self, event: Input.Changed) -> None:
        self.draw_queries()

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_unfocus(self) -> None:
        self.query_one("#queries", Table).focus()

    # -- actions ----------------------------------------------------------------------

    def action_reload_lists(self) -> None:
        self.run_worker(
            self._act("POST", "/nameserver/blocklists/reload", None, "blocklists reloaded"),
            group="action",
        )

    def action_pause(self) -> None:
        self.run_worker(self._pause(), group="action")

    def action_add_name(self) -> None:
        self.run_worker(self._add(), group="action")

    def action_remove_name(self) -> None:
        self.run_worker(self._remove(), group="action")

    def action_flush(self) -> None:
        self.run_worker(self._flush(), group="action")

    async def _ask(self, question: str, placeholder: str = "") -> str | None:
        return await self.app.push_screen_wait(AskScreen(question, placeholder))

    async def _sure(self, question: str) -> bool:
        answer: bool = await self.app.push_screen_wait(ConfirmScreen(question))
        return answer

    async def _act(self, method: str, path: str, body: Any, done: str) -> None:
        answer, problem = await self.dash.act("nameserver", method, path, body)
        self.say(problem or f"{done}: {views.answer_line(answer)}")
        self.reload()

    async def _pause(self) -> None:
        text = await self._ask("Pause blocking for how many minutes? (0 resumes)", "15")
        if text is None:
            return
        if not text.isdigit() or int(text) > 24 * 60:
            self.say(f"not a number of minutes from 0 to 1440: {text}")
            return
        minutes = int(text)
        if minutes and not await self._sure(
            f"Pause blocking for {minutes} min? Ads and trackers resolve for everyone meanwhile."
        ):
            return
        await self._act("POST", "/nameserver/blocking/pause", {"minutes": minutes}, "blocking")

    async def _add(self) -> None:
        text = await self._ask(
            "Add a local name: NAME ADDRESS (or NAME cname:TARGET)", "printer.retreat.lan 10.0.0.9"
        )
        if text is None:
            return
        parts = text.split()
        if len(parts) != 2:
            self.say(f"expected NAME ADDRESS, got: {text}")
            return
        name, value = parts
        await self._act(
            "PUT", f"/nameserver/records/{quote(name, safe='')}", {"value": value}, f"added {name}"
        )

    async def _remove(self) -> None:
        name = await self._ask("Remove which local name?", "printer.retreat.lan")
        if name is None or not await self._sure(f"Remove the local name {name}?"):
            return
        await self._act(
            "DELETE", f"/nameserver/records/{quote(name, safe='')}", None, f"removed {name}"
        )

    async def _flush(self) -> None:
        name = await self._ask("Flush which name from the cache?", "example.org")
        if name is None or not await self._sure(
            f"Flush {name} from the cache? Without the uplink it cannot be answered again."
        ):
            return
        await self._act("POST", "/nameserver/cache/flush", {"name": name}, f"flushed {name}")
