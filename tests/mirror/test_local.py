"""The local index: course packages beside the mirrored ones, never outbid by an upstream
project of the same name; uploads behind the admin token; the kit's own wheel."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from retreatkit import serve
from retreatkit.admin.app import make_app
from retreatkit.mirror import eviction, fakeupstream, local, wheelmaker
from retreatkit.mirror.hosted import MirrorService
from retreatkit.mirror.testing import make_wheel, mirror_client, settings, write_pypi
from retreatkit.mirror.uplink import Limits
from tests.mirror.conftest import JSON

COURSE = make_wheel("demo-pkg", "0.1")  # the course's own demo-pkg


def publish(tmp_path: Path, store: Any, wheel: tuple[str, bytes, bytes] = COURSE) -> str:
    path = tmp_path / wheel[0]
    path.write_bytes(wheel[1])
    return local.add(store, path)


async def page(client: TestClient[Any, Any], name: str) -> dict[str, Any]:
    r = await client.get(f"/pypi/simple/{name}/", headers={"Accept": JSON})
    assert r.status == 200, await r.text()
    doc: dict[str, Any] = await r.json(content_type=None)
    return doc


@pytest.mark.parametrize("allowed", [False, True])
async def test_a_course_package_is_never_outbid_by_the_upstream(
    tmp_path: Path, allowed: bool
) -> None:
    upstream_root = tmp_path / "upstream"
    write_pypi(upstream_root, {"demo-pkg": [make_wheel("demo-pkg", "99.0")]})  # the attack
    async with fakeupstream.serving(upstream_root) as upstream:
        config = settings(
            tmp_path / "store", f"{upstream.url}simple/",
            allow_upstream=["demo-pkg"] if allowed else [],
        )  # fmt: skip
        async with mirror_client(config) as (client, mirror):
            line = await mirror.store.run(lambda: publish(tmp_path, mirror.store))
            assert line == f"{COURSE[0]}: published as demo-pkg 0.1"
            doc = await page(client, "demo-pkg")
            names = [f["filename"] for f in doc["files"]]
            if allowed:  # the organiser let the upstream's files in beside theirs
                assert names == [COURSE[0], "demo_pkg-99.0-py3-none-any.whl"]
            else:
                assert names == [COURSE[0]]
                assert upstream.counts["/simple/demo-pkg/"] == 0  # never even asked
            mine = doc["files"][0]
            assert mine["core-metadata"] == {"sha256": hashlib.sha256(COURSE[2]).hexdigest()}
            r = await client.get(mine["url"])
            assert await r.read() == COURSE[1]
            r = await client.get(mine["url"] + ".metadata")
            assert await r.read() == COURSE[2]
            root = await (await client.get("/pypi/simple/")).text()
            assert 'href="demo-pkg/"' in root


async def test_a_course_package_is_served_when_the_upstream_beside_it_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The upstream's page fails, nothing of it held: the course's files are served
    alone, and the log has no "cannot serve" for a page the client got."""
    upstream_root = tmp_path / "upstream"
    write_pypi(upstream_root, {"demo-pkg": [make_wheel("demo-pkg", "99.0")]})
    async with fakeupstream.serving(upstream_root) as upstream:
        upstream.rules["/simple/demo-pkg/"] = "fail"
        config = settings(tmp_path / "store", f"{upstream.url}simple/", allow_upstream=["demo-pkg"])
        async with mirror_client(config) as (client, mirror):
            await mirror.store.run(lambda: publish(tmp_path, mirror.store))
            with caplog.at_level(logging.INFO, logger="retreatkit.mirror"):
                doc = await page(client, "demo-pkg")
            assert [f["filename"] for f in doc["files"]] == [COURSE[0]]
            assert upstream.counts["/simple/demo-pkg/"] == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_the_upstreams_files_beside_a_course_package_are_yanked_once_it_is_down(
    tmp_path: Path,
) -> None:
    """The upstream's files beside the course's (allow_upstream), the page still fresh
    when the upstream goes: those not held are listed yanked, as on any page offline, so
    a client takes the course's rather than one it cannot have. No client keeps a page
    that lists them (uv keeps one for its max-age): it would not see them yanked."""
    upstream_root = tmp_path / "upstream"
    write_pypi(upstream_root, {"demo-pkg": [make_wheel("demo-pkg", "99.0")],
                               "other": [make_wheel("other", "1.0")]})  # fmt: skip
    async with fakeupstream.serving(upstream_root) as upstream:
        config = settings(
            tmp_path / "store", f"{upstream.url}simple/", allow_upstream=["demo-pkg"],
            index_ttl=600.0, limits=Limits(connect_timeout=0.5, headers_timeout=0.5),
        )  # fmt: skip
        async with mirror_client(config) as (client, mirror):
            await mirror.store.run(lambda: publish(tmp_path, mirror.store))
            r = await client.get("/pypi/simple/demo-pkg/", headers={"Accept": JSON})
            assert r.status == 200 and r.headers["Cache-Control"] == "max-age=0"
            upstream.rules["*"] = "silent"  # silent for three different pages: down
            pages = ("other", "other-two", "other-three")
            asked = await asyncio.gather(*(client.get(f"/pypi/simple/{n}/") for n in pages))
            assert [r.status for r in asked] == [504] * 3
            doc = await page(client, "demo-pkg")
            assert upstream.counts["/simple/demo-pkg/"] == 1  # fresh: not asked again
    assert [(f["filename"], f.get("yanked")) for f in doc["files"]] == [
        (COURSE[0], None),
        ("demo_pkg-99.0-py3-none-any.whl", "not held by this mirror, whose upstream is down"),
    ]


