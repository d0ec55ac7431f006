"""An SVG snapshot of each screen: fixed data, a clock that stands still, a fixed size."""

from __future__ import annotations

from typing import Any

import pytest
from textual.pilot import Pilot

from retreatkit.tui.testing import FakeAdmin, guest, make_dashboard, settle

SIZE = (150, 50)


@pytest.mark.parametrize("key", ["1", "2", "3", "4", "5", "6"])
def test_screen(snap_compare: Any, fake: FakeAdmin, key: str) -> None:
    # it supervises guests too; their admin endpoints are not reported, so none is watched
    fake.guests = [
        guest("relay", "relay", None),
        {**guest("mirror", "mirror", None), "state": "restarting", "uptime_seconds": 0.0},
        guest("nameserver", "nameserver", None, state="failed"),
    ]
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
            "message": "[@click=app.quit]x[/] [bold]boom \x1b[2J\u202etxt.exe",
        },
    ]
    app = make_dashboard(fake.url, follow_logs=key == "5", label="10.0.0.2:8080")

    async def run_before(pilot: Pilot[int]) -> None:
        await pilot.press(key)
        await settle(pilot)
        while key == "5" and pilot.app.logs.received < 2:  # type: ignore[attr-defined]
            await pilot.pause()
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


NARROW = (80, 24)  # the smallest terminal the dashboard is made for


def test_dns_at_80x24(snap_compare: Any, fake: FakeAdmin) -> None:
    """The query log on the first screenful: every column shows, long names cut with
    an ellipsis, addresses and answers whole."""
    app = make_dashboard(fake.url, label="10.0.0.2:8080")

    async def run_before(pilot: Pilot[int]) -> None:
        await pilot.press("4")
        await settle(pilot)

    assert snap_compare(app, terminal_size=NARROW, run_before=run_before)


def test_a_question_at_80x24(snap_compare: Any, fake: FakeAdmin) -> None:
    """A confirmation whose question is wider than the dialog: wrapped, not cut."""
    app = make_dashboard(fake.url, label="10.0.0.2:8080")

    async def run_before(pilot: Pilot[int]) -> None:
        await pilot.press("4")
        await settle(pilot)
        await pilot.press("f", *"example.org", "enter")

    assert snap_compare(app, terminal_size=NARROW, run_before=run_before)
