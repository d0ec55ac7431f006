"""Fixtures for the dashboard: a fake admin endpoint per test, and a real nameserver."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import dns.asyncquery
import dns.message
import pytest
from prometheus_client import CollectorRegistry

from retreatkit.admin.app import make_app, start
from retreatkit.nameserver.fakes import FakeTransport, ManualClock, Zone
from retreatkit.nameserver.service import Nameserver, Settings
from retreatkit.tui.testing import TOKEN, FakeAdmin, serve, time_zone

ZONE = Zone("$TTL 300\n@ SOA ns.test. h.test. 1 3600 600 86400 60\nwww.example A 198.51.100.7\n")
UPSTREAM = ("192.0.2.53", 53)


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """The dashboard shows times in the local time zone: UTC here, whatever the machine's,
    so the times a test pins are those the fixtures give (a test may set another)."""
    with time_zone("UTC"):
        yield


@pytest.fixture
def fake() -> Iterator[FakeAdmin]:
    with serve(FakeAdmin()) as admin:
        yield admin


@dataclass
class LiveNameserver:
    """The nameserver itself on loopback (UDP and TCP) and its part of a real admin
    endpoint: the /status and the action answers the dashboard meets in `retreatkit up`.
    Its upstream is in memory (no internet here); its clock stands still at
    2027-01-15T08:00:00Z."""

    ns: Nameserver
    url: str
    port: int
    lists: Path
    now: float = 1_800_000_000.0  # its wall clock: the dashboard's too, in a test

    async def ask(self, name: str) -> None:
        await dns.asyncquery.udp(dns.message.make_query(name, "A"), "127.0.0.1", 2.0, self.port)


@pytest.fixture
async def live_nameserver(tmp_path: Path) -> AsyncIterator[LiveNameserver]:
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "blocks.txt").write_text(
        "ads.example.test\ntracker.example.test\n0.0.0.0 x.example.test\n||y.example.test^\n"
        "this is not a rule ###\n"
    )
    async with live(lists, [str(lists / "blocks.txt"), str(lists / "gone.txt")]) as ns:
        yield ns


@pytest.fixture
async def listless_nameserver(tmp_path: Path) -> AsyncIterator[LiveNameserver]:
    """The same with no blocklist configured."""
    async with live(tmp_path, []) as ns:
        yield ns


@asynccontextmanager
async def live(lists: Path, blocklists: list[str]) -> AsyncIterator[LiveNameserver]:
    clock = ManualClock()
    settings = Settings(listen=("127.0.0.1", 0), upstreams=[UPSTREAM], blocklists=blocklists)
    wall = lambda: 1_799_999_000.0 + clock()  # noqa: E731
    upstream = FakeTransport({UPSTREAM: ZONE.answer})
    ns = Nameserver(settings, clock=clock, wall=wall, transport=upstream)
    lines: list[str] = []
    await ns.start(CollectorRegistry(), lines.append)
    await ns.reload()
    [port] = [int(m[1]) for x in lines if (m := re.search(r"listening on [\d.]+:(\d+)", x))]
    app = make_app(CollectorRegistry(), {"nameserver": ns.status}, ns.admin_routes(), token=TOKEN)
    runner, (host, admin_port) = await start(app, "127.0.0.1", 0)
    try:
        yield LiveNameserver(ns, f"http://{host}:{admin_port}", port, lists)
    finally:
        await runner.cleanup()
        await ns.stop()
