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


DEEP = b'{"level": ' + b"[" * 2000 + b"]" * 2000 + b"}"  # deeper than Python recurses


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        (None, b"\xff\xfedebug", "the body is not UTF-8 text\n"),
        ("text/plain; charset=nosuch", b"debug", "unknown charset in Content-Type: send UTF-8\n"),
        ("text/plain; charset=rot13", b"debug", "unknown charset in Content-Type: send UTF-8\n"),
        ("text/plain; charset=us-ascii", "débug".encode(), "the body is not ascii text\n"),
        (None, DEEP, 'expected {"level": "...", "logger": "..."}\n'),
    ],
    ids=["not-utf-8", "unknown-charset", "not-a-text-codec", "not-ascii", "nested-2000-deep"],
)
async def test_loglevel_refuses_a_body_it_cannot_read_in_one_line(
    client: TestClient[object, object],
    caplog: pytest.LogCaptureFixture,
    content_type: str | None,
    body: bytes,
    message: str,
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    with caplog.at_level(logging.DEBUG):
        r = await client.put("/loglevel", data=body, headers=headers)
        assert (r.status, await r.text()) == (400, message)
    assert [record.getMessage() for record in caplog.records if record.exc_info] == []
    assert logging.getLogger("retreatkit").level == logging.NOTSET
