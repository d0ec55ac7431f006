"""An admin endpoint found by its announcement on the LAN, which anyone can make, beside
the organiser's own: marked as found there wherever it is listed, read without the token,
and never sent an action."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from retreatkit.tui.app import Dashboard
from retreatkit.tui.screens.service import Section
from retreatkit.tui.sources import Endpoint
from retreatkit.tui.testing import (
    TOKEN,
    Clock,
    FakeAdmin,
    actions_done,
    guest,
    screen_text,
    serve,
    settle,
)
from retreatkit.tui.widgets import ConfirmScreen, Lines, Table

SIZE = (150, 60)


@pytest.fixture
def neighbour() -> Iterator[FakeAdmin]:
    """A neighbour's fake endpoint: it answers every read without the token, as the
    organiser's own would on loopback, and takes any action."""
    with serve(FakeAdmin()) as admin:
        yield admin


def dashboard(named: str, found: str) -> Dashboard:
    endpoints = [Endpoint(named, TOKEN), Endpoint(found, None, found=True)]
    return Dashboard(endpoints, interval=3600, clock=Clock(), follow_logs=False)


def text(widget: Lines) -> list[str]:
    return str(widget.render()).splitlines()


def refused(admin: FakeAdmin) -> str:
    return (
        f"{admin.url[7:]} (found on the LAN): nothing sent: anyone can announce an endpoint"
        f" on the LAN, so one found there is only read; to act on it, name it: --connect"
        f" {admin.url}"
    )


async def test_marked_wherever_listed_and_never_sent_an_action(
    fake: FakeAdmin, neighbour: FakeAdmin
) -> None:
    ours, theirs = fake.url[7:], f"{neighbour.url[7:]} (found on the LAN)"
    app = dashboard(fake.url, neighbour.url)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.title_line("Overview").endswith(f" · {ours}, {theirs}")
        processes = app.screen.query_one("#processes", Table)
        assert [processes.get_row_at(i)[0].plain for i in range(2)] == [ours, theirs]
        assert f"! nameserver on {theirs} is down" in text(app.screen.query_one("#alarms", Lines))
        await pilot.press("4")
        await settle(pilot)
        headings = [text(s.query_one(".endpoint", Lines))[0] for s in app.screen.query(Section)]
        assert headings == [f"Nameserver on {ours}", f"Nameserver on {theirs}"]
        await pilot.press("a")
        await pilot.pause()
        await pilot.press(*"printer.retreat.lan 10.0.0.9", "enter")
        await actions_done(pilot)
        assert text(app.screen.query_one("#result", Lines)) == [
            f"{ours}: added printer.retreat.lan",
            refused(neighbour),
        ]
        await pilot.press("5", "L", "enter")  # the log level, at every endpoint
        await actions_done(pilot)
        assert text(app.screen.query_one("#result", Lines)) == [
            refused(neighbour),
            f"retreatkit now logs at DEBUG and above on {ours}",
        ]
        assert f"{theirs}: nothing sent" in screen_text(app)
    assert ("PUT", "/nameserver/records/printer.retreat.lan", f"Bearer {TOKEN}",
            '{"value": "10.0.0.9"}') in fake.seen  # fmt: skip
    assert ("PUT", "/loglevel", f"Bearer {TOKEN}",
            '{"level": "debug", "logger": "retreatkit"}') in fake.seen  # fmt: skip
    assert {method for method, _, _, _ in neighbour.seen} == {"GET"}
    assert {auth for _, _, auth, _ in neighbour.seen} == {None}  # never the token


async def test_a_guest_of_a_supervisor_found_on_the_lan_is_not_stopped(
    fake: FakeAdmin, neighbour: FakeAdmin
) -> None:
    neighbour.guests = [guest("relay", "relay", "http://127.0.0.1:9")]
    app = dashboard(fake.url, neighbour.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("6")
        await settle(pilot)
        guests = app.screen.query_one("#guests", Table)
        assert guests.get_row_at(0)[-1].plain == f"{neighbour.url[7:]} (found on the LAN)"
        # listed, never watched: its list would choose what this machine is asked
        assert len(app.clients) == 2
        assert (
            f"admin not watched: its supervisor was found on the LAN (--connect {neighbour.url})"
            in text(app.screen.query_one("#detail", Lines))[0]
        )  # (too long to be shown whole in the table beside the rest)
        await pilot.press("x")  # asks nothing: nothing would be sent
        await actions_done(pilot)
        assert not isinstance(app.screen, ConfirmScreen)
        assert text(app.screen.query_one("#result", Lines)) == [refused(neighbour)]
    assert {method for method, _, _, _ in neighbour.seen} == {"GET"}
