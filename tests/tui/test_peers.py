"""Endpoints that answer in ways a contract does not promise: a status that comes in pieces
over a slow link, one far too large. Each is one line for that endpoint; the others, and
the polling, go on."""

from __future__ import annotations

import asyncio
import json

import pytest

from retreatkit.tui.app import Dashboard
from retreatkit.tui.sources import MAX_BODY
from retreatkit.tui.testing import FakeAdmin, canned, make_dashboard, serve, settle
from retreatkit.tui.widgets import Lines, Table

SIZE = (150, 60)
WAIT = 30  # seconds: a fault that stops the dashboard fails its test rather than hang it


def alarms(app: Dashboard) -> list[str]:
    return str(app.screen.query_one("#alarms", Lines).render()).splitlines()


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
    body = b'{"pad": "' + b"x" * MAX_BODY + b'"}'
    with serve(FakeAdmin(raw={"/status": body}, pieces=pieces)) as big:
        app = make_dashboard(fake.url, big.url)
        async with app.run_test(size=SIZE) as pilot:
            async with asyncio.timeout(WAIT):
                await settle(pilot)
            assert (
                f"! {big.url[7:]}: /status answered more than 8.4 MB, far more than an admin"
                " endpoint sends"
            ) in alarms(app)
            assert states(app)[-1] == ["—", f"admin {big.url[7:]}", "unreachable"]
            assert states(app)[0] == ["relay", "10.0.0.2:9000", "up"]
