"""Stopping the mirror is prompt whatever is slow (an upstream trickling a download, one
never answering a page, a client that stops reading), and leaves no partial file (item 4).
The service runs in process on a real socket, as `retreatkit up` hosts it."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry

from retreatkit.mirror import fakeupstream
from retreatkit.mirror.hosted import MirrorService
from retreatkit.mirror.testing import make_wheel, settings, write_pypi
from retreatkit.mirror.uplink import Limits
from tests.mirror.conftest import JSON, wheel_set


async def test_stop_is_prompt_behind_slow_peers_and_keeps_no_partial_file(tmp_path: Path) -> None:
    wheels = wheel_set()
    huge = make_wheel("huge-pkg", "1.0", pad=16 << 20)  # more than the sockets between hold
    write_pypi(tmp_path / "up", {**{n: [w] for n, w in wheels.items()}, "huge-pkg": [huge]})
    store = tmp_path / "store"
    async with fakeupstream.serving(tmp_path / "up") as upstream:
        upstream.drips = asyncio.Queue()  # a trickle that never gets its next byte
        limits = Limits(connect_timeout=2.0, headers_timeout=3600.0)  # pages wait for ever
        service = MirrorService(
            ("127.0.0.1", 0), settings(store, f"{upstream.url}simple/", limits=limits), False
        )
        service.grace = 0.2  # what a client that stopped reading gets, once downloads ended
        await service.start(CollectorRegistry(), lambda line: None)
        stopped = False
        try:
            assert service.url is not None
            async with aiohttp.ClientSession(service.url) as client:

                async def file_url(project: str) -> str:
                    r = await client.get(f"/pypi/simple/{project}/", headers={"Accept": JSON})
                    return str((await r.json(content_type=None))["files"][0]["url"])

                huge_url, big_url = await file_url("huge-pkg"), await file_url("big-pkg")
                assert len(await (await client.get(huge_url)).read()) == len(huge[1])
                host, port = service.url.split("//")[1].split(":")
                loop = asyncio.get_running_loop()
                stuck = socket.socket()  # asks for the huge file, reads its head, no more
                stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                stuck.setblocking(False)
                await loop.sock_connect(stuck, (host, int(port)))
                request = f"GET {huge_url} HTTP/1.1\r\nHost: m\r\n\r\n"
                await loop.sock_sendall(stuck, request.encode())
                assert await loop.sock_recv(stuck, 12) == b"HTTP/1.1 200"

                upstream.rules[f"/files/{wheels['big-pkg'][0]}"] = "trickle"
                trickled = await client.get(big_url)  # the answer began: bytes as they come
                assert trickled.status == 200
                upstream.rules["/simple/demo-dep/"] = "silent"
                upstream.asked.clear()
                page = asyncio.create_task(client.get("/pypi/simple/demo-dep/"))
                await upstream.asked.wait()  # its revalidation waits on the silence

                async with asyncio.timeout(30):  # a guard against a hang, not a measurement
                    await service.stop()
                    stopped = True
                    try:
                        await trickled.read()
                        raise AssertionError("a trickled download completed")
                    except aiohttp.ClientPayloadError:
                        pass  # cut: a client never takes a short body for a whole one
                    ended = (await asyncio.gather(page, return_exceptions=True))[0]
                    assert isinstance(ended, aiohttp.ClientError)  # its connection closed
                stuck.close()
        finally:
            if not stopped:
                await service.stop()
    assert list((store / "tmp").iterdir()) == []  # the partial download went
    held = {p.name for p in (store / "blobs" / "sha256").glob("*/*")}
    assert hashlib.sha256(wheels["big-pkg"][1]).hexdigest() not in held
