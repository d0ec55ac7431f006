"""A misbehaving upstream never gets its bytes published; coalescing; offline; hostile paths."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from retreatkit.mirror.testing import Server, make_wheel, start_mirror, start_upstream, write_pypi

pytestmark = pytest.mark.e2e
BIG = 3_000_000  # large enough that a cut or a flip lands mid-stream


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Server, Path, Server, str, str, bytes]]:
    root = tmp_path / "upstream"
    wheel = make_wheel("big-pkg", "1.0", pad=BIG)
    write_pypi(root, {"big-pkg": [wheel]})
    upstream = start_upstream(root)
    mirror, admin = start_mirror(tmp_path / "store", pypi=f"{upstream.url}simple/")
    yield upstream, root, mirror, admin, wheel[0], wheel[1]
    mirror.stop()
    upstream.stop()


def request(
    base: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One raw GET; a transfer cut short shows up as status -1."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        try:
            body = response.read()
        except (http.client.IncompleteRead, ConnectionError):
            return -1, dict(response.headers), b""
        return response.status, dict(response.headers), body
    finally:
        conn.close()


def file_path(mirror: Server, project: str = "big-pkg") -> str:
    status, _, body = request(
        mirror.url, f"/pypi/simple/{project}/", {"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    assert status == 200
    return str(json.loads(body)["files"][0]["url"])


def status_of(admin: str) -> dict[str, int]:
    status, _, body = request(admin, "/status")
    assert status == 200
    doc: dict[str, int] = json.loads(body)["mirror"]
    return doc


def blobs(store: Path) -> set[str]:
    return {p.name for p in (store / "blobs" / "sha256").glob("*/*")}


@pytest.mark.parametrize("mode", ["truncate", "truncate-cl", "corrupt", "stall", "reset", "fail"])
def test_bad_upstream_bytes_are_never_published(
    setup: tuple[Server, Path, Server, str, str, bytes], tmp_path: Path, mode: str
) -> None:
    _upstream, root, mirror, admin, filename, wheel = setup
    path = file_path(mirror)
    before = blobs(tmp_path / "store")
    (root / ".behaviours.json").write_text(json.dumps({f"/files/{filename}": mode}))
    status, _, body = request(mirror.url, path)
    # never a 200 with the wrong bytes: an error status, or a transfer cut short
    assert status != 200 or hashlib.sha256(body).digest() == hashlib.sha256(wheel).digest()
    assert status in (-1, 502, 504), (status, len(body))
    assert blobs(tmp_path / "store") == before
    assert not list((tmp_path / "store" / "tmp").iterdir())
    # the same request once upstream behaves: fetched again, verified, served whole
    (root / ".behaviours.json").write_text("{}")
    status, _, body = request(mirror.url, path)
    assert status == 200 and body == wheel
    if mode in ("corrupt", "truncate"):
        assert status_of(admin)["verify_failures"] >= 1


def test_fifty_cold_clients_one_upstream_fetch(
    setup: tuple[Server, Path, Server, str, str, bytes],
) -> None:
    upstream, _, mirror, admin, filename, wheel = setup
    path = file_path(mirror)

    async def fetch_all() -> list[bytes]:
        async with aiohttp.ClientSession() as session:

            async def one() -> bytes:
                async with session.get(mirror.url.rstrip("/") + path) as r:
                    assert r.status == 200
                    return await r.read()

            return await asyncio.gather(*(one() for _ in range(50)))

    bodies = asyncio.run(fetch_all())
    assert all(body == wheel for body in bodies)
    _, _, stats = request(upstream.url, "/_stats")
    assert json.loads(stats)[f"/files/{filename}"] == 1
    status = status_of(admin)
    assert status["upstream_fetches"] == 1  # file downloads: one, however many asked
    # and from the store (a file over 1 MiB goes out by sendfile), still whole
    for _ in range(2):
        assert request(mirror.url, path)[2] == wheel
    assert status["coalesced"] + status["hits"] >= 49


def test_offline_stale_index_and_cold_miss(tmp_path: Path) -> None:
    root = tmp_path / "upstream"
    write_pypi(root, {"one": [make_wheel("one", "1.0")], "two": [make_wheel("two", "1.0")]})
    upstream = start_upstream(root)
    mirror, _ = start_mirror(tmp_path / "store", pypi=f"{upstream.url}simple/", ttl=0)
    try:
        assert request(mirror.url, file_path(mirror, "one"))[0] == 200
        upstream.stop()
        status, headers, body = request(mirror.url, "/pypi/simple/one/")
        assert status == 200 and b"one-1.0-py3-none-any.whl" in body
        assert headers["Warning"] == '110 - "Response is Stale"'
        status, _, body = request(mirror.url, "/pypi/simple/two/")
        assert status == 502
        host = urlsplit(upstream.url).netloc
        assert re.fullmatch(
            rf"upstream {host} is down \(connection refused\); next try in \d+ s\n", body.decode()
        )
    finally:
        mirror.stop()


@pytest.mark.parametrize(
    "path",
    [
        "/pypi/files/..%2f..%2fetc/passwd",
        "/pypi/files/%2e%2e/%2e%2e/index.sqlite",
        "/pypi/simple/..%2f..%2f/",
        "/pypi/simple/a%00b/",
        "/pypi/files/" + "0" * 64 + "/x%0d%0aSet-Cookie:%20a=b",
        "/pypi/files/" + "0" * 64 + "/" + "a" * 300 + ".whl",
        "/pypi/files/" + "0" * 64 + "/unknown.whl",
        "/opam/cache/sha256/00/" + "0" * 64,
        "/opam/cache/sha256/11/" + "0" * 64,
        "/opam/cache/md5/../../index.sqlite",
        "/http://example.invalid/",
        "/pypi/files/" + "a" * 64 + "/../../../index.sqlite",
    ],
)
def test_hostile_paths_touch_nothing(
    setup: tuple[Server, Path, Server, str, str, bytes], path: str
) -> None:
    upstream, _, mirror, _, _, _ = setup
    status, headers, body = request(mirror.url, path)
    assert status in (400, 404), (status, body[:200])
    assert "Set-Cookie" not in headers
    _, _, stats = request(upstream.url, "/_stats")
    assert set(json.loads(stats)) <= {"/_stats"}  # not an open proxy: upstream never asked


def test_store_check_drops_a_corrupt_blob(tmp_path: Path) -> None:
    root = tmp_path / "upstream"
    wheel = make_wheel("one", "1.0")
    write_pypi(root, {"one": [wheel]})
    upstream = start_upstream(root)
    store = tmp_path / "store"
    try:
        mirror, _ = start_mirror(store, pypi=f"{upstream.url}simple/")
        path = file_path(mirror, "one")
        assert request(mirror.url, path)[2] == wheel[1]
        mirror.stop()
        digest = hashlib.sha256(wheel[1]).hexdigest()
        blob = store / "blobs" / "sha256" / digest[:2] / digest
        blob.write_bytes(b"bit rot")
        os.utime(blob)
        mirror, _ = start_mirror(store, pypi=f"{upstream.url}simple/")
        mirror.process.wait_for("^Mirror store check done: 1 kept, 1 corrupt dropped$")
        assert request(mirror.url, path)[2] == wheel[1]  # fetched again, verified
        mirror.stop()
    finally:
        upstream.stop()


def test_attendee_page_and_metrics(setup: tuple[Server, Path, Server, str, str, bytes]) -> None:
    _, _, mirror, admin, _, _ = setup
    status, headers, body = request(mirror.url, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    base = mirror.url.rstrip("/")
    page = body.decode()
    for line in (
        f"pip install --index-url {base}/pypi/simple/ PACKAGE",
        f"uv pip install --index-url {base}/pypi/simple/ PACKAGE",
        f"opam repository set-url default {base}/opam",
    ):
        assert line in page
    file_path(mirror)
    status, _, metrics = request(admin, "/metrics")
    assert status == 200
    text = metrics.decode()
    for name in (
        "mirror_hits_total",
        "mirror_upstream_bytes_total",
        "mirror_verify_failures_total",
    ):
        assert f"\n{name} " in text
    assert "mirror_misses_total 1.0" in text
