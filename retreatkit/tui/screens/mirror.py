"""Mirror: hit ratio, bytes sent to clients against bytes over the uplink, the store
against its limit and what eviction removed, its disk, what needs the organiser
(warnings), each upstream (PyPI, opam, npm, every apt archive), top packages, downloads
in progress and recent fetches; for each endpoint hosting a mirror."""

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

FETCH = ("Ecosystem", "Package", "File", "Bytes", "Size", "Started", "State")
UPSTREAM = ("Upstream", "URL", "State", "Down since", "Retry in", "Last error")
# a package or a file name is cut to fit, the rest is shown whole or, on a narrow
# screen, left out
CUT_FETCH = ("Package", "File")
DROP_FETCH = ("Started", "Size", "Bytes")


class MirrorSection(Section):
    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint)
        self.fetches: Any = None
        self.problem: str | None = None

    def body(self) -> ComposeResult:
        yield Lines(id="summary")
        yield Lines(id="warnings")
        yield Label("Upstreams", classes="heading")
        # a URL is shown whole or not at all (the upstream's name says which it is;
        # cut, `…1/simple/` said nothing); narrower still, when it is tried again, then
        # since when it is down, give way (the warnings say since when too)
        yield Table(
            *UPSTREAM,
            id="upstreams",
            cut=("Last error",),
            cut_start=("URL",),  # on a terminal too narrow even without it
            drop=("URL", "Retry in", "Down since"),
        )
        yield Label("Downloads in progress", classes="heading")
        yield Table(*FETCH, id="in_progress", cut=CUT_FETCH, drop=DROP_FETCH)
        yield Label("Recent fetches", classes="heading")
        yield Table(*FETCH, id="recent", cut=CUT_FETCH, drop=DROP_FETCH)
        yield Label("Top packages", classes="heading")
        yield Table("Package", "Requests", id="top", cut=("Package",))

    async def load(self, dash: Dashboard) -> None:
        self.fetches, self.problem = await dash.fetch(self.endpoint, "/mirror/fetches")

    def draw(self, dash: Dashboard, e: EndpointState) -> None:
        summary = views.mirror_summary(e)
        if self.problem:
            summary.append(f"fetches not reported: {self.problem}")
        self.query_one("#summary", Lines).show(summary)
        now = dash.wall()
        warnings = self.query_one("#warnings", Lines)
        found = views.mirror_warnings(e, now)
        warnings.set_class(bool(found), "alarm")
        warnings.show([f"! {w}" for w in found] or ["no warnings"])
        section = e.section("mirror")
        self.query_one("#upstreams", Table).set_rows(views.upstream_rows(e, now))
        self.query_one("#top", Table).set_rows(views.top_rows(section.get("top_packages")))
        self.query_one("#in_progress", Table).set_rows(
            views.fetch_rows(self.fetches, "in_progress", now), "none now"
        )
        recent = views.fetch_rows(self.fetches, "recent", now)
        self.query_one("#recent", Table).set_rows(recent)


class MirrorScreen(ServicePanel):
    TITLE = "Mirror"
    SERVICE = "mirror"
    SECTION: ClassVar[type[Section]] = MirrorSection
