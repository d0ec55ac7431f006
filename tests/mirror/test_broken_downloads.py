"""A download that breaks mid-body is continued from where it broke, against a real test
upstream that answers ranges as a server would, or not (in process)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import zlib
from pathlib import Path

import aiohttp
import pytest

from retreatkit import units
from retreatkit.mirror.uplink import Limits
from tests.mirror.conftest import Env

QUICK = {"limits": Limits(connect_timeout=1.0, headers_timeout=1.0, read_timeout=0.3)}


def blobs(store: Path) -> set[str]:
    return {p.name for p in (store / "blobs" / "sha256").glob("*/*")}


def ranges(env: Env, path: str) -> list[str]:
    """The Range headers the upstream was sent for `path`."""
    prefix = f"range {path} "
    return [k.removeprefix(prefix) for k in env.upstream.counts if k.startswith(prefix)]


async def follow_across(env: Env, url: str, filename: str) -> tuple[int, bytes]:
    """A client that has bytes of the file before the upstream answers the request for
    its rest (held at `Upstream.gate`), then reads on: (its status, or -1 if it was
    cut, and what it got)."""
    gate = env.upstream.gate = asyncio.Event()
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        r = await env.client.get(url)
        assert r.status == 200
        got = await r.content.readany()
        while env.fetched(filename) < 2:  # the continuation came, and waits at the gate
            env.upstream.asked.clear()
            await env.upstream.asked.wait()
        gate.set()
        try:
            return r.status, got + await r.read()
        except aiohttp.ClientPayloadError:
            return -1, got


async def test_a_download_cut_mid_body_is_continued_where_it_broke(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """A client already following the file keeps receiving; the upstream is asked for the
    rest with the first answer's ETag, and sends the file once and a bit, not twice."""
    filename, data, _ = env.wheels["big-pkg"]
    path = f"/files/{filename}"
    env.upstream.rules[path] = "cut-once"
    url = await env.file_url("big-pkg")
    with caplog.at_level(logging.INFO, logger="retreatkit.mirror"):
        assert await follow_across(env, url, filename) == (200, data)
    [asked] = ranges(env, path)
    at = int(re.fullmatch(r"bytes=(\d+)-", asked)[1])  # type: ignore[index]
    assert 0 < at <= len(data) // 2
    etag = f'"{zlib.crc32(data):08x}"'
    assert env.upstream.counts[f"if-range {path} {etag}"] == 1
    assert env.fetched(filename) == 2
    assert env.upstream.counts[f"sent {path}"] < 1.5 * len(data)
    assert env.mirror.stats.upstream_bytes == len(data)  # what was kept of the first answer
    assert hashlib.sha256(data).hexdigest() in blobs(env.mirror.settings.store)
    said = [r.getMessage() for r in caplog.records if "continuing" in r.getMessage()]
    assert said == [
        f"continuing {filename} from pypi at {units.size(at)} after: upstream cut {filename} short"
    ]
    r = await env.client.get(url)  # and held: the next client is a hit
    assert (r.status, r.headers["X-Cache"], await r.read()) == (200, "HIT", data)
    assert env.fetched(filename) == 2


