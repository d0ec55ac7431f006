"""Files over HTTP, in process: one ETag scheme, Range, 304 and HEAD for every file, held or
cold; HEAD never fetches; bytes counted as sent (items 5 and 7)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import zipfile

import pytest

from retreatkit.mirror.testing import write_pypi
from tests.mirror.conftest import Env


def etag(data: bytes) -> str:
    return f'"{hashlib.sha256(data).hexdigest()}"'


@pytest.mark.parametrize("project", ["demo-dep", "big-pkg"])  # from memory, and by sendfile
async def test_a_held_file_answers_range_304_and_head(env: Env, project: str) -> None:
    filename, data, _ = env.wheels[project]
    url = await env.file_url(project)
    whole = await env.client.get(url)
    assert whole.status == 200 and await whole.read() == data
    assert whole.headers["ETag"] == etag(data)  # the content hash, whatever the size
    assert whole.headers["Accept-Ranges"] == "bytes"
    before = env.mirror.stats.bytes_from_cache

    part = await env.client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status == 206 and await part.read() == data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    tail = await env.client.get(url, headers={"Range": "bytes=-22"})
    assert tail.status == 206 and await tail.read() == data[-22:]
    same = await env.client.get(url, headers={"If-None-Match": etag(data)})
    assert same.status == 304 and await same.read() == b""
    head = await env.client.head(url)
    assert head.status == 200 and head.headers["Content-Length"] == str(len(data))
    assert head.headers["ETag"] == etag(data)
    beyond = await env.client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status == 416 and beyond.headers["Content-Range"] == f"bytes */{len(data)}"

    # what left the mirror: 100 + 22 bytes, not five whole files
    assert env.mirror.stats.bytes_from_cache - before == 122
    assert env.fetched(filename) == 1


async def test_head_and_a_matching_etag_never_fetch_a_cold_file(env: Env) -> None:
    filename, data, _ = env.wheels["demo-dep"]
    url = await env.file_url("demo-dep")
    for _ in range(2):
        head = await env.client.head(url)
        assert head.status == 200
        assert head.headers["ETag"] == etag(data) and head.headers["Accept-Ranges"] == "bytes"
        # an HTML index gives no size: one HEAD upstream learns it, no body crosses
        assert head.headers["Content-Length"] == str(len(data))
    same = await env.client.get(url, headers={"If-None-Match": etag(data)})
    assert same.status == 304
    assert env.fetched(filename) == 0
    assert env.upstream.counts[f"HEAD /files/{filename}"] == 1
    assert env.mirror.stats.bytes_from_cache + env.mirror.stats.bytes_from_upstream == 0


async def test_clients_asking_a_size_at_once_share_one_head_upstream(env: Env) -> None:
    """Two attendees' uv read the same cold wheel by ranges at once: one HEAD upstream
    learns its length for both."""
    filename, data, _ = env.wheels["demo-dep"]
    url = await env.file_url("demo-dep")
    heads = await asyncio.gather(*(env.client.head(url) for _ in range(5)))
    assert [h.headers["Content-Length"] for h in heads] == [str(len(data))] * 5
    assert env.upstream.counts[f"HEAD /files/{filename}"] == 1


@pytest.mark.parametrize("env", [{"as_json": True}], indirect=True)
async def test_a_cold_head_gives_the_size_the_index_promised(env: Env) -> None:
    filename, data, _ = env.wheels["big-pkg"]
    head = await env.client.head(await env.file_url("big-pkg"))
    assert head.headers["Content-Length"] == str(len(data))
    assert env.fetched(filename) == 0
    assert env.upstream.counts[f"HEAD /files/{filename}"] == 0  # the index said


async def test_a_range_on_a_cold_file_fetches_it_once_and_serves_the_range(env: Env) -> None:
    filename, data, _ = env.wheels["big-pkg"]
    url = await env.file_url("big-pkg")
    ranges = ("bytes=-4096", "bytes=0-99", "bytes=-4096")  # as uv reads a wheel's index
    parts = await asyncio.gather(*(env.client.get(url, headers={"Range": r}) for r in ranges))
    assert [p.status for p in parts] == [206, 206, 206]
    assert await parts[0].read() == data[-4096:] and await parts[1].read() == data[:100]
    assert env.fetched(filename) == 1
    whole = await env.client.get(url)
    assert await whole.read() == data and env.fetched(filename) == 1


async def test_a_streamed_cold_file_counts_as_sent_from_upstream(env: Env) -> None:
    _, data, _ = env.wheels["demo-dep"]
    r = await env.client.get(await env.file_url("demo-dep"))
    assert await r.read() == data and r.headers["ETag"] == etag(data)
    s = env.mirror.stats
    sent = (s.bytes_from_upstream, s.bytes_from_cache, s.upstream_bytes)
    assert sent == (len(data), 0, len(data))
    assert s.bytes_saved == 0
    await (await env.client.get(await env.file_url("demo-dep"))).read()
    assert s.bytes_saved == len(data)


async def test_many_cold_clients_one_upstream_fetch(env: Env) -> None:
    filename, data, _ = env.wheels["big-pkg"]
    url = await env.file_url("big-pkg")

    async def one() -> bytes:
        r = await env.client.get(url)
        assert r.status == 200
        return await r.read()

    bodies = await asyncio.gather(*(one() for _ in range(20)))
    assert all(b == data for b in bodies)
    assert env.fetched(filename) == 1
    assert env.mirror.stats.coalesced == 19 and env.mirror.stats.upstream_fetches == 1


async def test_without_sendfile_a_large_file_still_goes_out_whole_and_in_ranges(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_sendfile(*args: object, **kwargs: object) -> int:
        raise NotImplementedError  # as on a transport with no socket (TLS)

    monkeypatch.setattr(asyncio.get_running_loop(), "sendfile", no_sendfile)
    _, data, _ = env.wheels["big-pkg"]
    url = await env.file_url("big-pkg")
    await (await env.client.get(url)).read()  # stored
    whole = await env.client.get(url)
    assert await whole.read() == data
    part = await env.client.get(url, headers={"Range": "bytes=1000000-1100000"})
    assert await part.read() == data[1_000_000:1_100_001]


def incompressible_wheel(size: int) -> tuple[str, bytes, bytes]:
    """A wheel of `size` random bytes, stored as they are: it crosses the uplink whole."""
    metadata = b"Metadata-Version: 2.1\nName: huge\nVersion: 1.0\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("huge/blob.bin", os.urandom(size))
        z.writestr("huge-1.0.dist-info/METADATA", metadata)
    return "huge-1.0-py3-none-any.whl", buf.getvalue(), metadata


async def test_bytes_saved_never_falls_while_a_download_runs_ahead_of_its_client(
    env: Env,
) -> None:
    """The Mirror screen's "saved" fell from 12.4 MB to 0 B while a download ran: it was
    the bytes sent less those fetched, and the fetch runs ahead of a slow client."""
    _, small, _ = env.wheels["demo-dep"]
    url = await env.file_url("demo-dep")
    for _ in range(2):  # fetched, then from the store: saved once
        await (await env.client.get(url)).read()
    stats = env.mirror.stats  # what /status says (bytes_saved)
    assert stats.bytes_saved == len(small)
    filename, data, metadata = incompressible_wheel(24 << 20)
    write_pypi(env.root, {"huge": [(filename, data, metadata)]})
    slow = await env.client.get(await env.file_url("huge"))  # its body not read yet
    [fill] = env.mirror.fetcher.inflight.values()
    await fill.ended()  # all of it crossed the uplink; the client holds a part
    assert stats.upstream_bytes >= len(data)
    assert stats.bytes_saved == len(small)
    assert await slow.read() == data
    assert stats.bytes_saved == len(small)  # it crossed for this client
    await (await env.client.get(await env.file_url("huge"))).read()
    assert stats.bytes_saved == len(small) + len(data)
