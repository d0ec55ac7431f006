"""An upstream that accepts and never answers (item 2, in process): every request bounded,
the upstream remembered down once silent for three different requests, stale pages served
without asking it, one probe at a time; one silent path alone fails alone. The resolver
that never answers is tested end to end (tests/e2e/test_mirror_upstream.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import pytest

from retreatkit.mirror.status import section
from retreatkit.mirror.testing import Clock
from retreatkit.mirror.uplink import Limits
from tests.mirror.conftest import JSON, Env

PROJECTS = ("demo-pkg", "demo-dep", "big-pkg")
PAGES = tuple(f"/simple/{project}/" for project in PROJECTS)
QUICK = {"index_ttl": 0.0, "limits": Limits(connect_timeout=0.3, headers_timeout=0.3)}


async def get(env: Env, project: str) -> tuple[int, dict[str, str], bytes]:
    r = await env.client.get(f"/pypi/simple/{project}/", headers={"Accept": JSON})
    return r.status, dict(r.headers), await r.read()


def asked(env: Env) -> int:
    return sum(env.upstream.counts[p] for p in PAGES)


async def hold(env: Env, project: str) -> None:
    """A project's page and its file in the store: offline, its page lists what is held."""
    await (await env.client.get(await env.file_url(project))).read()


async def go_silent(env: Env, *projects: str) -> None:
    """The upstream takes every request and answers none (a dead uplink behind a proxy or
    portal that still accepts): three different pages wait out the bound, and it is down."""
    env.upstream.rules["*"] = "silent"
    await asyncio.gather(*(get(env, p) for p in projects or PROJECTS))
    await env.mirror.refreshed()
    assert section(env.mirror, True, 0)["upstreams"]["pypi"]["state"] == "down"


@pytest.mark.parametrize("env", [QUICK], indirect=True)
async def test_a_silent_upstream_is_remembered_down(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "retreatkit.mirror")
    now = [1000.0]
    env.mirror.fetcher.clock = lambda: now[0]
    for project in PROJECTS:
        await hold(env, project)
    env.upstream.rules["*"] = "silent"
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        # three different pages, each waiting for the bound, once
        answers = await asyncio.gather(*(get(env, project) for project in PROJECTS))
        stale = (200, '110 - "Response is Stale"')
        assert [(status, headers["Warning"]) for status, headers, _ in answers] == [stale] * 3
        await env.mirror.refreshed()
        before = asked(env)
        for _ in range(5):  # nobody else waits on it: stale at once, upstream not asked
            status, headers, _ = await get(env, "demo-pkg")
            assert status == 200 and headers["Mirror-Offline"] == "cached-only"
        assert asked(env) == before and env.mirror.stats.upstream_skipped == 5

        report = section(env.mirror, True, 0)
        pypi = report["upstreams"]["pypi"]
        assert (pypi["state"], pypi["last_error"]) == ("down", "no answer within 0.6 s")
        assert pypi["retry_in_seconds"] == 2.0
        host = env.upstream.url.split("//")[1].rstrip("/")
        assert re.fullmatch(
            rf"upstream down: http://{host} since \S+Z \(no answer within 0.6 s\);"
            " serving what the store holds",
            report["warnings"][0],
        )

        # after the backoff: one request probes, in the background; all are answered
        now[0] += 2.0
        answers = await asyncio.gather(*(get(env, project) for project in PROJECTS))
        assert [(a[0], a[1]["Mirror-Offline"]) for a in answers] == [(200, "cached-only")] * 3
        await env.mirror.refreshed()  # the probe met the silence too
        assert asked(env) == before + 1

        env.upstream.rules.clear()  # the uplink is back: the next probe finds it
        now[0] += 60.0
        status, headers, _ = await get(env, "demo-dep")  # the probe's request: stale at once
        assert status == 200 and headers["Mirror-Offline"] == "cached-only"
        await env.mirror.refreshed()
        assert section(env.mirror, True, 0)["upstreams"]["pypi"]["state"] == "up"
        said = [r.getMessage() for r in caplog.records if r.name == "retreatkit.mirror"]
        said = [line for line in said if line.startswith(f"upstream http://{host}")]
        assert said == [  # the pair an organiser reads: when it went, and when it came back
            f"upstream http://{host} is down: no answer within 0.6 s, to 3 different requests",
            f"upstream http://{host} is back up (down for 62 s)",
        ]
        status, headers, _ = await get(env, "demo-dep")
        assert status == 200 and "Warning" not in headers and "Mirror-Offline" not in headers


