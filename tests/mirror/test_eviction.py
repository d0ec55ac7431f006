"""`--max-size`: least recently used archives go first, indexes still in use last, the
organiser's own files never; hits are written in batches, not on the hit path."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from retreatkit.mirror import eviction
from retreatkit.mirror.records import Object
from retreatkit.mirror.store import Store, StoreInUse
from tests.mirror.conftest import Env


def put(store: Store, key: str, data: bytes, **kw: bool) -> str:
    digest = store.put_bytes(data)
    store.put(Object(key, digest, len(data), "application/octet-stream", time.time()), **kw)
    return digest


def test_archives_go_before_indexes_least_recently_used_first(tmp_path: Path) -> None:
    store = Store(tmp_path)
    old = put(store, "pypi/aa/old.whl", b"o" * 1000)
    used = put(store, "pypi/bb/used.whl", b"u" * 1000)
    page = put(store, "pypi/simple/demo", b"p" * 1000)
    mine = put(store, "pypi/cc/course.whl", b"c" * 1000, pinned=True)
    new = put(store, "pypi/dd/new.whl", b"n" * 1000)
    assert store.used == 5000
    store.accessed[used] = time.time() + 10  # a hit, noted in memory only
    assert eviction.evict(store, 5000).blobs == 0  # at the limit is not over it
    done = eviction.evict(store, 4000)  # down to 90%: 3600, so two archives go
    assert (done.blobs, done.bytes) == (2, 2000)
    assert set(done.keys) == {"pypi/aa/old.whl", "pypi/dd/new.whl"}
    assert not store.has_blob(old) and not store.has_blob(new)
    assert store.get("pypi/aa/old.whl") is None
    assert store.has_blob(used) and store.has_blob(page)
    # with no archive left to drop, the page goes; the pinned file never does
    done = eviction.evict(store, 1500)
    assert set(done.keys) == {"pypi/bb/used.whl", "pypi/simple/demo"}
    done = eviction.evict(store, 10)
    assert done.blobs == 0 and store.has_blob(mine) and store.used == 1000
    store.close()


def test_room_is_made_for_a_new_file_least_recently_used_first(tmp_path: Path) -> None:
    store = Store(tmp_path)
    old = put(store, "pypi/aa/old.whl", b"o" * 1000)
    used = put(store, "pypi/bb/used.whl", b"u" * 1000)
    mine = put(store, "pypi/cc/course.whl", b"c" * 1000, pinned=True)
    store.accessed[old] = time.time() + 10  # a hit: `used` is now the colder
    assert not eviction.short(store, 5000, 2000)  # 3000 + 2000 fits the limit and the disk
    assert eviction.make_room(store, 5000, 2000).blobs == 0
    assert not eviction.short(store, 0, 10**6)  # no limit: nothing is evicted
    assert not eviction.short(store, 5000, 6000)  # larger than the limit: never emptied for
    store.space.reserve(1000)  # a download under way counts as stored
    done = eviction.make_room(store, 5000, 1500)  # to 4500 with the new file: one goes
    assert (done.blobs, done.keys) == (1, ["pypi/bb/used.whl"])
    assert store.has_blob(old) and store.has_blob(mine) and not store.has_blob(used)
    done = eviction.make_room(store, 5000, 4000)  # the pinned file stays whatever is asked
    assert done.keys == ["pypi/aa/old.whl"] and store.has_blob(mine)
    store.close()


def test_a_store_made_before_accounting_adopts_its_blobs(tmp_path: Path) -> None:
    store = Store(tmp_path)
    put(store, "pypi/simple/demo", b"page")
    put(store, "pypi/aa/x.whl", b"wheel!")
    store.db().execute("delete from blobs")
    store.close()
    store = Store(tmp_path)
    assert store.used == 10
    kinds = dict(store.db().execute("select size, kind from blobs").fetchall())
    assert kinds == {4: "index", 6: "archive"}
    store.close()


def test_one_process_at_a_time(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(StoreInUse, match="is in use by another retreatkit process"):
        Store(tmp_path)
    store.close()
    Store(tmp_path).close()  # released on close


@pytest.mark.parametrize("env", [{"max_size": 1_740_000}], indirect=True)
async def test_the_mirror_stays_under_its_limit_and_refetches_what_went(env: Env) -> None:
    dep = await env.file_url("demo-dep")  # about 200 kB
    assert (await (await env.client.get(dep)).read()) == env.wheels["demo-dep"][1]
    big = await env.file_url("big-pkg")  # 1.55 MB: the store would go over its limit
    assert (await (await env.client.get(big)).read()) == env.wheels["big-pkg"][1]
    assert env.mirror._evicting is None  # room was made before the download, not after
    assert env.mirror.store.used <= 0.9 * 1_740_000
    assert env.mirror.stats.evicted == 1  # the older archive only: pages stay
    assert env.mirror.hot.get("pypi/" + dep.removeprefix("/pypi/files/")) is None
    assert (await (await env.client.get(big)).read()) == env.wheels["big-pkg"][1]
    # what went is fetched again on request, verified like the first time
    assert (await (await env.client.get(dep)).read()) == env.wheels["demo-dep"][1]
    assert env.fetched(env.wheels["demo-dep"][0]) == 2
