"""Index pages over HTTP, in process: conformance (item 10), offline pages (item 4)."""

from __future__ import annotations

import asyncio
import json

import pytest

from retreatkit.mirror.testing import Clock
from tests.mirror.conftest import JSON, Env


async def test_index_pages_carry_validators_and_vary(env: Env) -> None:
    r = await env.client.get("/pypi/simple/demo-pkg/", headers={"Accept": JSON})
    assert r.status == 200 and r.headers["Content-Type"] == JSON
    assert r.headers["Vary"] == "Accept"  # one URL, two formats: shared caches must not mix
    # asked again each time (a 304): a client that kept it (uv does, for its max-age)
    # would not see files the mirror does not hold listed yanked once the uplink goes
    assert r.headers["Cache-Control"] == "max-age=0"
    tag = r.headers["ETag"]
    html = await env.client.get("/pypi/simple/demo-pkg/", headers={"Accept": "text/html"})
    assert html.headers["Content-Type"].startswith("text/html") and html.headers["ETag"] != tag
    again = await env.client.get(
        "/pypi/simple/demo-pkg/", headers={"Accept": JSON, "If-None-Match": tag}
    )
    assert again.status == 304 and again.headers["ETag"] == tag


async def test_the_simple_root_without_its_slash_redirects(env: Env) -> None:
    r = await env.client.get("/pypi/simple", allow_redirects=False)
    assert r.status == 301 and r.headers["Location"] == "/pypi/simple/"
    r = await env.client.get("/pypi/simple/Demo_Pkg", allow_redirects=False)
    assert r.status == 301 and r.headers["Location"] == "/pypi/simple/demo-pkg/"


async def test_pep_700_from_an_html_upstream(env: Env) -> None:
    doc = await env.page("demo-dep")
    assert doc["versions"] == ["2.0"]
    assert doc["meta"]["api-version"] == "1.0"  # no sizes known yet: 1.1 would be a lie
    _, data, _ = env.wheels["demo-dep"]
    await (await env.client.get(doc["files"][0]["url"])).read()
    doc = await env.page("demo-dep")  # the size is known once the file is held
    assert doc["meta"]["api-version"] == "1.1" and doc["files"][0]["size"] == len(data)


@pytest.mark.parametrize("env", [{"as_json": True}], indirect=True)
async def test_pep_700_from_a_json_upstream(env: Env) -> None:
    doc = await env.page("big-pkg")
    _, data, metadata = env.wheels["big-pkg"]
    assert doc["meta"]["api-version"] == "1.1" and doc["versions"] == ["1.0"]
    assert doc["files"][0]["size"] == len(data)
    meta = await env.client.get(doc["files"][0]["url"] + ".metadata")
    assert await meta.read() == metadata


@pytest.mark.parametrize("env", [{"index_ttl": 0.0}], indirect=True)
async def test_offline_pages_list_what_is_held_and_the_rest_yanked(env: Env) -> None:
    # two versions upstream; only 2.0 was ever fetched: 3.0 stays listed, yanked, so a
    # client asking for it by version is told why (it was left out, as if it did not exist)
    page = env.root / "simple" / "demo-dep" / "index.html"
    old = page.read_text()
    extra = '<a href="../../files/demo_dep-3.0-py3-none-any.whl#sha256=' + "e" * 64 + '">'
    page.write_text(old.replace("</body>", extra + "demo_dep-3.0-py3-none-any.whl</a></body>"))
    online = await env.page("demo-dep")
    assert [f["filename"] for f in online["files"]] == [
        "demo_dep-2.0-py3-none-any.whl",
        "demo_dep-3.0-py3-none-any.whl",
    ]
    await (await env.client.get(online["files"][0]["url"])).read()
    env.upstream.rules["/simple/demo-dep/"] = "fail"  # the upstream breaks
    r = await env.client.get("/pypi/simple/demo-dep/", headers={"Accept": JSON})
    assert r.status == 200
    assert r.headers["Mirror-Offline"] == "cached-only"
    assert r.headers["Warning"] == '110 - "Response is Stale"'
    assert r.headers["Cache-Control"] == "no-cache"
    doc = json.loads(await r.read())
    assert [(f["filename"], f.get("yanked")) for f in doc["files"]] == [
        ("demo_dep-2.0-py3-none-any.whl", None),
        ("demo_dep-3.0-py3-none-any.whl", "not held by this mirror, whose upstream is down"),
    ]
    assert doc["versions"] == ["2.0", "3.0"]
    assert doc["meta"]["api-version"] == "1.0"  # 3.0's size: its HTML upstream gave none
    html = await env.client.get("/pypi/simple/demo-dep/")
    assert html.headers["Mirror-Offline"] == "cached-only"
    links = [line for line in (await html.read()).decode().split("<a ") if "3.0" in line]
    assert len(links) == 1
    assert 'data-yanked="not held by this mirror, whose upstream is down"' in links[0]
    assert env.mirror.stats.offline_pages == 2 and env.mirror.stats.stale_served == 2


