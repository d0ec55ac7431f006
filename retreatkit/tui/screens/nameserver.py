"""Nameserver: queries per second, blocked share, stale answers, top lists, upstream health,
blocklists, the local names and a live query log with a filter, for each endpoint
hosting a nameserver; and the organiser's actions, which go to every one of them (DHCP
hands them all out)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Label

from retreatkit.tui import answers, localnames, views
from retreatkit.tui.screens.service import Section, ServicePanel
from retreatkit.tui.state import EndpointState
from retreatkit.tui.widgets import Lines, Table

if TYPE_CHECKING:
    from retreatkit.tui.app import Dashboard

QUERY_LOG = 500  # queries kept on screen, for each endpoint
PAGE = 200
LOCAL_NAMES = 500  # listed at most, for each endpoint


class NameserverSection(Section):
    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint)
        self.queries: deque[dict[str, Any]] = deque(maxlen=QUERY_LOG)
        self.after: int | None = None  # None: ask for the newest
        self.problem: str | None = None
        self.records: Any = None  # GET /nameserver/records
        self.records_problem: str | None = None

    def body(self) -> ComposeResult:
        yield Lines(id="summary")
        # the live part first: below the tables, an 80x24 terminal never showed it
        yield Label("Query log, newest first (/ to filter)", classes="heading")
        # a client's address and the answer are shown whole; a name is cut to fit, and
        # past that (a long IPv6 client at 80 columns) the ms, then the type, give way
        yield Table(
            "Time", "Client", "Name", "Type", "Answer", "ms",
            id="queries", cut=("Name",), drop=("ms", "Type"),
        )  # fmt: skip
        with Horizontal(classes="pair"):
            for key, title in (("domains", "Top domains"), ("blocked", "Top blocked")):
                with Vertical():
                    yield Label(title, classes="heading")
                    yield Table("Name", "Queries", id=f"top_{key}", cut=("Name",))
        # addresses, shown whole: a third of 80 columns cut an IPv6 client to its prefix,
        # so these two sit side by side only on a wide screen
        with Horizontal(classes="pair stack"):
            with Vertical():
                yield Label("Top clients", classes="heading")
                yield Table("Client", "Queries", id="top_clients")
            with Vertical():
                yield Label("Upstreams", classes="heading")
                yield Table("Address", "State", "Latency", id="upstreams")
        yield Label("Blocklists", classes="heading")
        yield Table(
            "Source", "Entries", "Bad lines", "Loaded", "Last error",
            id="lists", cut=("Source", "Last error"), cut_start=("Source",),
        )  # fmt: skip
        yield Label("Local names (a adds, d removes)", classes="heading")
        yield Table("Name", "Type", "Value", id="local", cut=("Name",))

    async def load(self, dash: Dashboard) -> None:
        cursor = "" if self.after is None else f"after={self.after}&"
        (doc, self.problem), (self.records, self.records_problem) = await asyncio.gather(
            dash.fetch(self.endpoint, f"/nameserver/queries?{cursor}limit={PAGE}"),
            dash.fetch(self.endpoint, f"/nameserver/records?limit={LOCAL_NAMES}"),
        )
        if not isinstance(doc, dict) or not isinstance(doc.get("queries"), list):
            return
        # the newest a screen keeps, of however many it sent
        found = [q for q in doc["queries"][-QUERY_LOG:] if isinstance(q, dict)]
        last = doc.get("next")
        if isinstance(last, int) and self.after is not None and last < self.after:
            self.queries.clear()  # it started again: its numbers start again
            self.after = None
            return
        self.queries.extend(found)
        # a full page means more are waiting: skip to the newest rather than lag behind
        self.after = last if isinstance(last, int) and len(found) < PAGE else None

    def draw(self, dash: Dashboard, e: EndpointState) -> None:
        now = dash.wall()
        summary = views.nameserver_summary(e, now)
        if self.problem:
            summary.append(f"query log not reported: {self.problem}")
        if self.records_problem:
            summary.append(f"local names not reported: {self.records_problem}")
        self.query_one("#summary", Lines).show(summary)
        section = e.section("nameserver")
        for key in ("domains", "blocked", "clients"):
            rows = views.top_rows(section.get(f"top_{key}"))
            self.query_one(f"#top_{key}", Table).set_rows(rows)
        self.query_one("#upstreams", Table).set_rows(views.dns_upstream_rows(e))
        lists = views.blocklist_rows(e, now)
        self.query_one("#lists", Table).set_rows(lists, views.no_blocklists(e))
        empty = "not reported" if self.records_problem else "none"
        self.query_one("#local", Table).set_rows(views.record_rows(self.records), empty)

    def draw_queries(self, needle: str, now: float) -> None:
        rows = [views.query_row(q, now) for q in reversed(self.queries)]  # newest first
        if needle:
            rows = [r for r in rows if any(needle in cell.casefold() for cell in r)]
        self.query_one("#queries", Table).set_rows(
            rows, "no queries" + (" match" if needle else " yet")
        )


class NameserverScreen(ServicePanel):
    TITLE = "Nameserver"
    SERVICE = "nameserver"
    SECTION: ClassVar[type[Section]] = NameserverSection
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "reload_lists", "Reload", tooltip="Reload the blocklists"),
        Binding("p", "pause", "Pause", tooltip="Pause blocking for some minutes"),
        Binding("a", "add_name", "Add name", tooltip="Add a local name"),
        Binding("d", "remove_name", "Remove", tooltip="Remove a local name"),
        Binding("f", "flush", "Flush", tooltip="Flush a name from the cache"),
        Binding("slash", "filter", "Filter"),
        Binding("escape", "unfocus", "Leave filter", show=False),
    ]

    def above(self) -> ComposeResult:
        yield Input(
            placeholder="filter the query log: part of a name, client or answer", id="filter"
        )

    def draw(self) -> None:
        super().draw()
        self.draw_queries()

    def draw_queries(self) -> None:
        needle = self.query_one("#filter", Input).value.strip().casefold()
        now = self.dash.wall()
        for section in self.sections():
            if isinstance(section, NameserverSection):
                section.draw_queries(needle, now)

    def on_input_changed(self, event: Input.Changed) -> None:
        self.draw_queries()

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_unfocus(self) -> None:
        tables = list(self.query("#queries").results(Table))
        if tables:
            tables[0].focus()
        else:
            self.set_focus(None)

    # -- actions ----------------------------------------------------------------------

    def action_reload_lists(self) -> None:
        self.run_worker(self._reload_lists(), group="action")

    async def _reload_lists(self) -> None:
        """A guest's list files are its host's: asked alone, a guest read again only the
        copies it booted with. Its supervisor reads the host's files and hands them to it
        (docs/admin-api.md), so the reload asked of a watched guest goes there."""
        endpoints = self.dash.state.hosting("nameserver")

        async def one(e: EndpointState) -> tuple[Any, str | None]:
            if e.guest_of is not None and e.guest_of[0] in self.dash.clients:
                supervisor, guest = e.guest_of
                path = f"/vm/guests/{quote(guest, safe='')}/blocklists/reload"
                return await self.dash.act(supervisor, "POST", path)
            return await self.dash.act(e.name, "POST", "/nameserver/blocklists/reload")

        done = await asyncio.gather(*(one(e) for e in endpoints))
        self._said([(e.name, *d) for e, d in zip(endpoints, done, strict=True)], answers.reloaded)

    def action_pause(self) -> None:
        self.run_worker(self._pause(), group="action")

    def action_add_name(self) -> None:
        self.run_worker(self._add(), group="action")

    def action_remove_name(self) -> None:
        self.run_worker(self._remove(), group="action")

    def action_flush(self) -> None:
        self.run_worker(self._flush(), group="action")

    async def _act(self, method: str, path: str, body: Any, line: Callable[[Any], str]) -> None:
        """The action at every nameserver; `line` words each answer."""
        results = await self.dash.act_all("nameserver", method, path, body)
        self._said(results, line)

    def _said(self, results: list[tuple[str, Any, str | None]], line: Callable[[Any], str]) -> None:
        """Each endpoint's answer in a line (its name first when there are several)."""
        if not results:
            self.say("no endpoint hosts a nameserver")
            return
        several = len(results) > 1  # which is which (a problem's line names its endpoint)
        self.say(
            *(
                problem or (f"{name}: {line(answer)}" if several else line(answer))
                for name, answer, problem in results
            )
        )
        self.reload()

    async def _pause(self) -> None:
        doing = "pausing blocking"
        text = await self.ask("Pause blocking for how many minutes? (0 resumes)", doing, "15")
        if text is None:
            return
        if not text.isdigit() or int(text) > 24 * 60:
            self.say(f"not a number of minutes from 0 to 1440: {text}")
            return
        minutes = int(text)
        if minutes and not await self.sure(
            f"Pause blocking for {minutes} min? Ads and trackers resolve for everyone meanwhile.",
            doing,
        ):
            return
        await self._act(
            "POST",
            "/nameserver/blocking/pause",
            {"minutes": minutes},
            lambda answer: answers.blocking(answer, self.dash.wall()),
        )

    async def _add(self) -> None:
        text = await self.ask(
            "Add a local name: NAME=ADDRESS, or NAME=cname:TARGET for an alias",
            "adding a local name",
            example=localnames.EXAMPLE,
        )
        if text is None:
            return
        try:
            name, value = localnames.parse(text)
        except localnames.BadEntry as exc:
            self.say(str(exc))  # nothing sent
            return
        await self._act(
            "PUT",
            f"/nameserver/records/{quote(name, safe='')}",
            {"value": value},
            lambda answer: answers.added(name, answer),
        )

    async def _remove(self) -> None:
        doing = "removing a local name"
        name = await self.ask("Remove which local name?", doing, example="printer.retreat.lan")
        if name is None or not await self.sure(f"Remove the local name {name}?", doing):
            return
        await self._act(
            "DELETE",
            f"/nameserver/records/{quote(name, safe='')}",
            None,
            lambda answer: answers.removed(name, answer),
        )

    async def _flush(self) -> None:
        doing = "flushing a name"
        name = await self.ask("Flush which name from the cache?", doing, example="example.org")
        if name is None or not await self.sure(
            f"Flush {name} from the cache? Without the uplink it cannot be answered again.",
            doing,
        ):
            return
        await self._act(
            "POST",
            "/nameserver/cache/flush",
            {"name": name},
            lambda answer: answers.flushed(name, answer),
        )
