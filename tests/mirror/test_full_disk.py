"""A really full disk (item 3): the store on a 4 MiB tmpfs this test mounts (root needed).
Every reader of a fill that fails gets a clean end, never a hang; a full catalog does not
turn pages into 500s; what the store holds is still served; /status says the disk is full."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from retreatkit.mirror import fakeupstream, local
from retreatkit.mirror.space import Space, start_warning
from retreatkit.mirror.status import section
from retreatkit.mirror.testing import make_wheel, mirror_client, settings, write_pypi
from tests.mirror.conftest import JSON, Env

MIB = 1 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "rkmir-full", str(mount)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (root needed): {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture
async def env(tmp_path: Path, small_disk: Path) -> AsyncIterator[Env]:
    wheels = {
        "small": make_wheel("small", "1.0", pad=100_000),
        "huge": make_wheel("huge", "1.0", pad=6 * MIB),  # never fits
        "grows": make_wheel("grows", "1.0", pad=6 * MIB),  # sent with no length
    }
    root = tmp_path / "upstream"
    write_pypi(root, {name: [w] for name, w in wheels.items()})
    async with fakeupstream.serving(root) as upstream:
        upstream.rules[f"/files/{wheels['grows'][0]}"] = "nolength"
        config = settings(small_disk / "store", f"{upstream.url}simple/", index_ttl=0.0)
        async with mirror_client(config) as (client, mirror):
            yield Env(upstream, client, mirror, wheels, root)


async def fetch(env: Env, url: str) -> tuple[int, bytes]:
    r = await env.client.get(url)
    try:
        return r.status, await r.read()
    except aiohttp.ClientPayloadError:
        return -1, b""  # the transfer was cut: the client knows it is incomplete


def fill_up(disk: Path) -> None:
    with contextlib.suppress(OSError), (disk / "filler").open("wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())


async def test_a_file_that_cannot_fit_is_refused_before_a_byte_is_sent(env: Env) -> None:
    small = await env.file_url("small")
    assert (await fetch(env, small))[0] == 200
    url = await env.file_url("huge")
    async with asyncio.timeout(30):
        answers = await asyncio.gather(*(fetch(env, url) for _ in range(3)))
    refusal = rb"the mirror's disk has no room for huge-1.0-py3-none-any.whl \(6\.3 MB\): "
    refusal += rb"\d\.\d MB free\n"  # nothing kept free: said no more
    assert [a[0] for a in answers] == [507] * 3 and len({a[1] for a in answers}) == 1
    assert re.fullmatch(refusal, answers[0][1]), answers[0][1]
    assert (await fetch(env, small)) == (200, env.wheels["small"][1])  # held: still served
    report = section(env.mirror, True, 0)
    assert report["store"]["disk_full"] is False  # only too full for that one
    assert report["store"]["too_big_bytes"] == len(env.wheels["huge"][1])
    assert re.fullmatch(
        r"no room for a file of 6\.3 MB: \d\.\d MB left to the store on its disk;"
        r" smaller files are still kept",
        report["warnings"][0],
    )
    assert env.mirror.fetcher.fetches()["recent"][0]["ended"] == "disk full"


async def test_a_file_too_big_leaves_room_for_small_files_of_unknown_size(env: Env) -> None:
    url = await env.file_url("huge")
    assert (await fetch(env, url))[0] == 507
    tiny = make_wheel("tiny", "1.0", pad=1_000)
    write_pypi(env.root, {"tiny": [tiny]})
    env.upstream.rules[f"/files/{tiny[0]}"] = "nolength"
    assert (await fetch(env, await env.file_url("tiny"))) == (200, tiny[1])


async def test_every_reader_of_a_fill_the_disk_cuts_gets_a_clean_end(env: Env) -> None:
    url = await env.file_url("grows")
    async with asyncio.timeout(30):  # a hang fails here
        answers = await asyncio.gather(*(fetch(env, url) for _ in range(3)))
    assert answers == [(-1, b"")] * 3  # 200 and a cut: never a short body taken as whole
    store = env.mirror.settings.store
    assert not list((store / "tmp").iterdir())  # the partial file is gone
    assert section(env.mirror, True, 0)["store"]["disk_full"] is True
    async with asyncio.timeout(30):  # now it is known not to fit: refused at once
        status, body = await fetch(env, url)
    # not "full": the file that filled it is gone, and so is the room it took
    said = (
        rb"the mirror's disk is nearly full: \d\.\d MB free, and a file of unknown size"
        rb" filled it; grows-1.0-py3-none-any.whl has no known size\n"
    )
    assert status == 507 and re.fullmatch(said, body), body
    warning = section(env.mirror, True, 0)["warnings"][0]
    assert re.fullmatch(
        r"disk nearly full: \d\.\d MB free, and a file of unknown size filled it; files of"
        r" unknown size are not kept, cached ones are still served",
        warning,
    )


async def test_a_full_catalog_still_serves_pages_and_held_files(env: Env) -> None:
    small = await env.file_url("small")
    assert (await fetch(env, small))[0] == 200
    fill_up(env.mirror.settings.store.parent)
    with pytest.raises(OSError) as full:
        (env.mirror.settings.store / "probe").write_bytes(b"x" * 65536)
    assert full.value.errno == errno.ENOSPC
    page = env.root / "simple" / "small" / "index.html"
    page.write_text(page.read_text() + "<!-- changed -->\n")  # a new page: must be stored
    for _ in range(2):
        r = await env.client.get("/pypi/simple/small/", headers={"Accept": JSON})
        assert r.status == 200, await r.text()
    assert (await fetch(env, small)) == (200, env.wheels["small"][1])
    assert section(env.mirror, True, 0)["store"]["disk_full"] is True


def test_the_room_named_is_the_stores_not_the_disks() -> None:
    space = Space(keep_free=512 << 20)
    space.did_not_fit(300 << 20)
    assert space.refused(free=700 << 20) == 300 << 20  # 188 MB left: still too big
    assert space.refused(free=900 << 20) is None  # room made: no longer said


def test_a_download_under_way_holds_only_the_room_it_has_still_to_write() -> None:
    """The free space read counts what a download has written: only its rest is held
    apart (its whole size was, beside that: a 6 MB file refused with room for it)."""
    mb = 10**6
    space = Space(keep_free=2 * mb)
    space.reserve(24 * mb)
    assert space.held == 24 * mb and not space.room_for(6 * mb, 31 * mb)
    space.took(18 * mb)  # 3/4 written: the disk's free space is 18 MB lower for it
    assert space.held == 6 * mb
    assert space.room_for(6 * mb, 14 * mb) and not space.room_for(6 * mb, 14 * mb - 1)
    space.reserve(10 * mb)  # another download, nothing of it written yet
    assert space.held == 16 * mb and space.reserved == 34 * mb  # the limit counts them whole
    space.release(24 * mb, 18 * mb)  # the first one ended (kept, or deleted)
    assert (space.held, space.reserved, space.landed) == (10 * mb, 10 * mb, 0)
    space.release(10 * mb)
    assert (space.held, space.reserved, space.landed) == (0, 0, 0)


def test_every_refusal_names_the_room_the_mirror_keeps_free() -> None:
    space = Space(keep_free=512 * 10**6)
    assert space.no_room("x.whl", 6_300_000, 20_300_000) == (
        "the mirror's disk has no room for x.whl (6.3 MB): 20.3 MB free,"
        " and it keeps 512 MB free (keep_free_bytes)"
    )
    assert space.full(free=17_000_000)
    assert space.unknown_size("y.whl", 17_000_000) == (
        "the mirror's disk is nearly full: 17.0 MB free, below the 512 MB it keeps free"
        " (keep_free_bytes); y.whl has no known size"
    )
    # a full disk needs no reason; one nearly full does, with nothing kept free
    assert Space(keep_free=0).fullness(1_000) == "full: 1.0 kB free"
    assert Space(keep_free=0).fullness(0) == "full: 0 B free"  # not "below the 0 B it keeps"
    assert Space(keep_free=0).fullness(5_000_000) == (
        "nearly full: 5.0 MB free, and a file of unknown size filled it"
    )


def test_a_disk_at_or_near_keep_free_bytes_is_said_at_start() -> None:
    keep = 512 * 10**6
    assert start_warning(20_300_000, keep) == (
        "Mirror store: its disk has 20.3 MB free and the mirror keeps 512 MB free"
        " (keep_free_bytes), so it keeps no new file; lower keep_free_bytes or use a"
        " larger disk"
    )
    assert start_warning(700 * 10**6, keep) == (
        "Mirror store: its disk has 700 MB free and the mirror keeps 512 MB free"
        " (keep_free_bytes), so only 188 MB of new files fit; lower keep_free_bytes or use"
        " a larger disk"
    )
    assert start_warning(2 * keep, keep) is None
    assert start_warning(0, 0) is None  # nothing kept free: nothing to explain


async def test_a_store_whose_disk_is_all_kept_free_says_so(tmp_path: Path) -> None:
    """No small disk needed: more kept free than any disk has (1 PB)."""
    wheel = make_wheel("one", "1.0")
    write_pypi(tmp_path / "upstream", {"one": [wheel]})
    async with fakeupstream.serving(tmp_path / "upstream") as upstream:
        config = settings(tmp_path / "store", f"{upstream.url}simple/", keep_free=10**15)
        async with mirror_client(config) as (client, mirror):
            r = await client.get("/pypi/simple/one/", headers={"Accept": JSON})
            url = (await r.json(content_type=None))["files"][0]["url"]
            r = await client.get(url)
            line = (
                rf"the mirror's disk has no room for {re.escape(wheel[0])} \(\d+ B\): \S+ \S+"
                r" free, and it keeps 1000 TB free \(keep_free_bytes\)"
            )
            assert r.status == 507 and re.fullmatch(line, r.reason or ""), r.reason
            warning = section(mirror, True, 0)["warnings"][0]
            assert re.fullmatch(
                r"disk nearly full: \S+ \S+ free, below the 1000 TB it keeps free"
                r" \(keep_free_bytes\); new files are not kept, cached ones are still served",
                warning,
            ), warning


async def test_max_size_evicts_the_coldest_file_to_make_room_on_the_disk(
    tmp_path: Path, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An event's case, shrunk: a store limit below the disk, one big file held and another
    asked for that the disk has no room for beside it. The held one goes first; the
    new one is fetched, never refused (it was: 507, the free space checked before any
    eviction, which ran only once a file was in)."""
    wheels = {p: make_wheel(p, "1.0", pad=2_200_000) for p in ("big-c", "big-d")}
    root = tmp_path / "upstream"
    write_pypi(root, {name: [w] for name, w in wheels.items()})
    async with fakeupstream.serving(root) as upstream:
        config = settings(small_disk / "store", f"{upstream.url}simple/", max_size=3_000_000)
        async with mirror_client(config) as (client, mirror):
            env = Env(upstream, client, mirror, wheels, root)
            assert (await fetch(env, await env.file_url("big-c"))) == (200, wheels["big-c"][1])
            room = mirror.store.space.room_for(len(wheels["big-d"][1]), mirror.store.free_bytes())
            assert not room  # the disk alone would refuse big-d
            with caplog.at_level("INFO", "retreatkit.mirror"):
                status, body = await fetch(env, await env.file_url("big-d"))
            assert (status, body) == (200, wheels["big-d"][1])
            assert mirror.stats.evicted >= 1 and mirror.store.used <= 3_000_000
            assert mirror._evicting is None  # made room before, not trimmed after
            said = [r.getMessage() for r in caplog.records if "make room" in r.getMessage()]
            assert re.fullmatch(
                r"evicted \d files \(\d+ bytes\) to make room for big_d-1\.0-py3-none-any\.whl"
                r" \(\d+ bytes\)",
                said[0],
            ), said
            # big-c went and comes back on request, evicting big-d in turn
            assert (await fetch(env, await env.file_url("big-c"))) == (200, wheels["big-c"][1])
            assert env.fetched(wheels["big-c"][0]) == 2


async def test_the_kits_own_wheel_on_a_full_disk_is_said_in_one_plain_line(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """It was `cannot serve this retreatkit to attendees: [Errno 28] No space left on
    device`: neither which disk nor in words."""
    fill_up(env.mirror.settings.store.parent)
    said: list[str] = []
    with caplog.at_level(logging.WARNING, logger="retreatkit.mirror"):
        await local.publish_own(env.mirror, said.append)
    store = env.mirror.settings.store
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot serve this retreatkit to attendees: the disk of the store {store} is full"
        " (No space left on device)"
    ]
    assert said == [] and env.mirror.kit.served is False
    assert not list((store / "tmp").iterdir())  # nothing left half-written