async def test_an_upstream_that_ignores_the_range_starts_the_file_over(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """Its 200 is written over the bytes already there; a client following them holds
    the same bytes, so it reads on."""
    filename, data, _ = env.wheels["big-pkg"]
    env.upstream.rules[f"/files/{filename}"] = "cut-whole"
    url = await env.file_url("big-pkg")
    with caplog.at_level(logging.INFO, logger="retreatkit.mirror"):
        assert await follow_across(env, url, filename) == (200, data)
    assert hashlib.sha256(data).hexdigest() in blobs(env.mirror.settings.store)
    said = [r.getMessage() for r in caplog.records]
    assert f"upstream sent {filename} from pypi whole again: starting it over" in said
    assert not list((env.mirror.settings.store / "tmp").iterdir())


@pytest.mark.parametrize("env", [QUICK], indirect=True)
async def test_a_part_from_the_wrong_byte_is_refused_and_nothing_is_kept(env: Env) -> None:
    filename, data, _ = env.wheels["big-pkg"]
    store = env.mirror.settings.store
    env.upstream.rules[f"/files/{filename}"] = "cut-badrange"
    url = await env.file_url("big-pkg")
    before = blobs(store)
    status, got = await follow_across(env, url, filename)
    assert status == -1 and data.startswith(got)
    [asked] = ranges(env, f"/files/{filename}")
    at = int(asked.removeprefix("bytes=").rstrip("-"))
    recent = env.mirror.fetcher.fetches()["recent"][0]
    assert (recent["ended"], recent["error"]) == (
        "verify failed",
        f"upstream sent {filename} from byte {at - 1}, not {at} as asked",
    )
    assert blobs(store) == before
    assert not list((store / "tmp").iterdir())
    r = await env.client.get(url)  # a cut may mend: the next client asks again, whole
    assert (r.status, await r.read()) == (200, data)


@pytest.mark.parametrize("env", [QUICK], indirect=True)
async def test_a_file_changed_upstream_is_refused_by_its_hash_never_spliced(env: Env) -> None:
    """If-Range names the first answer's version: the upstream sends the new one whole, its
    followers are cut where it differs, and its hash refuses it, as for any bad bytes."""
    filename, data, _ = env.wheels["big-pkg"]
    store = env.mirror.settings.store
    env.upstream.rules[f"/files/{filename}"] = "cut-changed"
    url = await env.file_url("big-pkg")
    before = blobs(store)
    status, got = await follow_across(env, url, filename)
    assert status == -1 and data.startswith(got)  # cut where the new bytes differ
    for fill in list(env.mirror.fetcher.inflight.values()):  # the rest, still crossing
        await fill.ended()
    recent = env.mirror.fetcher.fetches()["recent"][0]
    assert recent["ended"] == "verify failed"
    assert recent["error"].startswith(f"upstream sent bad bytes for {filename}: sha256 mismatch")
    assert blobs(store) == before
    assert not list((store / "tmp").iterdir())


@pytest.mark.parametrize("env", [QUICK], indirect=True)
async def test_a_file_sent_again_longer_than_its_clients_were_told_is_refused(env: Env) -> None:
    """The upstream ignores the range and sends another file, longer, with no length: a
    client told the first length is cut before it holds that many bytes (a whole answer,
    of neither file), and nothing is kept."""
    filename, data, _ = env.wheels["big-pkg"]
    store = env.mirror.settings.store
    env.upstream.rules[f"/files/{filename}"] = "cut-longer"
    url = await env.file_url("big-pkg")
    before = blobs(store)
    status, got = await follow_across(env, url, filename)  # the upstream has not closed
    env.upstream.release.set()
    assert status == -1 and len(got) < len(data)
    recent = env.mirror.fetcher.fetches()["recent"][0]
    assert (recent["ended"], recent["error"]) == (
        "verify failed",
        f"upstream sent {filename} longer than it said",
    )
    assert blobs(store) == before
    assert not list((store / "tmp").iterdir())


async def test_a_follower_of_another_version_is_cut_and_the_file_kept_whole(env: Env) -> None:
    """The first answer was another version (a stale CDN node), the continuation the file
    the index names, sent whole: a client that had the other version's bytes is cut, never
    handed the two spliced; the file is kept, and the next client gets it."""
    filename, data, _ = env.wheels["big-pkg"]
    env.upstream.rules[f"/files/{filename}"] = "cut-mended"
    url = await env.file_url("big-pkg")
    gate = env.upstream.gate = asyncio.Event()
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        r = await env.client.get(url)
        got = await r.content.readexactly(len(data) // 4 + 1)  # past the byte that differs
        assert got != data[: len(got)]
        while env.fetched(filename) < 2:
            env.upstream.asked.clear()
            await env.upstream.asked.wait()
        gate.set()
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    r = await env.client.get(url)  # joins the download under way, or finds it kept
    assert (r.status, await r.read()) == (200, data)
    assert env.fetched(filename) == 2
    assert hashlib.sha256(data).hexdigest() in blobs(env.mirror.settings.store)


async def test_a_file_that_came_whole_again_is_continued_as_that_version(env: Env) -> None:
    """The first answer was another version, the continuation the file the index names,
    whole, and that one broke too, further on: its rest is asked for with the ETag of the
    answer it continues, so it comes as a part, not as the whole file a third time."""
    filename, data, _ = env.wheels["big-pkg"]
    path = f"/files/{filename}"
    env.upstream.rules[path] = "cut-mended-twice"
    url = await env.file_url("big-pkg")
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        r = await env.client.get(url)
        with contextlib.suppress(aiohttp.ClientPayloadError):  # it had the other's bytes
            await r.read()
        for fill in list(env.mirror.fetcher.inflight.values()):
            await fill.ended()
    assert env.fetched(filename) == 3 and len(ranges(env, path)) == 2
    assert env.upstream.counts[f'if-range {path} "{zlib.crc32(data):08x}"'] == 1
    assert env.upstream.counts[f"sent {path}"] < 2 * len(data)  # not 2.5 times
    r = await env.client.get(url)
    assert (r.status, r.headers["X-Cache"], await r.read()) == (200, "HIT", data)


@pytest.mark.parametrize("env", [QUICK], indirect=True)
async def test_an_upstream_that_cuts_every_answer_is_given_up_on(env: Env) -> None:
    """Each answer brings half of what was asked: continued three times, then failed as a
    cut, with nothing kept."""
    filename, _, _ = env.wheels["big-pkg"]
    store = env.mirror.settings.store
    path = f"/files/{filename}"
    env.upstream.rules[path] = "cut-each"
    url = await env.file_url("big-pkg")
    before = blobs(store)
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        r = await env.client.get(url)
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    assert env.fetched(filename) == 4
    starts = [int(asked.removeprefix("bytes=").rstrip("-")) for asked in ranges(env, path)]
    assert len(starts) == 3 and starts == sorted(set(starts))  # each from further on
    recent = env.mirror.fetcher.fetches()["recent"][0]
    assert (recent["ended"], recent["error"]) == (
        "upstream error",
        f"upstream cut {filename} short",
    )
    assert blobs(store) == before
    assert not list((store / "tmp").iterdir())


@pytest.mark.parametrize("env", [{"as_json": True}], indirect=True)
async def test_a_body_with_no_length_stops_at_its_index_size(env: Env) -> None:
    """No Content-Length, and more bytes than the index's size (PEP 700): refused at the
    first byte past it, not downloaded on to max_size or a full disk and then refused by
    its hash; nothing is kept."""
    filename, data, _ = env.wheels["big-pkg"]
    (env.root / "files" / filename).write_bytes(data + bytes(4 * len(data)))
    env.upstream.rules[f"/files/{filename}"] = "nolength"
    store = env.mirror.settings.store
    url = await env.file_url("big-pkg")
    before = blobs(store)
    r = await env.client.get(url)
    with contextlib.suppress(aiohttp.ClientPayloadError):  # cut: never a whole answer
        assert len(await r.read()) < len(data)
    recent = env.mirror.fetcher.fetches()["recent"][0]
    assert recent["error"] == f"upstream sent {filename} longer than its index says"
    assert env.mirror.stats.upstream_bytes <= len(data)
    assert blobs(store) == before
    assert not list((store / "tmp").iterdir())