@pytest.mark.parametrize("env", [QUICK], indirect=True)
async def test_a_page_with_none_of_its_files_held_offline_lists_them_all(env: Env) -> None:
    """The upstream down, a page held whose files never were: listing only what is held
    left it empty, and pip said `from versions: none`, as for a name that does not exist
    (pip shows nothing of a page's error, 504 or not). Listed whole, the client picks a
    file and is told, in the mirror's words, that the upstream is down; a page with a
    file held still lists only those."""
    env.mirror.fetcher.clock = lambda: 1000.0
    held = await env.file_url("demo-pkg")
    await (await env.client.get(held)).read()
    online = await env.page("demo-dep")  # the page alone: its file never fetched
    host = env.upstream.url.split("//")[1].rstrip("/")
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        await go_silent(env)
        offline = env.mirror.stats.offline_pages
        status, headers, _ = await get(env, "demo-pkg")
        assert status == 200 and headers["Mirror-Offline"] == "cached-only"
        status, headers, body = await get(env, "demo-dep")
        assert status == 200 and headers["Warning"] == '110 - "Response is Stale"'
        assert "Mirror-Offline" not in headers  # it lists what the store does not hold
        assert json.loads(body)["files"] == online["files"]
        html = await env.client.get("/pypi/simple/demo-dep/")
        assert env.wheels["demo-dep"][0] in await html.text()
        r = await env.client.get(online["files"][0]["url"])  # the client's choice
        line = f"upstream {host} is down (no answer within 0.6 s); next try in 2 s"
        assert (r.status, r.reason, await r.text()) == (504, line, line + "\n")
        status, _, body = await get(env, "demo-pkg")
        assert [f["url"] for f in json.loads(body)["files"]] == [held]
    assert env.mirror.stats.offline_pages - offline == 2  # the pages that list what is held


