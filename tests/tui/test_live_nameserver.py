"""The DNS screen over a real nameserver (its core, its sockets and its admin routes, in
process): the /status and the action answers exactly as the server writes them, so the
screen cannot drift from what the nameserver sends."""

from __future__ import annotations

import logging
import re

import dns.asyncquery
import dns.message
from textual.widgets import Input

from retreatkit.tui import views
from retreatkit.tui.app import Dashboard
from retreatkit.tui.testing import (
    actions_done,
    make_dashboard,
    screen_text,
    scrolled_through,
    settle,
)
from retreatkit.tui.widgets import Lines, Table

from .conftest import LiveNameserver

SIZE = (100, 40)


def rows(app: Dashboard, table_id: str) -> list[list[str]]:
    table = app.screen.query_one(table_id, Table)
    return [[cell.plain for cell in table.get_row_at(i)] for i in range(table.row_count)]


async def test_blocklists_list_each_source(live_nameserver: LiveNameserver) -> None:
    lists = live_nameserver.lists
    app = make_dashboard(live_nameserver.url, wall=live_nameserver.now)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await settle(pilot)
        [endpoint] = app.state.endpoints.values()
        assert views.blocklist_rows(endpoint, live_nameserver.now) == [
            (f"{lists}/blocks.txt", "4", "1", "08:00", ""),
            (f"{lists}/gone.txt", "0", "0", "never", "No such file or directory"),
        ]
        shown = rows(app, "#lists")  # a long path keeps its end: the file's name
        assert shown[0][0].startswith("…") and shown[0][0].endswith("/lists/blocks.txt")
        assert shown[1][0].endswith("/lists/gone.txt")
        assert [row[1:] for row in shown] == [
            ["4", "1", "08:00", ""],
            ["0", "0", "never", "No such file or directory"],
        ]


async def test_no_blocklist_configured_says_so_before_and_after_a_reload(
    listless_nameserver: LiveNameserver,
) -> None:
    app = make_dashboard(listless_nameserver.url, wall=listless_nameserver.now)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await settle(pilot)
        assert rows(app, "#lists") == [["none configured", "", "", "", ""]]
        await pilot.press("r")
        await actions_done(pilot)
        assert str(app.screen.query_one("#result", Lines).render()) == (
            "blocklists reloaded: none configured"
        )
        assert rows(app, "#lists") == [["none configured", "", "", "", ""]]


async def test_every_action_answers_in_plain_words(live_nameserver: LiveNameserver) -> None:
    """What each action's real answer reads as, after the organiser's keys."""
    await live_nameserver.ask("www.example.test")  # cached: a flush has something to drop
    app = make_dashboard(live_nameserver.url, wall=live_nameserver.now)
    level = logging.getLogger("retreatkit").level

    async def act(*steps: str) -> str:
        """Each step a key, or a line ("...\n") typed into the question asked."""
        for step in steps:
            if step.endswith("\n"):
                app.screen.query_one(Input).value = step[:-1]  # typing it is slow, not different
                step = "enter"
            await pilot.press(step)
            await pilot.pause()
        await actions_done(pilot)
        return str(app.screen.query_one("#result", Lines).render())

    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await settle(pilot)
        assert await act("r") == (
            "blocklists reloaded: 4 entries from blocks.txt (1 bad line skipped);"
            " gone.txt failed (No such file or directory)"
        )
        assert await act("p", "15\n", "y") == "blocking paused until 08:15"
        assert await act("p", "0\n") == "blocking on"
        assert await act("a", "wiki.retreat.lan 10.0.0.9\n") == "added wiki.retreat.lan: A 10.0.0.9"
        await settle(pilot)
        assert ["wiki.retreat.lan", "A", "10.0.0.9"] in rows(app, "#local")  # listed: d can see it
        flush = ("f", "www.example.test\n", "y")
        assert await act(*flush) == "flushed www.example.test: 1 cache entry dropped"
        assert await act(*flush) == "www.example.test was not in the cache"
        remove = ("d", "wiki.retreat.lan\n", "y")
        assert await act(*remove) == "removed wiki.retreat.lan"
        assert await act(*remove) == (
            f"{live_nameserver.url[7:]}: no local record named wiki.retreat.lan"
        )
        await pilot.press("5")
        await settle(pilot)
        try:
            assert await act("L", "debug\n") == "retreatkit now logs at DEBUG and above"
        finally:
            logging.getLogger("retreatkit").setLevel(level)


