"""Times as the organiser reads them at the event, on every screen alike: the room's
clock (`18:47` today; a day's date before it otherwise), seconds only in the live lists,
and an age for how long something has been down (`3 min ago`); never an ISO timestamp,
never UTC for an organiser in Berlin."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from retreatkit.tui import times
from retreatkit.tui.testing import (
    FakeAdmin,
    canned,
    lists,
    make_dashboard,
    scrolled_through,
    serve,
    settle,
    time_zone,
)

# 2026-12-04 17:50:12 UTC: 18:50:12 in Berlin
NOW = datetime(2026, 12, 4, 17, 50, 12, tzinfo=UTC).timestamp()
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")


@pytest.mark.parametrize(
    ("at", "utc", "berlin"),
    [
        ("2026-12-04T17:47:12Z", "17:47", "18:47"),
        ("2026-12-04T17:47:12.123456+00:00", "17:47", "18:47"),
        ("2026-12-04T18:47:12+01:00", "17:47", "18:47"),  # another offset, the same moment
        ("2026-12-04T23:30:00Z", "23:30", "5 Dec 00:30"),  # today in UTC, tomorrow here
        ("2026-12-03T17:50:12Z", "3 Dec 17:50", "3 Dec 18:50"),
        ("2025-12-04T17:50:12Z", "4 Dec 2025 17:50", "4 Dec 2025 18:50"),
        ("2026-12-04T17:47:12", "17:47", "18:47"),  # no offset: the admin API's UTC
        ("9999-12-31T23:59:59-23:59", "—", "—"),  # past what a datetime holds, once moved
        ("2026-12-04", "—", "—"),  # a date is no moment
        ("17:47", "—", "—"),
        ("2026-12-04Tnoon", "—", "—"),
        ("2026-12-04T17:47:12Z" + " " * 100, "—", "—"),
        (None, "—", "—"),
        (1796406432, "—", "—"),
    ],
)
def test_a_moment_reads_as_the_organisers_clock(at: Any, utc: str, berlin: str) -> None:
    with time_zone("UTC"):
        assert times.clock(at, NOW) == utc
    with time_zone("Europe/Berlin"):
        assert times.clock(at, NOW) == berlin


def test_the_live_lists_keep_the_seconds() -> None:
    with time_zone("Europe/Berlin"):
        assert times.clock("2026-12-04T17:50:02.5Z", NOW, seconds=True) == "18:50:02"
        assert times.clock("2026-12-03T17:50:02Z", NOW, seconds=True) == "3 Dec 18:50:02"


@pytest.mark.parametrize(
    ("at", "shown"),
    [
        ("2026-12-04T17:49:40Z", "just now"),
        ("2026-12-04T17:50:40Z", "just now"),  # its clock a little ahead of ours
        ("2026-12-04T17:47:12Z", "3 min ago"),
        ("2026-12-04T15:45:00Z", "2 h 5 min ago"),
        ("2026-12-04T15:50:12Z", "2 h ago"),
        ("2026-12-03T17:00:00Z", "1 day ago"),
        ("2026-11-20T17:00:00Z", "14 days ago"),
        ("2026-12-04T19:00:00Z", "19:00"),  # ahead of now: no age, its time
        ("soon", "—"),
    ],
)
def test_how_long_ago_reads_as_an_age(at: str, shown: str) -> None:
    with time_zone("UTC"):
        assert times.ago(at, NOW) == shown


def test_a_services_words_read_their_moments_as_the_clock() -> None:
    with time_zone("Europe/Berlin"):
        line = "upstream down: https://pypi.org since 2026-12-04T17:47:12Z (timed out); serving"
        assert times.clocks(line, NOW) == (
            "upstream down: https://pypi.org since 18:47 (timed out); serving"
        )
        expiry = "its Release expires at 2026-12-05T09:00:00+00:00; offline, apt then needs"
        assert (
            times.clocks(expiry, NOW)
            == "its Release expires at 5 Dec 10:00; offline, apt then needs"
        )
        assert times.clocks("version 2026-12-04", NOW) == "version 2026-12-04"  # a date alone


def at_event() -> tuple[dict[str, Any], dict[str, Any]]:
    """A /status and lists whose moments are those a mirror, a relay and a nameserver
    give on 4 December, minutes before NOW."""
    status = canned("numpy")
    mirror = status["mirror"]
    mirror["warnings"] = [
        "upstream down: https://pypi.org since 2026-12-04T17:47:12Z (timed out);"
        " serving what the store holds",
        "apt debian/bookworm: its Release expires at 2026-12-05T09:00:00Z; offline, apt then"
        " needs [check-valid-until=no] in its sources line",
    ]
    mirror["upstreams"]["pypi"]["down_since_at"] = "2026-12-04T17:47:12Z"
    status["nameserver"]["blocklists"][0]["loaded_at"] = "2026-12-04T17:00:02Z"
    status["nameserver"]["blocking"] = "paused until 2026-12-04T18:05:12Z"
    found = lists("numpy")
    for fetch in (*found["/mirror/fetches"]["in_progress"], *found["/mirror/fetches"]["recent"]):
        fetch["started_at"] = "2026-12-04T17:49:30Z"
    for transfer in (*found["/relay/transfers"]["active"], *found["/relay/transfers"]["recent"]):
        transfer["started_at"] = "2026-12-04T17:48:00Z"
    for i, query in enumerate(found["/nameserver/queries"]["queries"]):
        query["at"] = f"2026-12-04T17:50:0{i}.250Z"
    return status, found


async def test_every_screen_shows_the_times_of_the_room_in_berlin() -> None:
    status, found = at_event()
    with time_zone("Europe/Berlin"), serve(FakeAdmin(status=status, lists=found)) as fake:
        app = make_dashboard(fake.url, wall=NOW)
        async with app.run_test(size=(80, 24)) as pilot:
            shown = {}
            for key in "1234":
                await pilot.press(key)
                await settle(pilot)
                shown[key] = "\n".join(await scrolled_through(pilot))
    for key, text in shown.items():
        assert not ISO.search(text), f"an ISO time on screen {key}:\n{text}"
    mirror = shown["3"]
    assert "! upstream down: https://pypi.org since 18:47 (timed out); serving what" in mirror
    assert "its Release expires at 5 Dec 10:00; offline," in mirror
    assert re.search(r"^ +pypi +down +3 min ago +42s +connection refused", mirror, re.M)
    assert re.search(r"^ +pypi +numpy +numpy\.whl +1\.0 kB +4\.0 kB +18:49 +fetching", mirror, re.M)
    assert "since 18:47" in shown["1"]  # the overview's alarms, alike
    assert re.search(r"^ +7 +1\.0 MB +262 kB/s +4s +18:48 +active", shown["2"], re.M)
    dns = shown["4"]
    assert "blocking paused until 19:05" in dns
    assert re.search(r"^ +18:50:01 +10\.0\.0\.8 +example\.org +AAAA +cached", dns, re.M)
    assert re.search(r"^ +/srv/ads\.txt +1,200 +3 +18:00 ", dns, re.M)
