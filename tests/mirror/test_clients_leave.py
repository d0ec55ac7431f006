"""A client that gives up mid-answer (pip's timeout and its resume by Range, curl -m) is
normal: the mirror says so in one DEBUG line, never a traceback, and keeps the file."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Iterator

import aiohttp
import pytest

from retreatkit.mirror.server import listen
from tests.mirror.conftest import Env

LEFT = "client 127.0.0.1 left before {} was sent"


class Watch(logging.Handler):
    """Every record, and an event once the answer to the client that left is over: the
    mirror's line that it left, or aiohttp's traceback of the same."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.over = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if record.name == "aiohttp.server" or " left before " in record.getMessage():
            self.over.set()


@pytest.fixture
def watch() -> Iterator[Watch]:
    watch = Watch()
    loggers = [logging.getLogger(n) for n in ("aiohttp.server", "retreatkit.mirror")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(watch)
        lg.setLevel(logging.DEBUG)
    yield watch
    for lg, level in zip(loggers, levels, strict=True):
        lg.removeHandler(watch)
        lg.setLevel(level)


async def test_a_client_that_leaves_while_its_file_is_fetched_is_one_debug_line(
    env: Env, watch: Watch
) -> None:
    url = await env.file_url("big-pkg")  # sent by sendfile once held
    name = url.rsplit("/", 1)[1]
    env.upstream.rules[f"/files/{name}"] = "wait"
    env.upstream.asked.clear()
    # the mirror's own server: aiohttp's test server cancels a handler whose client left,
    # which the mirror's does not, so only the real one meets what pip's resume met
    runner, _ = await listen(env.mirror, "127.0.0.1", 0)
    try:
        await left(env, runner.addresses[0][1], url, name, watch)
    finally:
        await runner.cleanup()


async def left(env: Env, port: int, url: str, name: str, watch: Watch) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    # pip resuming a cut download: a Range, answered from the verified whole
    writer.write(f"GET {url} HTTP/1.1\r\nHost: mirror\r\nRange: bytes=100-\r\n\r\n".encode())
    await writer.drain()
    await env.upstream.asked.wait()  # the mirror is fetching it for this client
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # it gives up: a reset, as a killed client's kernel sends
    # another request's answer: the mirror has read the reset by then (one loop, loopback)
    page = f"http://127.0.0.1:{port}/pypi/simple/demo-pkg/"
    async with aiohttp.ClientSession() as other, other.get(page) as r:
        assert r.status == 200
    env.upstream.release.set()
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        await watch.over.wait()
    said = [(r.name, r.levelname, r.getMessage()) for r in watch.records if r.levelno >= 10]
    said = [s for s in said if s[0] == "aiohttp.server" or "left" in s[2]]
    assert said == [("retreatkit.mirror", "DEBUG", LEFT.format(url))]
    assert not [r for r in watch.records if r.exc_info]
    # the file was kept all the same: the next client gets it from the store
    r = await env.client.get(url)
    assert await r.read() == env.wheels["big-pkg"][1] and r.headers["X-Cache"] == "HIT"
    assert env.fetched(name) == 1
