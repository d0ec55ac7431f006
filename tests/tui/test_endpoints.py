"""Several endpoints hosting the same service (a relay in-process and one in a guest, two
hosts): each screen shows every one, headed by its endpoint; DNS actions reach each one.
And the mirror screen's parts an organiser acts on: upstreams, the store's limit and
eviction, warnings."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from retreatkit.tui.app import Dashboard
from retreatkit.tui.screens.service import Section
from retreatkit.tui.testing import TOKEN, FakeAdmin, actions_done, make_dashboard, serve, settle
from retreatkit.tui.widgets import Lines, Table

SIZE = (150, 60)
WAIT = 20  # seconds: a screen held back fails its test rather than hang it


def rows(section: Section, table_id: str) -> list[list[str]]:
    table = section.query_one(table_id, Table)
    return [[cell.plain for cell in table.get_row_at(i)] for i in range(table.row_count)]


def text(widget: Lines) -> str:
    return str(widget.render())


def shown(app: Dashboard) -> list[Section]:
    return [s for s in app.screen.query(Section) if s.display]


@pytest.fixture
def second(fake: FakeAdmin) -> Iterator[FakeAdmin]:
    other = FakeAdmin()
    other.lists = {
        **fake.lists,
        "/relay/transfers": {"active": [], "recent": [{"nameplate": "99", "ended": "completed"}]},
    }
    with serve(other) as admin:
        yield admin


async def test_each_relay_mirror_and_nameserver_is_shown(
    fake: FakeAdmin, second: FakeAdmin
) -> None:
    app = make_dashboard(fake.url, second.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(pilot)
        first, other = shown(app)
        assert text(first.query_one(".endpoint", Lines)) == f"Relay on {fake.url[7:]}"
        assert text(other.query_one(".endpoint", Lines)) == f"Relay on {second.url[7:]}"
        assert rows(first, "#active")[0][0] == "7"
        assert rows(other, "#active") == [["none now", "", "", "", "", ""]]
        assert rows(other, "#recent")[0][0] == "99"
        for key, title in (("3", "Mirror"), ("4", "Nameserver")):
            await pilot.press(key)
            await settle(pilot)
            headings = [text(s.query_one(".endpoint", Lines)) for s in shown(app)]
            assert headings == [f"{title} on {fake.url[7:]}", f"{title} on {second.url[7:]}"]
        await pilot.press("r")  # reload lists: on both nameservers
        await actions_done(pilot)
        for admin in (fake, second):
            assert ("POST", "/nameserver/blocklists/reload", f"Bearer {TOKEN}", "") in admin.seen
        assert text(app.screen.query_one("#result", Lines)).splitlines() == [
            f"{fake.url[7:]}: blocklists reloaded",
            f"{second.url[7:]}: blocklists reloaded",
        ]


async def test_one_endpoint_needs_no_heading(fake: FakeAdmin) -> None:
    app = make_dashboard(fake.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(pilot)
        [section] = shown(app)
        assert not section.query_one(".endpoint", Lines).display


async def test_mirror_upstreams_limit_eviction_and_warnings(fake: FakeAdmin) -> None:
    app = make_dashboard(fake.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await settle(pilot)
        [section] = shown(app)
        summary = text(section.query_one("#summary", Lines)).splitlines()
        # what clients got, apart from what crossed the uplink (/status upstream_bytes)
        assert summary[1] == "sent to clients from the store 1.1 GB · as it was fetched 157 MB"
        assert summary[2] == "over the uplink: files 315 MB · index pages 2.4 MB · saved 916 MB"
        assert summary[3] == (
            "store 1.2 GB of 4.3 GB allowed (28.7%) in 80 files · evicted 12 files (315 MB)"
            " · free disk 53.7 GB"
        )
        assert summary[4] == (
            "stale index pages 4 · cached-only pages 2 · verify failures 1 · upstream errors 3"
            " · connections refused 0"
        )
        warnings = text(section.query_one("#warnings", Lines)).splitlines()
        assert warnings[1] == (
            "! apt debian/bookworm: its Release expires at 2 Jan 09:00; offline, apt then"
            " needs [check-valid-until=no] in its sources line"
        )
        assert rows(section, "#upstreams") == [
            ["pypi", "http://192.0.2.1/simple/", "down", "2 min ago", "42s", "connection refused"],
            ["opam", "http://192.0.2.2/opam", "up", "", "", ""],
            ["npm", "http://192.0.2.3/npm/", "unknown", "", "", ""],
            ["apt/debian", "http://192.0.2.4/debian", "up", "", "", ""],
            ["apt/debian-security", "http://192.0.2.4/debian-security", "up", "", "", ""],
        ]
        check = {"state": "running", "checked": 9, "dropped": 1}
        fake.status["mirror"]["store"] = {"max_size_bytes": 0, "check": check}
        app.state.record(fake.url[7:], 0, status=fake.status)  # the next poll is an hour away
        await settle(pilot)
        summary = text(section.query_one("#summary", Lines)).splitlines()
        assert summary[3].startswith("store — (no limit but the disk) in — files")
        assert summary[5] == "store check after start: running, 9 checked, 1 damaged files dropped"


@pytest.mark.parametrize(
    ("key", "path", "table_id"),
    [
        ("2", "/relay/transfers", "#active"),
        ("3", "/mirror/fetches", "#in_progress"),
        ("4", "/nameserver/records", "#local"),
    ],
)
async def test_an_endpoint_stuck_on_its_lists_holds_no_other_back(
    fake: FakeAdmin, key: str, path: str, table_id: str
) -> None:
    """Each endpoint's lists are shown as they come: one whose lists never come (given
    all the time in the world here) keeps only its own section waiting."""
    with serve(FakeAdmin(hangs=(path,))) as stuck:
        app = make_dashboard(fake.url, stuck.url)
        app.clients[stuck.url[7:]].timeout = 3600.0
        async with app.run_test(size=SIZE) as pilot:
            await app.polled.wait()
            await pilot.press(key)
            async with asyncio.timeout(WAIT):
                while len(shown(app)) < 2 or not rows(shown(app)[0], table_id):
                    await pilot.pause()
            good, waiting = shown(app)
            assert good.endpoint == fake.url[7:]
            assert rows(good, table_id)[0][0] not in ("none now", "none")
            assert rows(waiting, table_id) == []  # nothing said of lists not read yet
