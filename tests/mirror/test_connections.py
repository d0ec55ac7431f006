"""Half-sent requests are bounded (item 8): per-address and total caps turn the excess away
at once, and a connection with no complete request is closed after the idle timeout."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from retreatkit.httpserver import REFUSAL, REFUSAL_ALL, GuardedSite
from retreatkit.mirror.app import make_app
from retreatkit.mirror.server import Gate
from retreatkit.mirror.service import Mirror
from retreatkit.mirror.testing import settings

HALF = b"GET /pypi/simple/ HTTP/1.1\r\nHost: mirror\r\n"  # no blank line: never complete


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[int, Mirror, Gate]]:
    async with aiohttp.ClientSession() as session:
        mirror = Mirror(settings(tmp_path / "store"), session)
        gate = Gate(per_address=4, total=6, stats=mirror.stats)
        runner = web.AppRunner(make_app(mirror), access_log=None, keepalive_timeout=0.3)
        await runner.setup()
        site = GuardedSite(runner, "127.0.0.1", 0, gate)
        await site.start()
        try:
            yield site.port, mirror, gate
        finally:
            await runner.cleanup()
            await mirror.close()


class Clients:
    def __init__(self, port: int) -> None:
        self.port = port
        self.writers: list[asyncio.StreamWriter] = []

    async def connect(self, source: str = "127.0.0.1", send: bytes = HALF) -> asyncio.StreamReader:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.port, local_addr=(source, 0)
        )
        self.writers.append(writer)
        writer.write(send)
        await writer.drain()
        return reader

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def test_half_sent_requests_are_capped_per_address_and_timed_out(
    served: tuple[int, Mirror, Gate],
) -> None:
    port, mirror, gate = served
    clients = Clients(port)
    try:
        async with asyncio.timeout(30):  # a guard against a hang, not a measurement
            held = [await clients.connect() for _ in range(4)]
            # (the refused send nothing: bytes unread when a socket closes make it a reset)
            refused = [await clients.connect(send=b"") for _ in range(2)]
            for reader in refused:  # turned away at once, with a line that says why
                assert await reader.read() == REFUSAL
            assert gate.by_address["127.0.0.1"] == 4
            other = [await clients.connect("127.0.0.2") for _ in range(2)]
            third = await clients.connect("127.0.0.2", send=b"")
            assert await third.read() == REFUSAL_ALL  # the total cap (6), across addresses
            for reader in held + other:  # no complete request: closed by the idle timeout
                assert await reader.read() == b""
            assert gate.open == 0 and mirror.stats.connections_refused == 3
            async with aiohttp.ClientSession() as client:
                r = await client.get(f"http://127.0.0.1:{port}/pypi/simple/")
                assert r.status == 200
    finally:
        await clients.close()
