"""Endpoints that answer in ways a contract does not promise: a status that comes in pieces
over a slow link, one far too large, numbers out of any range, JSON nested past any depth,
log records of the wrong shape. Each is one line for that endpoint, a dash for a figure, or
a record shown as it came; the others, the polling and the log stream go on."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from textual.pilot import Pilot

from retreatkit.tui.app import Dashboard
from retreatkit.tui.fmt import MAX_LINES, MAX_ROWS
from retreatkit.tui.logbuffer import TEXT
from retreatkit.tui.screens.service import Section
from retreatkit.tui.sources import MAX_BODY, MAX_STATUS, AdminClient, Endpoint, SourceError
from retreatkit.tui.state import MAX_WARNINGS
from retreatkit.tui.testing import TOKEN, FakeAdmin, canned, make_dashboard, serve, settle
from retreatkit.tui.widgets import Lines, Table

SIZE = (150, 60)
WAIT = 30  # seconds: a fault that stops the dashboard fails its test rather than hang it


def alarms(app: Dashboard) -> list[str]:
    return str(app.screen.query_one("#alarms", Lines).render()).splitlines()


def table(app: Dashboard, table_id: str) -> list[list[str]]:
    rows = app.screen.query_one(table_id, Table)
    return [[c.plain for c in rows.get_row_at(i)] for i in range(rows.row_count)]


def states(app: Dashboard) -> list[list[str]]:
    table = app.screen.query_one("#services", Table)
    return [[c.plain for c in table.get_row_at(i)][:3] for i in range(table.row_count)]


async def test_a_status_in_pieces_over_a_slow_link_is_read_whole() -> None:
    body = json.dumps(canned()).encode()
    with serve(FakeAdmin(raw={"/status": body}, pieces=8)) as slow:
        app = make_dashboard(slow.url)
        async with app.run_test(size=SIZE) as pilot:
            async with asyncio.timeout(WAIT):
                await settle(pilot)
            assert [r[2] for r in states(app)] == ["up", "up", "DOWN"]
            assert not [a for a in alarms(app) if slow.url[7:] + ":" in a]


@pytest.mark.parametrize("pieces", [1, 8], ids=["length-said", "in-pieces"])
async def test_a_status_past_the_limit_is_one_line(fake: FakeAdmin, pieces: int) -> None:
    """A status of a few kB is far under MAX_STATUS; 8 MB of `{}` took 300-700 MB to parse."""
    body = b"[" + b"{}," * (MAX_STATUS // 3) + b"{}]"
    with serve(FakeAdmin(raw={"/status": body}, pieces=pieces)) as big:
        app = make_dashboard(fake.url, big.url)
        async with app.run_test(size=SIZE) as pilot:
            async with asyncio.timeout(WAIT):
                await settle(pilot)
            assert (
                f"! {big.url[7:]}: /status answered more than 250 kB, far more than an admin"
                " endpoint sends"
            ) in alarms(app)
            assert states(app)[-1] == ["—", f"admin {big.url[7:]}", "unreachable"]
            assert states(app)[0] == ["relay", "10.0.0.2:9000", "up"]


async def test_numbers_out_of_range_show_a_dash_and_polling_goes_on(fake: FakeAdmin) -> None:
    status = canned()
    status["process"].update(memory_bytes=10**400, open_files=-(10**400), uptime_seconds=-5)
    status["relay"].update(connections_open=float("nan"), bytes_relayed=float("inf"))
    status["mirror"].update(hit_ratio=-0.5, bytes_from_cache=-1e308, bytes_from_upstream=1e308)
    with serve(FakeAdmin(status=status)) as odd:
        app = make_dashboard(fake.url, odd.url)
        app.interval = 0.05  # polled again and again, as it is every second
        async with app.run_test(size=SIZE) as pilot:
            async with asyncio.timeout(WAIT):
                await settle(pilot)
            good, shown = table(app, "#processes")
            assert good[:4] == [fake.url[7:], "4242", "1h 02m", "52.4 MB"]
            assert shown[:6] == [odd.url[7:], "4242", "—", "—", "", "—"]
            relay = table(app, "#services")[3]
            assert relay[:5] == ["relay", "10.0.0.2:9000", "up", "1h 02m", "—"]
            assert f"! nameserver on {odd.url[7:]} is down" in alarms(app)
            await pilot.press("3")
            async with asyncio.timeout(WAIT):
                await settle(pilot)
            odd_mirror = list(app.screen.query(Section))[1].query_one("#summary", Lines)
            summary = str(odd_mirror.render()).splitlines()
            assert summary[0].startswith("hit ratio -50.0% · hits 70")
            assert summary[1] == "sent to clients from the store — · as it was fetched —"
            odd.status = canned()  # it answers as it should again: the dashboard sees it
            await pilot.press("1")
            async with asyncio.timeout(WAIT):
                while table(app, "#processes")[1][3] != "52.4 MB":
                    await pilot.pause()


async def test_a_status_the_dashboard_fails_on_is_one_line_and_polling_goes_on(
    fake: FakeAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever else may fail on a peer's answer (a fault of the dashboard's own, put here
    in the state's place) is that endpoint's one line, and the next poll tries again."""
    app = make_dashboard(fake.url)
    app.interval = 0.05
    record, faulty = app.state.record, [True]

    def fails(name: str, now: float, status: Any = None, error: str | None = None) -> None:
        if status is not None and faulty:
            raise RuntimeError("what nobody foresaw\nand a second line")
        record(name, now, status, error)

    monkeypatch.setattr(app.state, "record", fails)
    async with app.run_test(size=SIZE) as pilot:
        async with asyncio.timeout(WAIT):
            await settle(pilot)
        assert alarms(app) == [
            f"! {fake.url[7:]}: the dashboard failed on its status (RuntimeError: what nobody"
            " foresaw); it asks again"
        ]
        faulty.clear()
        async with asyncio.timeout(WAIT):
            while table(app, "#processes")[0][1] != "4242":
                await pilot.pause()


