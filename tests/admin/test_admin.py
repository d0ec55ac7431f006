from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter

from retreatkit.admin.app import make_app

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client() -> AsyncIterator[TestClient[object, object]]:
    registry = CollectorRegistry()
    Counter("demo_things", "things", registry=registry).inc(3)
    app = make_app(registry, {"demo": lambda: {"ok": True}}, token=TOKEN)
    async with TestClient(TestServer(app), headers=AUTH) as c:
        yield c
    logging.getLogger("retreatkit").setLevel(logging.NOTSET)
    logging.getLogger("retreatkit.relay").setLevel(logging.NOTSET)


async def test_healthz_status_metrics(client: TestClient[object, object]) -> None:
    assert (await (await client.get("/healthz")).text()) == "ok\n"
    status = await (await client.get("/status")).json()
    assert status["demo"] == {"ok": True}
    metrics = await client.get("/metrics")
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert "demo_things_total 3.0" in await metrics.text()


async def test_loglevel(client: TestClient[object, object]) -> None:
    r = await client.put("/loglevel", data="debug")
    assert r.status == 200 and (await r.json()) == {"logger": "retreatkit", "level": "DEBUG"}
    assert logging.getLogger("retreatkit").level == logging.DEBUG
    r = await client.put("/loglevel", json={"level": "warning", "logger": "retreatkit.relay"})
    assert r.status == 200
    assert logging.getLogger("retreatkit.relay").level == logging.WARNING
    status = await (await client.get("/status")).json()
    assert status["process"]["log_level"] == "DEBUG"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("loud", "unknown level 'LOUD'; one of DEBUG, INFO, WARNING, ERROR, CRITICAL\n"),
        ('{"level": "info", "logger": "aiohttp"}', "only retreatkit loggers can be set\n"),
        ("{nope", 'expected {"level": "...", "logger": "..."}\n'),
    ],
)
async def test_loglevel_rejects(
    client: TestClient[object, object], body: str, message: str
) -> None:
    r = await client.put("/loglevel", data=body)
    assert r.status == 400
    assert await r.text() == message