@pytest.mark.parametrize("env", [QUICK], indirect=True)
async def test_one_silent_page_fails_alone_and_its_retries_at_once(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """One path the upstream never answers (a stuck backend), the rest answered: it took
    the whole upstream down, and every other page and file was refused as if the uplink
    were gone. Its client is told why, its retries at once for a backoff; others go on."""
    caplog.set_level("INFO", "retreatkit.mirror")
    clock = Clock()
    env.mirror.fetcher.clock = clock
    env.upstream.rules["/simple/demo-pkg/"] = "silent"
    host = env.upstream.url.split("//")[1].rstrip("/")
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        status, _, body = await get(env, "demo-pkg")
        assert (status, body) == (504, f"upstream {host}: no answer within 0.6 s\n".encode())
        r = await env.client.get("/pypi/simple/demo-pkg/", headers={"Accept": JSON})
        line = f"upstream {host}: no answer within 0.6 s; next try in 2 s"
        assert (r.status, r.reason, await r.text()) == (504, line, line + "\n")
        assert env.upstream.counts["/simple/demo-pkg/"] == 1  # the retry waited on nothing
        # the silence is one failure; the retry refused at once is skipped, not another
        stats = env.mirror.stats
        assert (stats.upstream_errors, stats.upstream_skipped) == (1, 1)
        for project in ("demo-dep", "big-pkg"):  # the same upstream, asked and answered
            status, headers, _ = await get(env, project)
            assert status == 200 and "Mirror-Offline" not in headers
        _, data, _ = env.wheels["demo-dep"]
        r = await env.client.get(await env.file_url("demo-dep"))
        assert (r.status, await r.read()) == (200, data)

        env.upstream.rules.clear()  # the path mends: after the backoff, it is asked again
        clock.now += 2.0
        status, _, _ = await get(env, "demo-pkg")
        assert status == 200 and env.upstream.counts["/simple/demo-pkg/"] == 2
    report = section(env.mirror, True, 0)
    assert (report["upstreams"]["pypi"]["state"], report["warnings"]) == ("up", [])
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [line for line in said if "is down" in line]


@pytest.mark.parametrize("env", [QUICK], indirect=True)
async def test_pages_never_cached_fail_fast_once_the_upstream_is_silent_for_three(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "retreatkit.mirror")
    env.mirror.fetcher.clock = Clock()
    env.upstream.rules["*"] = "silent"
    host = env.upstream.url.split("//")[1].rstrip("/")
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        for project in PROJECTS:  # one after another, each waits for the bound
            status, _, body = await get(env, project)
            assert (status, body) == (504, f"upstream {host}: no answer within 0.6 s\n".encode())
        # another page, same upstream: a client's retry would not ask it again (504)
        r = await env.client.get("/pypi/simple/other/", headers={"Accept": JSON})
        line = f"upstream {host} is down (no answer within 0.6 s); next try in 2 s"
        assert (r.status, r.reason, await r.text()) == (504, line, line + "\n")
        assert env.upstream.counts["/simple/other/"] == 0
    # the organiser's log: that it went down, once; not each page that then failed
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert [line for line in said if "is down" in line] == [
        f"upstream http://{host} is down: no answer within 0.6 s, to 3 different requests"
    ]


@pytest.mark.parametrize("env", [QUICK], indirect=True)
async def test_nobody_waits_on_the_probe_not_even_the_request_that_starts_it(env: Env) -> None:
    now = [1000.0]
    env.mirror.fetcher.clock = lambda: now[0]
    await hold(env, "demo-pkg")
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        await go_silent(env)  # demo-pkg's page served stale
        env.mirror.settings.limits.headers_timeout = 3600.0  # the probe ends when we say
        now[0] += 2.0
        env.upstream.asked.clear()
        for _ in range(3):  # the first of them starts the probe: each is answered at once
            status, headers, _ = await get(env, "demo-pkg")
            assert status == 200 and headers["Mirror-Offline"] == "cached-only"
        await env.upstream.asked.wait()  # the probe is at the upstream, unanswered
        assert env.upstream.counts["/simple/demo-pkg/"] == 3  # fetched, found down, probed
        env.upstream.closing.set()  # the silence ends: the probe gives no verdict
        await env.mirror.refreshed()
        assert env.mirror.stats.stale_served == 4


SILENT_READ = {"index_ttl": 0.0, "limits": Limits(headers_timeout=5.0, read_timeout=0.3)}


@pytest.mark.parametrize("env", [SILENT_READ], indirect=True)
async def test_an_upstream_silent_once_connected_is_said_so_with_the_bound_that_ended_it(
    env: Env,
) -> None:
    await env.page("demo-pkg")
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        await go_silent(env)
        status, _, _ = await get(env, "demo-pkg")
    assert status == 200  # the held page, stale
    pypi = section(env.mirror, True, 0)["upstreams"]["pypi"]
    assert (pypi["state"], pypi["last_error"]) == ("down", "no answer within 0.3 s")


@pytest.mark.parametrize("env", [QUICK], indirect=True)
async def test_nothing_cached_no_retry_waits_on_a_silent_upstream_again(env: Env) -> None:
    """A client's retries (apt-get's, uv's, npm's) after the first bound: each answered
    at once, the probe they start going on without them, the backoff doubling."""
    now = [1000.0]
    env.mirror.fetcher.clock = lambda: now[0]
    host = env.upstream.url.split("//")[1].rstrip("/")
    down = f"upstream {host} is down (no answer within 0.6 s)"
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        await go_silent(env)  # the one wait for each page: the fetcher's bound
        env.mirror.settings.limits.headers_timeout = 3600.0  # a probe now ends when we say
        r = await env.client.get("/pypi/simple/demo-pkg/", headers={"Accept": JSON})
        line = f"{down}; next try in 2 s"
        assert (r.status, r.reason, await r.text()) == (504, line, line + "\n")
        now[0] = 1001.6  # under a second to go is "1 s", not "0 s" (uv prints it)
        r = await env.client.get("/pypi/simple/demo-pkg/", headers={"Accept": JSON})
        assert (r.status, r.reason) == (504, f"{down}; next try in 1 s")

        now[0] = 1002.0  # the backoff is over: this retry starts the probe, and does not wait
        env.upstream.asked.clear()
        line = f"{down}; trying it again now"
        for _ in range(3):
            r = await env.client.get("/pypi/simple/demo-pkg/", headers={"Accept": JSON})
            assert (r.status, r.reason) == (504, line)
        await env.upstream.asked.wait()  # the probe is at the upstream, unanswered
        assert env.upstream.counts["/simple/demo-pkg/"] == 2
        env.upstream.closing.set()  # the silence ends: the probe gives no verdict
        await env.mirror.refreshed()


@pytest.mark.parametrize("env", [QUICK], indirect=True)
async def test_a_file_never_fetched_is_a_504_at_once_while_its_probe_goes_on(env: Env) -> None:
    now = [1000.0]
    env.mirror.fetcher.clock = lambda: now[0]
    urls = [await env.file_url(project) for project in PROJECTS]  # listed, not fetched
    url = urls[1]
    env.upstream.rules["*"] = "silent"
    host = env.upstream.url.split("//")[1].rstrip("/")
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        answers = await asyncio.gather(*(env.client.get(u) for u in urls))
        assert [r.status for r in answers] == [504] * 3  # each waited for the bound
        env.mirror.settings.limits.headers_timeout = 3600.0
        now[0] += 2.0
        env.upstream.asked.clear()
        r = await env.client.get(url)  # the probe's request
        line = f"upstream {host} is down (no answer within 0.6 s); trying it again now"
        assert (r.status, r.reason) == (504, line)
        await env.upstream.asked.wait()
        env.upstream.rules.clear()
        env.upstream.closing.set()


SLOW = {"index_ttl": 0.0, "stale_after": 0.0, "limits": Limits(headers_timeout=3600.0)}


@pytest.mark.parametrize("env", [SLOW], indirect=True)
async def test_a_stale_page_is_served_without_waiting_out_a_slow_revalidation(env: Env) -> None:
    """The first request after index_ttl, the upstream silent but not yet known down: it
    waits `stale_after`, not the fetcher's bound, and the revalidation goes on."""
    await hold(env, "demo-pkg")
    env.upstream.rules["/simple/demo-pkg/"] = "silent"
    env.upstream.asked.clear()
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        status, headers, _ = await get(env, "demo-pkg")
        assert status == 200 and headers["Warning"] == '110 - "Response is Stale"'
        assert headers["Mirror-Offline"] == "cached-only"  # as every stale page
        await env.upstream.asked.wait()  # the revalidation is at the upstream, unanswered
        env.upstream.rules.clear()
        env.upstream.closing.set()
        await env.mirror.refreshed()
    assert env.mirror.stats.stale_served == 1


async def test_a_fresh_page_probes_an_upstream_that_is_down(env: Env) -> None:
    """A page within its index_ttl asks nothing upstream; while the upstream is down it
    lists only what is held, so it must let the probe through, or once the uplink is back
    pip and uv find no version of a package nobody fetched until the page expires."""
    now = [1000.0]
    env.mirror.fetcher.clock = lambda: now[0]
    await hold(env, "demo-pkg")  # fresh for index_ttl (600 s)
    # quick bounds only now: a loaded machine may take longer than 0.3 s for the first
    env.mirror.fetcher.limits = Limits(connect_timeout=0.3, headers_timeout=0.3)
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        await go_silent(env, "demo-dep", "big-pkg", "other")  # no answer: the upstream is down
        status, headers, _ = await get(env, "demo-pkg")
        assert status == 200 and headers["Mirror-Offline"] == "cached-only"

        env.upstream.rules.clear()  # the uplink is back
        now[0] += 2.0
        status, headers, _ = await get(env, "demo-pkg")  # the probe's request
        assert status == 200 and headers["Mirror-Offline"] == "cached-only"
        await env.mirror.refreshed()
        assert section(env.mirror, True, 0)["upstreams"]["pypi"]["state"] == "up"
        status, headers, _ = await get(env, "demo-pkg")
        assert status == 200 and "Mirror-Offline" not in headers


STUCK = {"limits": Limits(connect_timeout=1.0, headers_timeout=1.0, read_timeout=0.3)}


@pytest.mark.parametrize("env", [STUCK], indirect=True)
async def test_a_file_stuck_mid_body_fails_alone(env: Env) -> None:
    """One object stuck on a CDN node: its body stops half way, and the request for the
    rest is never answered. Its client is told; the upstream's other files are had."""
    env.mirror.fetcher.clock = Clock()
    stuck, fine = await env.file_url("demo-pkg"), await env.file_url("demo-dep")
    filename = env.wheels["demo-pkg"][0]
    env.upstream.rules[f"/files/{filename}"] = "stuck"
    host = env.upstream.url.split("//")[1].rstrip("/")
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        r = await env.client.get(stuck)
        line = f"upstream {host}: no answer within 0.3 s"
        assert (r.status, r.reason, await r.text()) == (504, line, line + "\n")
        assert env.fetched(filename) == 2  # the file, then the rest of it
        r = await env.client.get(fine)
        assert (r.status, await r.read()) == (200, env.wheels["demo-dep"][1])
    report = section(env.mirror, True, 0)
    assert (report["upstreams"]["pypi"]["state"], report["warnings"]) == ("up", [])
