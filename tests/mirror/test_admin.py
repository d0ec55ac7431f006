"""The mirror's part of the admin contract (docs/admin-api.md), through the real service
object and the process's admin app, in process."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from retreatkit import serve
from retreatkit.admin.app import make_app
from retreatkit.mirror import fakeupstream
from retreatkit.mirror.hosted import MirrorService
from retreatkit.mirror.testing import settings, write_pypi
from tests.mirror.conftest import JSON, wheel_set

FETCH_KEYS = {"ecosystem", "package", "file", "bytes", "size_bytes", "started_at", "readers"}


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], str, Any]]:
    wheels = wheel_set()
    write_pypi(tmp_path / "up", {name: [w] for name, w in wheels.items()})
    async with fakeupstream.serving(tmp_path / "up") as upstream:
        service = MirrorService(
            ("127.0.0.1", 0), settings(tmp_path / "store", f"{upstream.url}simple/")
        )
        registry = CollectorRegistry()
        lines: list[str] = []
        await service.start(registry, lines.append)
        assert service.own_wheel is not None
        await service.own_wheel  # the kit's own wheel, its metadata and the local index: 3 blobs
        try:
            app = make_app(
                registry, {"mirror": service.status}, serve.admin_routes(service), token="t"
            )
            async with TestClient(TestServer(app)) as client:
                assert service.url is not None
                yield client, service.url, wheels
        finally:
            await service.stop()


async def test_status_fetches_and_metrics(admin: tuple[TestClient[Any, Any], str, Any]) -> None:
    client, url, wheels = admin
    status = (await (await client.get("/status")).json())["mirror"]
    assert status["up"] is True and status["hit_ratio"] == 0.0
    # the kit's wheel is served and none of its dependencies held: the organiser is told
    seed = f"retreatkit mirror seed --kit --mirror {url}"
    kit = (r"bob is not offered on the attendee page: the store lacks (\d+) of the \1"
           r" distributions installing it needs here; with the uplink up,"
           rf" run `{re.escape(seed)}`")  # fmt: skip
    assert [re.fullmatch(kit, w) is not None for w in status["warnings"]] == [True], status
    assert status["upstreams"]["pypi"]["state"] == "unknown"
    async with aiohttp.ClientSession() as session:
        r = await session.get(f"{url}/pypi/simple/demo-dep/", headers={"Accept": JSON})
        file_url = (await r.json(content_type=None))["files"][0]["url"]
        for _ in range(2):
            await (await session.get(url + file_url)).read()
        status = (await (await client.get("/status")).json())["mirror"]
        assert status["connections_open"] >= 1  # this session keeps its connection
    for key in (
        "up", "uptime_seconds", "connections_open", "warnings", "hits", "misses", "hit_ratio",
        "bytes_from_cache", "bytes_from_upstream", "bytes_saved", "downloads_in_progress",
        "top_packages", "upstreams", "store",
    ):  # fmt: skip
        assert key in status, key
    size = len(wheels["demo-dep"][1])
    assert (status["hits"], status["misses"], status["hit_ratio"]) == (1, 2, 0.3333)
    assert status["bytes_saved"] == size and status["top_packages"] == [["pypi/demo-dep", 1]]
    assert status["upstreams"]["pypi"]["state"] == "up"
    assert status["upstreams"]["pypi"]["last_error"] is None
    store = status["store"]
    assert store["files"] == 2 + 3 and store["size_bytes"] > size and not store["disk_full"]
    assert store["free_bytes"] > 0

    fetches = await (await client.get("/mirror/fetches")).json()
    assert fetches["in_progress"] == []
    (done,) = fetches["recent"]
    assert set(done) == FETCH_KEYS | {"ended"}
    assert (done["ecosystem"], done["package"], done["file"]) == (
        "pypi",
        "demo-dep",
        wheels["demo-dep"][0],
    )
    assert (done["bytes"], done["size_bytes"], done["ended"]) == (size, size, "stored")
    assert done["started_at"].endswith("Z")

    metrics = await (await client.get("/metrics")).text()
    assert f"mirror_bytes_from_cache_total {float(size)}" in metrics
    assert "mirror_store_disk_full 0.0" in metrics and "mirror_connections_open " in metrics