def test_what_the_local_index_refuses(tmp_path: Path) -> None:
    from retreatkit.mirror.store import Store

    store = Store(tmp_path / "store")
    publish(tmp_path, store)
    assert publish(tmp_path, store) == f"{COURSE[0]}: already in the local index"
    other = (COURSE[0], make_wheel("demo-pkg", "0.1", pad=10)[1], COURSE[2])
    (tmp_path / "x").mkdir()
    with pytest.raises(local.Conflict, match="has a different file of that name"):
        publish(tmp_path / "x", store, other)
    liar = ("demo_pkg-0.2-py3-none-any.whl", COURSE[1], COURSE[2])  # its METADATA says 0.1
    with pytest.raises(local.BadFile, match=r"its metadata says demo-pkg 0\.1"):
        publish(tmp_path, store, liar)
    for name in ("notes.txt", "demo-pkg.whl", "../../demo_pkg-0.1-py3-none-any.whl"):
        with pytest.raises(local.BadFile):
            local.project_of(name)
    # local files are pinned: a store over its limit keeps them
    done = eviction.evict(store, 1)
    assert done.blobs == 0 and [f.filename for f in local.load(store, "demo-pkg")] == [COURSE[0]]
    store.close()


def test_the_kits_own_wheel_is_the_same_bytes_each_time() -> None:
    filename, data, metadata = wheelmaker.own_wheel()
    assert filename.startswith("retreatkit-") and filename.endswith("-py3-none-any.whl")
    assert wheelmaker.own_wheel()[1] == data
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = z.namelist()
        assert "retreatkit/cli/bob.py" in names and "retreatkit/transfer/words.txt" in names
        assert not [n for n in names if "__pycache__" in n]
        folder = filename.split("-py3")[0] + ".dist-info"
        assert z.read(f"{folder}/METADATA") == metadata
        assert b"bob = retreatkit.cli.bob:main" in z.read(f"{folder}/entry_points.txt")


@pytest.fixture
async def admin(
    tmp_path: Path,
) -> AsyncIterator[tuple[TestClient[Any, Any], MirrorService]]:
    config = settings(tmp_path / "store", "http://127.0.0.1:9/none/")
    service = MirrorService(("127.0.0.1", 0), config)
    await service.start(CollectorRegistry(), lambda line: None)
    try:
        app = make_app(CollectorRegistry(), {"mirror": service.status},
                       serve.admin_routes(service), token="t")  # fmt: skip
        async with TestClient(TestServer(app)) as client:
            yield client, service
    finally:
        await service.stop()


async def test_uploads_need_the_token_and_are_served(
    admin: tuple[TestClient[Any, Any], MirrorService],
) -> None:
    client, service = admin
    url = service.url
    path = f"/mirror/files/{COURSE[0]}"
    refused = await client.put(path, data=COURSE[1])
    assert (refused.status, await refused.text()) == (401, "this needs the admin token\n")
    token = {"Authorization": "Bearer t"}
    r = await client.put(path, data=COURSE[1], headers=token)
    assert (r.status, await r.json()) == (
        201,
        {"published": f"{COURSE[0]}: published as demo-pkg 0.1"},
    )
    r = await client.put(path, data=COURSE[1] + b"x", headers=token)
    assert r.status == 409
    r = await client.put("/mirror/files/notes.txt", data=b"x", headers=token)
    assert (r.status, await r.text()) == (
        400,
        "notes.txt: not a wheel (.whl) or an sdist (.tar.gz)\n",
    )
    async with aiohttp.ClientSession() as session:
        r = await session.get(f"{url}/pypi/simple/demo-pkg/", headers={"Accept": JSON})
        assert [f["filename"] for f in (await r.json(content_type=None))["files"]] == [COURSE[0]]
        assert service.own_wheel is not None
        await service.own_wheel  # the kit's own wheel, published as the service started
        r = await session.get(f"{url}/pypi/simple/retreatkit/", headers={"Accept": JSON})
        files = (await r.json(content_type=None))["files"]
        assert [f["filename"] for f in files] == [wheelmaker.own_wheel()[0]]
        assert files[0]["core-metadata"]
