"""A blob that changes on disk while the mirror runs is noticed by the stat every hit
makes (no hash per hit): re-hashed, dropped with one line in the log if it rotted, and the
request treated as a miss: fetched again, or the offline answer."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest

from retreatkit.mirror.testing import flip_a_byte
from tests.mirror.conftest import Env, Wheel

NO_HOT = {"hot_bytes": 0}  # every hit reads the disk, as one evicted from memory does


def blob_of(env: Env, wheel: Wheel) -> Path:
    digest = hashlib.sha256(wheel[1]).hexdigest()
    return env.mirror.store.blob_path(digest)


@pytest.mark.parametrize("env", [NO_HOT], indirect=True)
@pytest.mark.parametrize("project", ["demo-dep", "big-pkg"])  # from memory, by sendfile
async def test_a_blob_changed_while_serving_is_dropped_and_fetched_again(
    env: Env, project: str, caplog: pytest.LogCaptureFixture
) -> None:
    wheel = env.wheels[project]
    url = await env.file_url(project)
    assert await (await env.client.get(url)).read() == wheel[1]
    assert await (await env.client.get(url)).read() == wheel[1]  # a hit: no hashing
    assert env.fetched(wheel[0]) == 1
    flip_a_byte(blob_of(env, wheel))

    with caplog.at_level(logging.WARNING, logger="retreatkit.mirror"):
        r = await env.client.get(url)
        assert (r.status, await r.read(), r.headers["X-Cache"]) == (200, wheel[1], "MISS")
    digest = blob_of(env, wheel).name
    lines = [r.getMessage() for r in caplog.records if "corrupt" in r.getMessage()]
    assert lines == [f"dropping corrupt blob {digest} (changed on disk while the mirror ran)"]
    assert env.fetched(wheel[0]) == 2
    assert env.mirror.store.check.dropped == 1
    assert (await (await env.client.get(url)).read()) == wheel[1]  # the new blob is a hit
    assert env.fetched(wheel[0]) == 2


@pytest.mark.parametrize("env", [NO_HOT], indirect=True)
async def test_a_blob_touched_but_whole_is_served_and_not_dropped(env: Env) -> None:
    wheel = env.wheels["big-pkg"]
    url = await env.file_url("big-pkg")
    assert await (await env.client.get(url)).read() == wheel[1]
    path = blob_of(env, wheel)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a backup tool, say
    r = await env.client.get(url)
    assert (r.status, await r.read(), r.headers["X-Cache"]) == (200, wheel[1], "HIT")
    assert env.fetched(wheel[0]) == 1 and env.mirror.store.check.dropped == 0


@pytest.mark.parametrize("env", [NO_HOT], indirect=True)
async def test_a_rotten_blob_whose_upstream_fails_is_never_served(env: Env) -> None:
    wheel = env.wheels["demo-dep"]
    url = await env.file_url("demo-dep")
    assert await (await env.client.get(url)).read() == wheel[1]
    env.upstream.rules[f"/files/{wheel[0]}"] = "fail"
    flip_a_byte(blob_of(env, wheel))
    r = await env.client.get(url)
    line = f"upstream answered 500 for {wheel[0]}"
    assert (r.status, r.reason, await r.read()) == (502, line, (line + "\n").encode())
    assert not blob_of(env, wheel).exists()  # never served: gone