async def test_a_fresh_page_lists_only_what_is_held_once_its_files_host_is_down(env: Env) -> None:
    env.mirror.fetcher.clock = Clock()
    doc = await env.page("demo-pkg")
    await (await env.client.get(doc["files"][0]["url"])).read()
    dep = (await env.page("demo-dep"))["files"][0]["url"]
    big = (await env.page("big-pkg"))["files"][0]["url"]
    env.upstream.rules["*"] = "silent"
    env.mirror.settings.limits.connect_timeout = 0.2
    env.mirror.settings.limits.headers_timeout = 0.2
    asked = await asyncio.gather(*(env.client.get(u) for u in (dep, big, dep + ".metadata")))
    # the files' host gave no answer in time to three different requests: it is down
    assert [r.status for r in asked] == [504] * 3
    r = await env.client.get("/pypi/simple/demo-pkg/", headers={"Accept": JSON})
    assert r.headers["Mirror-Offline"] == "cached-only" and "Warning" not in r.headers
    assert [f["url"] for f in json.loads(await r.read())["files"]] == [doc["files"][0]["url"]]
    # none of demo-dep's files held: all listed, each answered with why it cannot be had
    r = await env.client.get("/pypi/simple/demo-dep/", headers={"Accept": JSON})
    assert "Mirror-Offline" not in r.headers
    assert [f["url"] for f in json.loads(await r.read())["files"]] == [dep]
    host = env.upstream.url.split("//")[1].rstrip("/")
    r = await env.client.get(dep)
    assert (r.status, r.reason) == (504, f"upstream {host} is down (no answer within 0.4 s);"
                                         " next try in 2 s")  # fmt: skip


async def test_a_project_the_upstream_does_not_have(env: Env) -> None:
    r = await env.client.get("/pypi/simple/no-such-thing/")
    assert r.status == 404
    assert await r.text() == f"the upstream has no {env.upstream.url}simple/no-such-thing/\n"
    assert env.mirror.stats.not_found == 1


@pytest.mark.parametrize("env", [{"as_json": True}], indirect=True)
async def test_a_held_wheels_metadata_is_made_from_it_not_fetched(env: Env) -> None:
    filename, data, metadata = env.wheels["big-pkg"]
    url = await env.file_url("big-pkg")
    assert await (await env.client.get(url)).read() == data  # the wheel alone, as uv takes it
    env.upstream.rules[f"/files/{filename}.metadata"] = "fail"  # the uplink is gone
    for _ in range(2):  # made once, then held
        meta = await env.client.get(url + ".metadata")
        assert meta.status == 200 and await meta.read() == metadata
    assert env.fetched(filename + ".metadata") == 0


@pytest.mark.parametrize("env", [{"as_json": True}], indirect=True)
async def test_metadata_that_differs_from_the_index_is_fetched_instead(env: Env) -> None:
    filename = env.wheels["big-pkg"][0]
    doc = env.root / "simple" / "big-pkg" / "index.json"
    page = json.loads(doc.read_text())
    page["files"][0]["core-metadata"] = {"sha256": "0" * 64}  # not the wheel's METADATA
    doc.write_text(json.dumps(page))
    url = await env.file_url("big-pkg")
    await (await env.client.get(url)).read()
    meta = await env.client.get(url + ".metadata")
    assert meta.status == 504  # the upstream's copy, which fails its check too (remembered)
    assert env.fetched(filename + ".metadata") == 1
