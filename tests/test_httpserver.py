"""Malformed and oversized requests to the kit's HTTP endpoints (the mirror, the admin
endpoint): a status and one fixed line for the client, none of its bytes; one log line a
minute at most, no traceback (item 5). Real servers on real sockets, raw bytes sent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from retreatkit.admin import app as admin
from retreatkit.httpserver import Runner
from retreatkit.mirror import resolver
from retreatkit.mirror import server as mirror_server
from retreatkit.mirror.service import Mirror
from retreatkit.mirror.testing import settings

PAD = b"a" * 100_000
GOOD = b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
BAD = {  # what a client sends -> what it gets back
    "long URL": (
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"414 Request-URI Too Long", b"URL too long: the limit is 8 KB\n",
    ),
    "huge header": (
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + PAD + b"\r\n\r\n",
        b"431 Request Header Fields Too Large",
        b"request header too long: the limit is 8 KB a line\n",
    ),
    "many headers": (
        b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(200))
        + b"\r\n",
        b"431 Request Header Fields Too Large", b"too many request headers: the limit is 128\n",
    ),
    "bad chunks": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\naaaa\r\n0\r\n\r\n",
        b"400 Bad Request", b"malformed HTTP request\n",
    ),
    "control character in Host": (
        b"GET / HTTP/1.1\r\nHost: a\x01aaaa\r\n\r\n",
        b"400 Bad Request", b"malformed HTTP request\n",
    ),
}  # fmt: skip


async def exchange(port: int, request: bytes) -> tuple[bytes, bytes]:
    """(status line after the version, body) of the answer to raw `request`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].split(b" ", 1)[1], body


@pytest.fixture(params=["mirror", "admin"])
async def endpoint(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Runner]:
    if request.param == "admin":
        app = admin.make_app(CollectorRegistry(), {}, token="t" * 32)
        runner, _ = await admin.start(app, "127.0.0.1", 0)
        assert isinstance(runner, Runner)
        yield runner
        await runner.cleanup()
        return
    async with resolver.session() as session:
        mirror = Mirror(settings(tmp_path / "store"), session)
        runner, _ = await mirror_server.listen(mirror, "127.0.0.1", 0)
        assert isinstance(runner, Runner)
        yield runner
        await runner.cleanup()
        await mirror.close()


async def test_malformed_requests_get_one_line_and_the_log_one_line_a_minute(
    endpoint: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    endpoint.refusals.clock = lambda: now[0]
    port = endpoint.addresses[0][1]
    for name, (sent, status, line) in BAD.items():
        assert await exchange(port, sent) == (status, line), name
    assert (await exchange(port, GOOD % b"/healthz"))[0] != b""  # still serving
    noted = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert [r.getMessage() for r in noted] == [
        "refused a malformed request from 127.0.0.1: URL too long: the limit is 8 KB (414)"
    ]
    assert all(r.exc_info is None for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    now[0] += 60.0  # a minute on: one more line, with the count of the rest
    assert (await exchange(port, BAD["bad chunks"][0]))[0] == b"400 Bad Request"
    assert [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()][1] == (
        "refused a malformed request from 127.0.0.1: malformed HTTP request (400);"
        " 4 more since the last such line"
    )
    assert endpoint.refusals.count == 6


async def test_a_handlers_own_failure_still_shows_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug is not a client's bad request: aiohttp's 500 and traceback stay."""

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app = web.Application()
    app.router.add_get("/", broken)
    runner = Runner(app, logging.getLogger("retreatkit.test"))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        status, _ = await exchange(runner.addresses[0][1], GOOD % b"/")
        assert status == b"500 Internal Server Error"
        assert any(r.exc_info is not None for r in caplog.records)
    finally:
        await runner.cleanup()


async def test_requests_are_logged_only_once_debug_is_asked_for(
    endpoint: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    """What the organiser sees after `PUT /loglevel` debug: each request, one line."""
    port = endpoint.addresses[0][1]
    logger = endpoint.refusals.log
    caplog.set_level(logging.INFO, logger=logger.name)
    await exchange(port, GOOD % b"/healthz")
    assert not [r for r in caplog.records if "/healthz" in r.getMessage()]
    caplog.set_level(logging.DEBUG, logger=logger.name)
    await exchange(port, GOOD % b"/healthz?x=1")
    [line] = [r.getMessage() for r in caplog.records if "/healthz" in r.getMessage()]
    assert line.startswith("127.0.0.1 GET /healthz?x=1 ")
