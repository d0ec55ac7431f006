"""Every screen driven with Pilot against a fake admin endpoint: hostile names, a service
down, an endpoint that answers garbage or hangs, actions and their questions."""

from __future__ import annotations

import gc
import re

import pytest
from textual.widgets import Input, Label

from retreatkit.tui.app import Dashboard
from retreatkit.tui.logbuffer import SEQ, TEXT, LogBuffer
from retreatkit.tui.logview import LogView
from retreatkit.tui.run import ended
from retreatkit.tui.testing import (
    HOSTILE,
    TOKEN,
    FakeAdmin,
    actions_done,
    make_dashboard,
    screen_text,
    serve,
    settle,
)
from retreatkit.tui.widgets import ConfirmScreen, Lines, Table

SIZE = (150, 60)


def table_text(app: Dashboard, table_id: str) -> list[list[str]]:
    table = app.screen.query_one(table_id, Table)
    return [[cell.plain for cell in table.get_row_at(i)] for i in range(table.row_count)]


async def test_overview_shows_each_service_and_alarms(fake: FakeAdmin) -> None:
    app = make_dashboard(fake.url)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        rows = table_text(app, "#services")
        assert [r[0] for r in rows] == ["relay", "mirror", "nameserver"]
        # where attendees reach each, not the admin endpoint (the Processes table has it)
        assert [r[1] for r in rows] == ["10.0.0.2:9000", "10.0.0.2:8000", "10.0.0.2:53"]
        assert [r[2] for r in rows] == ["up", "up", "DOWN"]
        assert rows[0][3] == "1h 02m" and rows[0][4] == "4"
        alarms = str(app.screen.query_one("#alarms", Lines).render())
        assert f"nameserver on {fake.url[7:]} is down" in alarms
        assert "mirror: upstream pypi down: [@click=app.quit]x[/] [bold]boom" in alarms
        processes = table_text(app, "#processes")
        assert processes[0][:4] == [fake.url[7:], "4242", "1h 02m", "52.4 MB"]