async def test_80x24_shows_every_column_and_the_newest_query(
    live_nameserver: LiveNameserver,
) -> None:
    """The smallest terminal: each table's every column, the footer's keys and the
    alarm count show, scrolled through; at the top, a new query shows as it comes."""
    name = "a-rather-long-name-that-a-laptop-asked-for.www.example.test"
    await live_nameserver.ask(name)
    app = make_dashboard(live_nameserver.url, wall=live_nameserver.now)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        await settle(pilot)
        text = "\n".join(await scrolled_through(pilot))
        assert re.search(r"^ +Time +Client +Name +Type +Answer +ms\b", text, re.M)
        assert re.search(
            r"^ +08:00:00 +127\.0\.0\.1 +a-rather-long-name-.*… +A +forwarded NXDOMAIN +\d",
            text,
            re.M,
        )
        assert re.search(r"Name +Queries +Name +Queries", text)  # top domains, top blocked
        assert re.search(r"^ +Client +Queries\b", text, re.M)
        assert re.search(r"^ +Address +State +Latency\b", text, re.M)
        assert re.search(r"^ +Source +Entries +Bad lines +Loaded +Last error\b", text, re.M)
        assert (
            "r Reload p Pause a Add name d Remove f Flush / Filter  123456 Screens q Quit" in text
        )
        assert re.search(r"^ +retreatkit · Nameserver · 1 alarm · 127\.0\.0\.1:\d+ *$", text, re.M)
        await live_nameserver.ask("ads.example.test")
        app.screen.query_one("#body").scroll_home(animate=False, immediate=True)
        await settle(pilot)
        newest = screen_text(app).split(" Time ", 1)[1].splitlines()[1]
        assert re.match(r" 08:00:00 +127\.0\.0\.1 +ads\.example\.test +A +blocked +\d", newest)


async def test_a_local_name_typed_as_dnsmasq_and_hosts_files_have_it_answers(
    live_nameserver: LiveNameserver,
) -> None:
    """`NAME=ADDRESS` (dnsmasq's address=, the form organisers type) and a hosts-file
    line are added as the nameserver's own answer; a mistake is one line, nothing set."""
    app = make_dashboard(live_nameserver.url, wall=live_nameserver.now)

    async def add(typed: str) -> str:
        await pilot.press("a")
        await pilot.pause()
        app.screen.query_one(Input).value = typed
        await pilot.press("enter")
        await actions_done(pilot)
        return str(app.screen.query_one("#result", Lines).render())

    async def answer(name: str, rdtype: str) -> list[str]:
        query = dns.message.make_query(name, rdtype)
        reply = await dns.asyncquery.udp(query, "127.0.0.1", 2.0, live_nameserver.port)
        return [r.to_text() for rrset in reply.answer for r in rrset]

    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        await settle(pilot)
        assert await add("printer.retreat.lan=10.0.0.9") == "added printer.retreat.lan: A 10.0.0.9"
        assert await add("fd00::9 printer.retreat.lan") == "added printer.retreat.lan: AAAA fd00::9"
        assert await add("wiki.retreat.lan=10.0.0.999") == "not an IP address: 10.0.0.999"
        await settle(pilot)
        assert rows(app, "#local") == [
            ["printer.retreat.lan", "A", "10.0.0.9"],
            ["printer.retreat.lan", "AAAA", "fd00::9"],
        ]
    assert await answer("printer.retreat.lan", "A") == ["10.0.0.9"]
    assert await answer("printer.retreat.lan", "AAAA") == ["fd00::9"]
    assert await answer("wiki.retreat.lan", "A") == []
