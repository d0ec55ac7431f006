"""The DNS screen over a real nameserver (its core, its sockets and its admin routes, in
process): the /status and the action answers exactly as the server writes them, so the
screen cannot drift from what the nameserver sends."""

from __future__ import annotations

from retreatkit.tui.app import Dashboard
from retreatkit.tui.testing import make_dashboard, settle
from retreatkit.tui.widgets import Table

from .conftest import LiveNameserver

SIZE = (150, 60)


def rows(app: Dashboard, table_id: str) -> list[list[str]]:
    table = app.screen.query_one(table_id, Table)
    return [[cell.plain for cell in table.get_row_at(i)] for i in range(table.row_count)]


async def test_blocklists_list_each_source(live_nameserver: LiveNameserver) -> None:
    lists = live_nameserver.lists
    app = make_dashboard(live_nameserver.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await settle(pilot)
        assert rows(app, "#lists") == [
            [f"{lists}/blocks.txt", "4", "1", "08:00:00", ""],
            [f"{lists}/gone.txt", "0", "0", "never", "No such file or directory"],
        ]
