"""What the dashboard shows must be current: a guest stopped or removed on purpose is
watched no longer (no alarm, no row, no action sent to it), an endpoint that stopped
answering shows none of its last figures as if current, a log line that arrived late says
so, and `up`'s own dashboard finds the supervisor `retreatkit vm start` runs beside it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from retreatkit.admin import noted
from retreatkit.tui.app import Dashboard
from retreatkit.tui.run import endpoints, here
from retreatkit.tui.sources import Endpoint
from retreatkit.tui.testing import (
    TOKEN,
    Clock,
    FakeAdmin,
    actions_done,
    guest,
    hosting,
    make_dashboard,
    screen_text,
    serve,
    settle,
)
from retreatkit.tui.widgets import Lines, Table

SIZE = (150, 60)
REFUSED = "http://127.0.0.1:9"  # the discard port: nothing listens, connect is refused


def rows(app: Dashboard, table_id: str) -> list[list[str]]:
    table = app.screen.query_one(table_id, Table)
    return [[cell.plain for cell in table.get_row_at(i)] for i in range(table.row_count)]


def lines(app: Dashboard, widget: str) -> list[str]:
    return str(app.screen.query_one(widget, Lines).render()).splitlines()


@pytest.fixture
def relay1() -> Iterator[FakeAdmin]:
    with serve(FakeAdmin(status=hosting("relay"))) as admin:
        yield admin


@pytest.fixture
def supervisor(relay1: FakeAdmin) -> Iterator[FakeAdmin]:
    """`up` with its mirror in-process, a relay guest, and a nameserver guest left over
    from an earlier `[images] run`, stopped."""
    fake = FakeAdmin(status=hosting("mirror", addresses={"mirror": "10.0.0.2:8000"}))
    fake.status["mirror"] = {**fake.status["mirror"], "warnings": []}  # alarms: none but ours
    fake.guests = [
        guest("relay1", "relay", relay1.url),
        guest("nameserver", "nameserver", REFUSED, state="stopped"),
    ]
    with serve(fake) as admin:
        yield admin


async def test_a_stopped_guest_is_shown_once_and_never_sent_an_action(
    supervisor: FakeAdmin,
) -> None:
    app = make_dashboard(supervisor.url)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert [r[:3] for r in rows(app, "#services")] == [
            ["mirror", "10.0.0.2:8000", "up"],
            ["vm", "", "up"],
            ["relay", "—", "up"],
        ]
        assert lines(app, "#guests") == [
            f"relay1 (relay) running for 1h 00m · 2 restarts · on {supervisor.url[7:]}",
            "nameserver (nameserver) stopped · 2 restarts · last exit: qemu exit code 1"
            f" · on {supervisor.url[7:]}",
        ]
        assert lines(app, "#alarms") == ["none"]
        await pilot.press("5")
        await settle(pilot)
        await pilot.press("L")
        await pilot.pause()
        await pilot.press("enter")  # debug, the level offered
        await actions_done(pilot)
        said = lines(app, "#result")
        # sent to the running guest and to its supervisor only
        assert said == [
            f"retreatkit now logs at DEBUG and above on {supervisor.url[7:]}, guest relay1"
        ]


async def test_a_guest_removed_on_purpose_is_watched_no_longer(
    supervisor: FakeAdmin, relay1: FakeAdmin
) -> None:
    """`retreatkit vm stop relay1; retreatkit vm remove relay1` with the dashboard open:
    its endpoint refuses connections, and its supervisor no longer lists it. The
    dashboard raised `guest relay1: cannot connect` for good, with an `unreachable` row."""
    app = make_dashboard(supervisor.url)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert "guest relay1" in app.clients
        relay1.mode = "unauthorized"  # it answers no more (a refused connection, as good)
        await app.poll("guest relay1")
        assert supervisor.guests is not None
        del supervisor.guests[0]
        await app.poll(supervisor.url[7:])
        await settle(pilot)
        assert list(app.clients) == [supervisor.url[7:]]
        assert lines(app, "#alarms") == ["none"]
        assert [r[0] for r in rows(app, "#services")] == ["mirror", "vm"]
        assert "relay1" not in screen_text(app)


async def test_a_guest_stopped_while_watched_is_watched_no_longer(
    supervisor: FakeAdmin,
) -> None:
    app = make_dashboard(supervisor.url)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert supervisor.guests is not None
        supervisor.guests[0]["state"] = "stopped"  # `retreatkit vm stop relay1`
        await app.poll(supervisor.url[7:])
        await settle(pilot)
        assert list(app.clients) == [supervisor.url[7:]]
        assert lines(app, "#alarms") == ["none"]
        assert lines(app, "#guests")[0].startswith("relay1 (relay) stopped")
        supervisor.guests[0]["state"] = "running"  # started again: watched again
        await app.poll(supervisor.url[7:])
        await settle(pilot)
        assert list(app.clients) == [supervisor.url[7:], "guest relay1"]


async def test_an_endpoint_that_stopped_answering_shows_no_old_uptime_or_connections(
    fake: FakeAdmin,
) -> None:
    app = make_dashboard(fake.url)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert rows(app, "#services")[0][:5] == ["relay", "10.0.0.2:9000", "up", "1h 02m", "4"]
        fake.mode = "garbage"
        await app.poll(fake.url[7:])
        await settle(pilot)
        services = rows(app, "#services")
        assert [r[2:6] for r in services] == [["unreachable", "—", "—", "—"]] * 3
        assert rows(app, "#processes")[0][1:3] == ["—", "—"]  # as its process row


async def test_a_log_line_that_arrived_late_says_so() -> None:
    """A guest's lines came in 18:21:48, then 18:21:31, with nothing to tell."""
    fake = FakeAdmin(status=hosting("relay"))
    fake.logs = [
        {"seq": 1, "at": "2026-01-01T10:21:48.100Z", "service": "relay", "level": "INFO",
         "message": "paired nameplate 7"},
        {"seq": 2, "at": "2026-01-01T10:21:31.900Z", "service": "relay", "level": "INFO",
         "message": "sender waiting on nameplate 7"},
        {"seq": 3, "at": "2026-01-01T10:21:48.700Z", "service": "relay", "level": "INFO",
         "message": "transfer on nameplate 7 completed"},
    ]  # fmt: skip
    with serve(fake):
        app = make_dashboard(fake.url, follow_logs=True)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            while app.logs.received < 3:  # the log stream is followed in the background
                await pilot.pause()
            await pilot.press("5")
            await settle(pilot)
            shown = [x.strip("│ ") for x in screen_text(app).splitlines() if "nameplate 7" in x]
            assert shown == [
                "10:21:48 relay      INFO    paired nameplate 7",
                "10:21:31 relay      INFO    (arrived late) sender waiting on nameplate 7",
                "10:21:48 relay      INFO    transfer on nameplate 7 completed",
            ]