DEEP = b"[" * 100_000  # past any parser's depth: Python's recursion limit


async def test_a_status_nested_too_deeply_is_one_line_and_polling_goes_on() -> None:
    with serve(FakeAdmin(raw={"/status": DEEP})) as deep:
        app = make_dashboard(deep.url)
        app.interval = 0.05
        async with app.run_test(size=SIZE) as pilot:
            async with asyncio.timeout(WAIT):
                await settle(pilot)
            assert alarms(app) == [
                f"! {deep.url[7:]}: /status answered JSON nested too deeply to read"
            ]
            assert states(app) == [["—", f"admin {deep.url[7:]}", "unreachable"]]
            deep.raw.clear()  # it answers as it should again
            async with asyncio.timeout(WAIT):
                while [r[2] for r in states(app)] != ["up", "up", "DOWN"]:
                    await pilot.pause()


async def test_a_list_nested_too_deeply_is_one_line_on_its_screen() -> None:
    with serve(FakeAdmin(raw={"/relay/transfers": DEEP})) as deep:
        app = make_dashboard(deep.url)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("2")
            async with asyncio.timeout(WAIT):
                await settle(pilot)
            summary = str(app.screen.query_one("#summary", Lines).render()).splitlines()
            assert summary[-1] == (
                f"transfers not reported: {deep.url[7:]}: /relay/transfers answered JSON"
                " nested too deeply to read"
            )
            assert table(app, "#active") == [["none now", "", "", "", "", ""]]


async def logs_received(app: Dashboard, pilot: Pilot[None], count: int) -> None:
    """The Logs screen, once `count` records came (the stream is read in the background)."""
    await pilot.press("5")
    async with asyncio.timeout(WAIT):
        await settle(pilot)
        while app.logs.received < count:
            await pilot.pause()


async def test_a_log_record_nested_too_deeply_is_skipped_and_the_others_shown() -> None:
    good = {"seq": 1, "service": "relay", "level": "INFO", "message": "paired nameplate 7"}
    later = {**good, "seq": 2, "message": "transfer done"}
    with serve(FakeAdmin(logs=[good, DEEP, later])) as deep:
        app = make_dashboard(deep.url, follow_logs=True)
        async with app.run_test(size=SIZE) as pilot:
            await logs_received(app, pilot, 2)
            assert [line[TEXT] for line in app.logs.lines] == [
                "— relay      INFO    paired nameplate 7",
                "— relay      INFO    transfer done",
            ]
            assert app.log_problem is None


async def test_log_records_of_the_wrong_shape_are_shown_as_they_came() -> None:
    records: list[dict[str, Any] | bytes] = [
        {"seq": 1, "level": ["x"], "service": {"a": 1}, "message": ["hi"], "at": 5},
        {"seq": 2, "level": {}, "service": None, "message": 7},
        json.dumps({"seq": [3], "dropped": 10**400}).encode(),  # a count past any
        {"seq": 4, "service": "relay", "level": "INFO", "message": "paired nameplate 7"},
    ]
    with serve(FakeAdmin(logs=records)) as odd:
        app = make_dashboard(odd.url, follow_logs=True)
        async with app.run_test(size=SIZE) as pilot:
            await logs_received(app, pilot, 4)
            assert [line[TEXT] for line in app.logs.lines] == [
                '— {"a": 1}   ["X"]   ["hi"]',
                "— null       {}      7",
                "— ?          ?       ",
                "— relay      INFO    paired nameplate 7",
            ]
            assert app.logs.dropped == 0 and app.log_problem is None