async def test_hostile_names_are_shown_literally_and_never_run(fake: FakeAdmin) -> None:
    app = make_dashboard(fake.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await settle(pilot)
        shown = table_text(app, "#top")[0][0]
        assert shown.startswith("[@click=app.quit]x[/] [bold]boom ")
        # every control byte and the bidi override in a visible form
        assert "\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\u202etxt.exe" in shown
        text = screen_text(app)
        assert "[@click=app.quit]x[/]" in text
        assert not any(c in text for c in "\x1b\x07\x9b\u202e")
        # clicking where the hostile name is drawn does not run its action
        table = app.screen.query_one("#top", Table)
        await pilot.click(table, offset=(4, 1))
        await pilot.pause()
        assert app.is_running
        await pilot.press("4")
        await settle(pilot)
        queries = table_text(app, "#queries")
        assert queries[1][2].startswith("[@click=app.quit]x[/]")


async def test_relay_screen_lists_transfers(fake: FakeAdmin) -> None:
    app = make_dashboard(fake.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(pilot)
        assert table_text(app, "#active") == [["7", "1.0 MB", "262 kB/s", "4s", "10:59", "active"]]
        assert table_text(app, "#recent")[0][5] == "completed"
        summary = str(app.screen.query_one("#summary", Lines).render())
        assert "handshakes refused 2 · failed 1" in summary
        assert ("GET", "/relay/transfers", f"Bearer {TOKEN}", "") in fake.seen


async def test_fields_not_there_yet_show_a_dash(fake: FakeAdmin) -> None:
    fake.status = {"relay": {"connections_open": 1, "waiting": 0}}  # today's relay, say
    fake.lists = {}
    app = make_dashboard(fake.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(pilot)
        summary = str(app.screen.query_one("#summary", Lines).render())
        assert (
            "transfers active — · completed — · waiting senders — · open connections 1" in summary
        )
        assert (
            f"transfers not reported: {fake.url[7:]}: GET /relay/transfers answered HTTP 404"
            in summary
        )
        for key in ("3", "4", "5", "1"):
            await pilot.press(key)
            await settle(pilot)
        assert table_text(app, "#services")[0][:3] == ["relay", "—", "up"]  # no address said


@pytest.mark.parametrize(
    ("mode", "line"),
    [
        ("garbage", "/status answered something that is not JSON"),
        ("hang", "no answer within 1 s"),
    ],
)
async def test_a_bad_endpoint_is_one_line(fake: FakeAdmin, mode: str, line: str) -> None:
    with serve(FakeAdmin(mode=mode)) as bad:
        app = make_dashboard(fake.url, bad.url)
        for client in app.clients.values():
            client.timeout = 1.0
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            alarms = str(app.screen.query_one("#alarms", Lines).render())
            assert f"! {bad.url[7:]}: {line}" in alarms.splitlines()
            rows = table_text(app, "#services")
            assert ["—", f"admin {bad.url[7:]}", "unreachable"] == rows[-1][:3]
            assert rows[0][:3] == ["relay", "10.0.0.2:9000", "up"]  # the good one still shows


async def test_a_service_down_endpoint(fake: FakeAdmin) -> None:
    app = make_dashboard("http://127.0.0.1:9")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        alarms = str(app.screen.query_one("#alarms", Lines).render())
        assert alarms == "! 127.0.0.1:9: cannot connect (connection refused)"


async def test_reload_acts_at_once_with_the_token(fake: FakeAdmin) -> None:
    app = make_dashboard(fake.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await settle(pilot)
        await pilot.press("r")
        await actions_done(pilot)
        posts = [s for s in fake.seen if s[0] == "POST"]
        assert posts == [("POST", "/nameserver/blocklists/reload", f"Bearer {TOKEN}", "")]
        result = str(app.screen.query_one("#result", Lines).render())
        assert result == "blocklists reloaded"


async def test_destructive_actions_ask_first(fake: FakeAdmin) -> None:
    app = make_dashboard(fake.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await settle(pilot)
        await pilot.press("d")
        await pilot.pause()
        await pilot.press(*"printer.retreat.lan", "enter")
        await pilot.pause()
        await pilot.press("n")  # no: nothing is sent
        await actions_done(pilot)
        assert not [s for s in fake.seen if s[0] == "DELETE"]
        await pilot.press("p")
        await pilot.pause()
        await pilot.press("1", "5", "enter")
        await pilot.pause()
        await pilot.press("y")
        await actions_done(pilot)
        assert (
            "POST",
            "/nameserver/blocking/pause",
            f"Bearer {TOKEN}",
            '{"minutes": 15}',
        ) in fake.seen


async def test_logs_filter_by_service_level_and_text(fake: FakeAdmin) -> None:
    fake.logs = [
        {
            "seq": 1,
            "at": "2026-01-01T10:00:00.000+00:00",
            "service": "relay",
            "level": "INFO",
            "logger": "retreatkit.relay",
            "message": "paired nameplate 7",
        },
        {
            "seq": 2,
            "at": "2026-01-01T10:00:01.000+00:00",
            "service": "nameserver",
            "level": "WARNING",
            "logger": "retreatkit.nameserver",
            "message": HOSTILE,
        },
        {
            "seq": 3,
            "at": "2026-01-01T10:00:02.000+00:00",
            "service": "nameserver",
            "level": "DEBUG",
            "logger": "retreatkit.nameserver",
            "message": "cache miss x.org",
        },
    ]
    app = make_dashboard(fake.url, follow_logs=True)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        await settle(pilot)
        while app.logs.received < 3:  # the stream is read in the background
            await pilot.pause()
        view = app.screen.query_one(LogView)

        def shown() -> list[str]:
            return [line[TEXT] for line in view.buffer.shown]

        assert len(shown()) == 3
        await pilot.press("s", "s", "s")  # all -> relay -> mirror -> nameserver
        assert [t.split()[1] for t in shown()] == ["nameserver", "nameserver"]
        await pilot.press("v")  # INFO and above
        assert shown() == [
            f"10:00:01 nameserver WARNING {app.logs.lines[1][TEXT].split('WARNING ')[1]}"
        ]
        assert "\\x1b]0;pwned" in shown()[0]
        await pilot.press("s", "s", "s", "v", "v", "v", "v", "slash", *"nameplate")
        assert isinstance(app.focused, Input)
        assert shown() == ["10:00:00 relay      INFO    paired nameplate 7"]
        text = screen_text(app)
        assert "paired nameplate 7" in text


async def test_quit_keys(fake: FakeAdmin) -> None:
    for key in ("q", "ctrl+c"):
        app = make_dashboard(fake.url)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press(key)
            await pilot.pause()
        assert app.return_value == 0


async def test_under_up_q_asks_before_it_stops_the_lans_services(fake: FakeAdmin) -> None:
    app = make_dashboard(fake.url)
    app.quit_stops = True
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        question = "Quit and stop mirror, nameserver, relay for everyone on the LAN?"
        assert question in screen_text(app)
        await pilot.press("enter")  # No has the focus: a stray Enter keeps them running
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen) and app.is_running
        await pilot.press("q", "y")
        await pilot.pause()
    assert app.return_value == 0
    app = make_dashboard(fake.url)
    app.quit_stops = True
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+c")  # deliberate: no question
        await pilot.pause()
    assert app.return_value == 0


async def test_only_the_organisers_quit_ends_the_dashboard_as_a_quit(fake: FakeAdmin) -> None:
    """Under `up`, exit code 0 stops every service: a dashboard that Textual ended for a
    failure (its input thread's, a byte that is not UTF-8) ended with 0 too, and took the
    LAN's services with it; it is 1 now, and `up` starts it again."""
    app = make_dashboard(fake.url)
    app.quit_stops = True
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.panic("the input thread failed")  # what Textual does when its input fails
    assert ended(app) == 1
    app = make_dashboard(fake.url)
    app.quit_stops = True
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("q", "y")
        await pilot.pause()
    assert ended(app) == 0


async def test_log_view_scrolled_back_stays_on_its_lines() -> None:
    app = make_dashboard("http://127.0.0.1:9")
    app.logs = LogBuffer(capacity=300)

    def add(first: int, count: int) -> None:
        records = [{"seq": i, "service": "relay", "level": "INFO"} for i in range(count)]
        app.logs.extend([{**r, "seq": r["seq"] + first} for r in records])

    add(1, 300)  # the ring is full
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        await settle(pilot)
        view = app.screen.query_one(LogView)
        height = view.content_size.height
        assert view.following and app.logs.shown[view.first()][SEQ] == 301 - height
        await pilot.press("pageup")
        top = app.logs.shown[view.first()][SEQ]
        assert not view.following and top == 301 - height - (height - 1)
        add(301, 20)  # the ring moves on by 20 lines: the view stays on the same ones
        assert app.logs.shown[view.first()][SEQ] == top
        assert "lines " in view.position()
        await pilot.press("end")
        assert view.following and app.logs.shown[view.first()][SEQ] == 321 - height


async def test_the_log_takes_the_arrows_as_the_logs_screen_opens() -> None:
    """The Logs screen's scroll keys work at once (they did nothing until Tab had been
    pressed twice), whichever screen it is opened from, and its footer still shows every
    key at 80 columns, `q Quit` included."""
    app = make_dashboard("http://127.0.0.1:9")
    app.logs = LogBuffer(capacity=300)
    message = "upstream http://192.0.2.1/simple/ is down: " + "x" * 80
    app.logs.extend(
        [{"seq": i, "service": "mirror", "level": "INFO", "message": message} for i in range(99)]
    )
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("5")
        await settle(pilot)
        view = app.screen.query_one(LogView)
        await pilot.press("pageup", "right")
        assert not view.following and view.x == 8
        footer = screen_text(app).rstrip().splitlines()[-1]
        assert footer.startswith("←→ Scroll") and footer.rstrip().endswith("q Quit"), footer
        await pilot.press("slash", *"x", "escape", "home")  # the filter, then the log again
        assert view.first() == 0 and not view.following
        await pilot.press("2", "5", "end", "up")
        assert not view.following


async def test_a_question_takes_its_default_and_a_cancel_says_so(fake: FakeAdmin) -> None:
    app = make_dashboard(fake.url)

    def result() -> str:
        return str(app.screen.query_one("#result", Lines).render())

    def sent() -> list[tuple[str, str, str | None, str]]:
        return [s for s in fake.seen if s[0] != "GET"]

    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("4")
        await settle(pilot)
        await pilot.press("p")
        await pilot.pause()
        assert app.screen.query_one(Input).placeholder == "15"
        assert str(app.screen.query_one("#hint", Label).render()) == "Enter: 15 · Escape: cancel"
        await pilot.press("enter")  # the empty field: the 15 it shows
        await pilot.pause()
        assert str(app.screen.query_one("#question", Label).render()).startswith(
            "Pause blocking for 15 min?"
        )
        await pilot.press("n")
        await actions_done(pilot)
        assert result() == "pausing blocking cancelled"
        await pilot.press("a")
        await pilot.pause()
        await pilot.press("escape")
        await actions_done(pilot)
        assert result() == "adding a local name cancelled"
        await pilot.press("d")  # an example is shown, never taken for an answer
        await pilot.pause()
        assert app.screen.query_one(Input).placeholder == "e.g. printer.retreat.lan"
        assert str(app.screen.query_one("#hint", Label).render()) == "Escape: cancel"
        await pilot.press("enter")
        await actions_done(pilot)
        assert result() == "removing a local name cancelled"
        assert sent() == []


async def test_the_newest_query_shows_on_an_80x24_terminal(fake: FakeAdmin) -> None:
    app = make_dashboard(fake.url)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        await settle(pilot)
        newest = table_text(app, "#queries")[0]
        assert newest[1:3] == ["10.0.0.8", "example.org"]
        assert re.search(r"10\.0\.0\.8\s+example\.org\s+AAAA\s+cached", screen_text(app))


async def test_the_dns_screen_lists_the_local_names(fake: FakeAdmin) -> None:
    app = make_dashboard(fake.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await settle(pilot)
        assert table_text(app, "#local") == [
            ["printer.retreat.lan", "A", "10.0.0.9"],
            ["wiki.retreat.lan", "CNAME", "www.retreat.lan"],
            ["... 1 more", "", ""],  # the endpoint listed 2 of its 3
        ]


async def test_two_apt_archives_of_one_host_stay_apart_at_80_columns(fake: FakeAdmin) -> None:
    """Their names are shown whole; a URL is shown whole too, or (here) not at all."""
    app = make_dashboard(fake.url)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        await settle(pilot)
        text = screen_text(app)
        assert re.search(r"^ +apt/debian +up +$", text, re.M), text
        assert re.search(r"^ +apt/debian-security +up +$", text, re.M), text
        assert "…" not in text.split("Upstreams")[1]


@pytest.mark.parametrize("word", ["refused", "réfusé"])  # one cell a character, and not
async def test_a_log_line_cut_at_the_right_edge_says_so(word: str) -> None:
    app = make_dashboard("http://127.0.0.1:9")
    app.logs = LogBuffer(capacity=10)
    message = f"upstream http://192.0.2.1/simple/ is down: connection {word} " + "x" * 80
    app.logs.extend([{"seq": 1, "service": "mirror", "level": "WARNING", "message": message}])
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("5")
        await settle(pilot)
        view = app.screen.query_one(LogView)
        row = view.render_line(0).text
        assert row.endswith("…") and len(row) == view.content_size.width
        await pilot.press(*["right"] * 30)  # to the end of the line
        assert view.render_line(0).text.rstrip().endswith("x")


async def test_a_redraw_cut_short_as_the_dashboard_quits_leaves_nothing_behind(
    fake: FakeAdmin,
) -> None:
    """A poll that asks for a redraw as the dashboard quits: the redraw is cancelled
    before it starts, and no coroutine is left never awaited (Python's warning on the
    terminal after the dashboard has gone)."""
    app = make_dashboard(fake.url)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.screen.reload()
        app.workers.cancel_node(app.screen)
        await pilot.pause()
    del app, pilot
    gc.collect()  # an unawaited coroutine's warning comes when it is collected