async def test_ups_dashboard_finds_the_supervisor_vm_start_runs_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`up` opens its dashboard with --connect to its own endpoint; `retreatkit vm start
    relay1` then leaves a supervisor in the background. `up`'s Guests screen said `no
    endpoint supervises VM guests` while `retreatkit tui` listed it."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    with (
        serve(FakeAdmin(status=hosting("mirror"))) as up,
        serve(FakeAdmin(status=hosting())) as sup,
    ):
        sup.guests = [guest("relay1", "relay", REFUSED, state="stopped")]
        up_note = noted.note(up.url)
        app = Dashboard(
            [Endpoint(up.url, TOKEN)],
            interval=3600,
            clock=Clock(),
            wall=Clock(),
            follow_logs=False,
            local=here,
            local_token=TOKEN,
        )
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("6")
            await settle(pilot)
            assert lines(app, "#summary")[0].startswith("no endpoint supervises VM guests")
            sup_note = noted.note(sup.url)  # started after the dashboard
            app.add_local()  # (read at each poll)
            await settle(pilot)
            assert list(app.clients) == [up.url[7:], sup.url[7:]]
            assert lines(app, "#summary") == [
                f"{sup.url[7:]} supervises 1 guest, 0 running, 2 restarts since it started"
            ]
            assert rows(app, "#guests")[0][:3] == ["relay1", "relay", "stopped"]
        # opened after it: found from the start, as `retreatkit tui` finds it
        found = await endpoints([up.url], TOKEN, find=True, local=True)
        assert [(e.url, e.token) for e in found] == [(up.url, TOKEN), (sup.url, TOKEN)]
        noted.forget(sup_note)
        noted.forget(up_note)