async def test_log_records_the_dashboard_fails_on_are_one_line_and_it_follows_again(
    fake: FakeAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever else may fail on a batch of records (a fault of the dashboard's own, put
    here in the log ring's place) is one line on the Logs screen, and the stream is
    followed again."""
    fake.logs = [{"seq": 1, "service": "relay", "level": "INFO", "message": "paired"}]
    app = make_dashboard(fake.url, follow_logs=True)
    app.retry_logs = 0.05

    def fails(records: list[dict[str, Any]], where: str = "") -> None:
        raise RuntimeError("what nobody foresaw")

    monkeypatch.setattr(app.logs, "extend", fails)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        async with asyncio.timeout(WAIT):
            await settle(pilot)
            while [s[1] for s in fake.seen].count("/logs") < 2:
                await pilot.pause()
        assert app.log_problem == (
            f"{fake.url[7:]}: the dashboard failed on its log records (RuntimeError: what"
            " nobody foresaw); it asks again"
        )


async def test_a_list_of_millions_of_rows_shows_a_thousand_and_says_how_many_more() -> None:
    """8 MB of `{}` is 2.8 million local names: each table shows MAX_ROWS of a list, and a
    last row with how many more it has (the totals the nameserver says, when it says more)."""
    many = 5000
    records = b'{"records": [' + b",".join([b"{}"] * many) + b"]}"
    status = canned()
    status["nameserver"]["top_domains"] = [[f"d{i}.example", 1] for i in range(many)]
    with serve(FakeAdmin(status=status, raw={"/nameserver/records": records})) as big:
        big.lists["/relay/transfers"] = {"active": [{}] * many, "recent": []}
        app = make_dashboard(big.url)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("4")
            async with asyncio.timeout(WAIT):
                await settle(pilot)
            [section] = app.screen.query(Section)
            local = section.query_one("#local", Table)
            assert local.row_count == MAX_ROWS + 1
            assert [c.plain for c in local.get_row_at(MAX_ROWS)] == ["... 4,000 more", "", ""]
            top = section.query_one("#top_domains", Table)
            assert top.row_count == MAX_ROWS + 1
            assert top.get_row_at(MAX_ROWS)[0].plain == "... 4,000 more"
            await pilot.press("2")
            async with asyncio.timeout(WAIT):
                await settle(pilot)
            active = app.screen.query_one("#active", Table)
            assert active.row_count == MAX_ROWS + 1
            assert active.get_row_at(MAX_ROWS)[0].plain == "... 4,000 more"


async def test_forty_thousand_warnings_are_a_few_alarms() -> None:
    status = canned()
    # as many as a status has room for
    status["mirror"]["warnings"] = [f"warning {i}" for i in range(MAX_WARNINGS)]
    status["mirror"]["warnings"] += ["w"] * (40_000 - MAX_WARNINGS)
    status["process"]["attendees"] = [f"line {i}" for i in range(2000)]
    with serve(FakeAdmin(status=status)) as loud:
        app = make_dashboard(loud.url)
        async with app.run_test(size=SIZE) as pilot:
            async with asyncio.timeout(WAIT):
                await settle(pilot)
            shown = alarms(app)
            attendees = str(app.screen.query_one("#attendees", Lines).render()).splitlines()
            assert attendees[-2:] == [f"line {MAX_LINES - 1}", f"... {2000 - MAX_LINES:,} more"]
            mirror = [a for a in shown if a.startswith("! mirror: ")]
            assert mirror == [
                *(f"! mirror: warning {i}" for i in range(MAX_WARNINGS)),
                f"! mirror: {40_000 - MAX_WARNINGS:,} more warnings",
            ]
            await pilot.press("3")
            async with asyncio.timeout(WAIT):
                await settle(pilot)
            warnings = str(app.screen.query_one("#warnings", Lines).render()).splitlines()
            assert warnings[-1] == f"! {40_000 - MAX_WARNINGS:,} more warnings"
            assert len(warnings) == MAX_WARNINGS + 1


async def test_a_list_larger_than_a_status_may_be_is_read() -> None:
    """Lists have their own, larger bound: the local names a nameserver sends at most."""
    records = [{"name": "host.retreat.lan", "type": "A", "value": "10.0.0.9"}] * 6000
    with serve(FakeAdmin()) as fake:
        fake.lists["/nameserver/records"] = {"total": 6000, "records": records}
        assert MAX_STATUS < len(json.dumps(records)) < MAX_BODY
        app = make_dashboard(fake.url)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("4")
            async with asyncio.timeout(WAIT):
                await settle(pilot)
            [section] = app.screen.query(Section)
            assert section.query_one("#local", Table).get_row_at(0)[0].plain == "host.retreat.lan"


@pytest.mark.parametrize("path", ["/logs", "/status"])
async def test_a_redirect_is_not_followed_with_the_token(fake: FakeAdmin, path: str) -> None:
    """An endpoint that answers with a redirect names where the token would go next:
    the dashboard goes nowhere, and says what it got."""
    fake.logs_end = True
    with serve(FakeAdmin(redirects={path: fake.url + path})) as sender:
        async with AdminClient(Endpoint(sender.url, TOKEN)) as client:
            with pytest.raises(SourceError) as raised:
                if path == "/logs":
                    async for _ in client.logs():
                        pass
                else:
                    await client.status()
    said = {
        "/logs": "/logs answered HTTP 302",
        "/status": "GET /status answered HTTP 302: 302: Found",
    }
    assert str(raised.value) == f"{sender.url[7:]}: {said[path]}"
    assert fake.seen == []
