"""npm through the mirror, in process: packuments full and short with tarball URLs rewritten
and integrity exact, tarballs verified before they are kept, scoped names, offline views."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient

from retreatkit.mirror import fakeupstream, npm
from retreatkit.mirror.fakeupstream import Upstream
from retreatkit.mirror.service import Mirror
from retreatkit.mirror.testing import Clock, mirror_client, settings
from retreatkit.mirror.testrepos import integrity, make_npm_tarball, write_npm
from retreatkit.mirror.uplink import Limits

HOST = {"Host": "mirror.retreat.lan:8000"}


@dataclass
class Npm:
    upstream: Upstream
    client: TestClient[Any, Any]
    mirror: Mirror
    root: Path
    tarballs: dict[str, bytes]
    offloaded: list[str]

    async def packument(self, path: str, accept: str = "application/json") -> dict[str, Any]:
        r = await self.client.get(path, headers={**HOST, "Accept": accept})
        assert r.status == 200, await r.text()
        doc: dict[str, Any] = json.loads(await r.read())
        return doc


@pytest.fixture
async def reg(tmp_path: Path) -> AsyncIterator[Npm]:
    tarballs = {
        "leftpad-rk@1.0.0": make_npm_tarball("leftpad-rk", "1.0.0"),
        "leftpad-rk@1.1.0": make_npm_tarball("leftpad-rk", "1.1.0"),
        "@rk/util@2.0.0": make_npm_tarball("@rk/util", "2.0.0", {"leftpad-rk": "^1.0.0"}),
    }
    root = tmp_path / "upstream"
    offloaded: list[str] = []

    async def offload(fn: Callable[..., Any], *args: Any) -> Any:
        offloaded.append(getattr(fn, "__name__", "") or getattr(fn, "func", fn).__name__)
        return await asyncio.to_thread(fn, *args)

    async with fakeupstream.serving(root) as upstream:
        write_npm(root, upstream.url, list(tarballs.values()))
        limits = Limits(connect_timeout=0.5, headers_timeout=0.5, read_timeout=0.5)
        config = settings(tmp_path / "store", npm=upstream.url, index_ttl=0.0, limits=limits)
        async with mirror_client(config, offload=offload) as (client, mirror):
            yield Npm(upstream, client, mirror, root, tarballs, offloaded)


async def test_packuments_point_at_the_mirror_and_keep_integrity_exact(reg: Npm) -> None:
    upstream = json.loads((reg.root / "leftpad-rk" / "index.json").read_text())
    doc = await reg.packument("/npm/leftpad-rk")
    assert doc["dist-tags"] == {"latest": "1.1.0"}
    for version, meta in doc["versions"].items():
        dist, theirs = meta["dist"], upstream["versions"][version]["dist"]
        assert (
            dist["tarball"]
            == f"http://mirror.retreat.lan:8000/npm/leftpad-rk/-/leftpad-rk-{version}.tgz"
        )
        assert (dist["integrity"], dist["shasum"]) == (theirs["integrity"], theirs["shasum"])
    assert "_process" in reg.offloaded  # parsed off the loop
    short = await reg.client.get(
        "/npm/leftpad-rk", headers={"Accept": npm.ACCEPT_ABBREVIATED, "Host": "10.0.0.5:8000"}
    )
    assert short.headers["Content-Type"] == npm.ABBREVIATED
    assert short.headers["Vary"] == "Accept"
    body = json.loads(await short.read())
    assert body["versions"]["1.0.0"]["dist"]["tarball"].startswith("http://10.0.0.5:8000/npm/")


async def test_npm_asks_for_a_packument_again_each_time(reg: Npm) -> None:
    """Held for index_ttl by the mirror, yet npm may keep it not a moment: one kept from
    before the uplink went lists versions the mirror does not hold (npm picked the newest
    and failed on its tarball's 504); asked again, it gets a 304 while it is the same."""
    reg.mirror.settings = replace(reg.mirror.settings, index_ttl=600.0)
    headers = {**HOST, "Accept": npm.ACCEPT_ABBREVIATED}
    r = await reg.client.get("/npm/leftpad-rk", headers=headers)
    await r.read()
    assert r.status == 200 and r.headers["Cache-Control"] == "max-age=0"
    again = await reg.client.get(
        "/npm/leftpad-rk", headers={**headers, "If-None-Match": r.headers["ETag"]}
    )
    assert again.status == 304 and again.headers["Cache-Control"] == "max-age=0"


@pytest.mark.parametrize("path", ["/npm/@rk%2futil", "/npm/@rk%2Futil", "/npm/@rk/util"])
async def test_scoped_names(reg: Npm, path: str) -> None:
    doc = await reg.packument(path)
    url = doc["versions"]["2.0.0"]["dist"]["tarball"]
    assert url == "http://mirror.retreat.lan:8000/npm/@rk/util/-/util-2.0.0.tgz"
    r = await reg.client.get(url.removeprefix("http://mirror.retreat.lan:8000"))
    data = await r.read()
    assert r.status == 200 and data == reg.tarballs["@rk/util@2.0.0"]


async def test_tarballs_are_verified_before_they_are_kept(reg: Npm) -> None:
    await reg.packument("/npm/leftpad-rk")
    path = "/npm/leftpad-rk/-/leftpad-rk-1.0.0.tgz"
    clock = reg.mirror.fetcher.clock = Clock()
    reg.upstream.rules["/leftpad-rk/-/leftpad-rk-1.0.0.tgz"] = "corrupt"
    r = await reg.client.get(path)  # small: checked before the answer, said, not cut
    assert r.status == 504
    line = (await r.text()).rstrip("\n")
    assert line.startswith(
        "upstream sent bad bytes for leftpad-rk-1.0.0.tgz: sha512 mismatch: expected "
    )
    assert reg.mirror.stats.verify_failures == 1
    assert await reg.mirror.blob(npm.tarball_key("leftpad-rk", "leftpad-rk-1.0.0.tgz")) is None
    reg.upstream.rules.clear()
    clock.now += 70  # npm's retries: the same answer, and the upstream is not asked
    r = await reg.client.get(path)
    assert (r.status, await r.text()) == (504, f"{line}; next try in 230 s\n")
    assert reg.upstream.counts["/leftpad-rk/-/leftpad-rk-1.0.0.tgz"] == 1
    clock.now += 230
    r = await reg.client.get(path)
    assert (r.status, await r.read()) == (200, reg.tarballs["leftpad-rk@1.0.0"])
    r = await reg.client.get(path)  # held now: named by its sha256 like every file
    assert r.headers["ETag"] == f'"{hashlib.sha256(reg.tarballs["leftpad-rk@1.0.0"]).hexdigest()}"'


async def test_a_lockfiles_tarball_is_fetched_without_its_packument_first(reg: Npm) -> None:
    for path in ("/npm/leftpad-rk/-/leftpad-rk-1.1.0.tgz", "/leftpad-rk/-/leftpad-rk-1.0.0.tgz"):
        r = await reg.client.get(path)  # npm ci asks the lockfile's URLs only
        assert r.status == 200
    assert reg.upstream.counts["/leftpad-rk"] == 1  # the packument, read once for its hashes
    r = await reg.client.get("/npm/leftpad-rk/-/leftpad-rk-9.9.9.tgz")
    assert r.status == 404


@pytest.mark.parametrize("kept_hashes", [True, False], ids=["hashes-kept", "older-store"])
async def test_a_tarball_republished_under_its_name_is_fetched_again(
    reg: Npm, kept_hashes: bool
) -> None:
    """A registry that lets a version be published again (a private one) names other
    bytes with the same file name: the copy held (in memory too) is not served against
    the new integrity (npm: EINTEGRITY), but fetched again. npm's promise is sha512 and
    sha1, not the sha256 the store names blobs by: the hashes a blob was checked against
    are kept with it, and a store that has none for a blob hashes it once."""
    path, file = "/npm/leftpad-rk/-/leftpad-rk-1.0.0.tgz", "/leftpad-rk/-/leftpad-rk-1.0.0.tgz"
    await reg.packument("/npm/leftpad-rk")
    for _ in range(2):  # fetched, then from memory
        r = await reg.client.get(path)
        assert (r.status, await r.read()) == (200, reg.tarballs["leftpad-rk@1.0.0"])
    store, key = reg.mirror.store, npm.tarball_key("leftpad-rk", "leftpad-rk-1.0.0.tgz")
    held = store.get(key)
    assert held is not None
    if not kept_hashes:  # as a store written before they were kept
        store.transaction(lambda db: db.execute("delete from blob_hashes"))
        reg.mirror.hot.clear()
        r = await reg.client.get(path)
        assert (r.status, await r.read()) == (200, reg.tarballs["leftpad-rk@1.0.0"])
    assert reg.upstream.counts[file] == 1
    again = make_npm_tarball("leftpad-rk", "1.0.0", pad=1000)
    write_npm(reg.root, reg.upstream.url, [again, reg.tarballs["leftpad-rk@1.1.0"]])
    await reg.packument("/npm/leftpad-rk")  # revalidated: the new integrity
    for _ in range(2):
        r = await reg.client.get(path)
        assert (r.status, await r.read()) == (200, again)
    assert reg.upstream.counts[file] == 2
    old = hashlib.sha512(reg.tarballs["leftpad-rk@1.0.0"]).hexdigest()
    assert store.hashes_of(held.digest)["sha512"] == old  # kept, or learnt by hashing it


async def go_silent(reg: Npm) -> None:
    """The registry takes every request and answers none (a dead uplink behind a proxy
    that still accepts): three different packuments wait out the bound, and it is down."""
    reg.upstream.rules["*"] = "silent"
    names = ("@rk/util", "other-rk", "third-rk")
    asked = await asyncio.gather(*(reg.client.get(f"/npm/{name}") for name in names))
    assert [r.status for r in asked] == [504] * 3


async def test_offline_packuments_list_what_is_held(reg: Npm) -> None:
    """1.1.0 never fetched is not offered; npm is told why in `policyRestrictions`, which
    it prints when only 1.1.0 would do (`npm install leftpad-rk@1.1`), where it said
    `No matching version found`, as for a version that does not exist."""
    reg.mirror.fetcher.clock = Clock()
    await reg.packument("/npm/leftpad-rk")
    await (await reg.client.get("/npm/leftpad-rk/-/leftpad-rk-1.0.0.tgz")).read()
    await go_silent(reg)
    r = await reg.client.get("/npm/leftpad-rk", headers={**HOST, "Accept": "application/json"})
    assert r.headers["Mirror-Offline"] == "cached-only"
    doc = json.loads(await r.read())
    assert list(doc["versions"]) == ["1.0.0"]
    assert doc["dist-tags"] == {"latest": "1.0.0"}
    host = reg.upstream.url.split("//")[1].rstrip("/")
    assert doc["policyRestrictions"] == {
        "message": f"upstream {host} is down (no answer within 0.5 s), and the mirror holds"
        " only leftpad-rk 1.0.0",
        "versions": {"1.1.0": {"name": "leftpad-rk", "version": "1.1.0"}},
    }
    # the short form was never fetched: the full one answers for it, offline
    short = await reg.packument("/npm/leftpad-rk", npm.ACCEPT_ABBREVIATED)
    assert list(short["versions"]) == ["1.0.0"]
    assert short["policyRestrictions"] == doc["policyRestrictions"]
    assert reg.mirror.stats.offline_pages == 2


async def test_an_offline_packument_with_none_held_is_whole_and_says_why(reg: Npm) -> None:
    """No tarball of it held: every version stays (a client that knows no restrictions
    picks one and its tarball's 504 says why), and all are restricted, so npm says why
    at once, not after a minute of retrying that 504."""
    reg.mirror.fetcher.clock = Clock()
    reg.mirror.settings = replace(reg.mirror.settings, index_ttl=600.0)
    online = await reg.packument("/npm/leftpad-rk")
    await go_silent(reg)
    r = await reg.client.get("/npm/leftpad-rk", headers={**HOST, "Accept": "application/json"})
    assert "Mirror-Offline" not in r.headers  # it lists what the store does not hold
    # fresh, yet npm may keep it not a moment: back online, it would refuse what it restricts
    assert r.headers["Cache-Control"] == "max-age=0" and "Warning" not in r.headers
    doc = json.loads(await r.read())
    restricted = doc.pop("policyRestrictions")
    assert doc == online
    host = reg.upstream.url.split("//")[1].rstrip("/")
    assert restricted == {
        "message": f"upstream {host} is down (no answer within 0.5 s), and the mirror holds"
        " no version of leftpad-rk",
        "versions": {v: {"name": "leftpad-rk", "version": v} for v in ("1.0.0", "1.1.0")},
    }
    r = await reg.client.get(urlsplit(doc["versions"]["1.1.0"]["dist"]["tarball"]).path)
    assert (r.status, r.reason) == (504, f"upstream {host} is down (no answer within 0.5 s);"
                                         " next try in 2 s")  # fmt: skip
    assert reg.mirror.stats.offline_pages == 0


async def test_a_packument_served_stale_says_why_without_the_upstream_down(reg: Npm) -> None:
    """An upstream that answers, badly (a 500, a portal's page): the packument held goes
    out as offline, and what is not held is restricted in words that say so."""
    await reg.packument("/npm/leftpad-rk")
    await (await reg.client.get("/npm/leftpad-rk/-/leftpad-rk-1.0.0.tgz")).read()
    reg.upstream.rules["/leftpad-rk"] = "fail"
    doc = await reg.packument("/npm/leftpad-rk")
    host = reg.upstream.url.split("//")[1].rstrip("/")
    assert doc["policyRestrictions"]["message"] == (
        f"upstream {host} did not send leftpad-rk's packument just now, and the mirror holds"
        " only leftpad-rk 1.0.0"
    )
    assert list(doc["versions"]) == ["1.0.0"]


def test_an_offline_packument_names_a_few_held_versions() -> None:
    versions = [f"1.{i}.0" for i in range(7)] + ["\x1b[31mred"]
    doc = {"name": "x", "versions": {v: {"dist": {"tarball": f"{npm.MARKER}/npm/x/-/x-{v}.tgz"}}
                                     for v in versions}}  # fmt: skip
    body, held_only = npm.only(json.dumps(doc).encode(), lambda keys: dict.fromkeys(keys, 1), "W")
    assert held_only and "policyRestrictions" not in json.loads(body)  # all held
    body, _ = npm.only(
        json.dumps({**doc, "versions": {**doc["versions"], "2.0.0": {"dist": {}}}}).encode(),
        lambda keys: dict.fromkeys(keys, 1),
        "W",
    )
    said = json.loads(body)["policyRestrictions"]["message"]
    assert said == "W, and the mirror holds only x 1.6.0, 1.5.0, 1.4.0, 1.3.0, 1.2.0 and 3 more"


async def test_a_tarball_url_the_mirror_cannot_fetch_leaves_the_other_versions(
    reg: Npm,
) -> None:
    """A version whose tarball is at no URL the mirror can fetch (a broken IPv6 literal,
    a port out of range) is left out, as one with no hash is; it took the whole
    packument, a 500 with a traceback in the log."""
    upstream = reg.root / "leftpad-rk" / "index.json"
    doc = json.loads(upstream.read_text())
    dist = doc["versions"]["1.0.0"]["dist"]
    for version, url in (("8.0.0", "http://[r.test/x.tgz"), ("9.0.0", "http://r.test:99999/x")):
        doc["versions"][version] = {"dist": {**dist, "tarball": f"{url}/leftpad-rk-{version}.tgz"}}
    upstream.write_text(json.dumps(doc))
    assert list((await reg.packument("/npm/leftpad-rk"))["versions"]) == ["1.0.0", "1.1.0"]


@pytest.mark.parametrize(
    "path",
    ["/npm/..%2f..%2fetc", "/npm/.hidden", "/npm/a%00b", "/npm/x/-/..%2fx.tgz", "/npm/x/-/x.exe"],
)
async def test_hostile_names_touch_nothing(reg: Npm, path: str) -> None:
    r = await reg.client.get(path)
    assert r.status == 404
    assert sum(reg.upstream.counts.values()) == 0


async def test_audit_gets_a_quick_no(reg: Npm) -> None:
    r = await reg.client.post("/npm/-/npm/v1/security/advisories/bulk", data=b"{}")
    assert r.status == 404
    assert "not npm's audit" in await r.text()
    assert sum(reg.upstream.counts.values()) == 0


async def test_a_packument_over_the_limit_is_refused(
    reg: Npm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(npm, "MAX_PACKUMENT", 100)
    r = await reg.client.get("/npm/leftpad-rk")
    assert r.status == 502
    assert await r.text() == "upstream index is larger than the mirror's limit\n"


def test_versions_without_a_checkable_hash_are_left_out() -> None:
    data = make_npm_tarball("x", "1.0.0")
    doc = {
        "name": "x",
        "dist-tags": {"latest": "2.0.0", "old": "1.0.0"},
        "versions": {
            "1.0.0": {"dist": {"tarball": "https://r.test/x/-/x-1.0.0.tgz",
                               "integrity": integrity(data)}},
            "2.0.0": {"dist": {"tarball": "https://r.test/x/-/x-2.0.0.tgz"}},
            "3.0.0": {"dist": {"tarball": "file:///x/-/x-3.0.0.tgz", "shasum": "0" * 40}},
        },
    }  # fmt: skip
    processed = npm.process("x", json.dumps(doc).encode(), abbreviated=False)
    kept = json.loads(processed.body)
    assert list(kept["versions"]) == ["1.0.0"] and kept["dist-tags"] == {"old": "1.0.0"}
    (source,) = processed.sources
    assert source.hashes == {"sha512": hashlib.sha512(data).hexdigest()}
    with pytest.raises(npm.PackumentError, match="not 'y'"):
        npm.process("y", json.dumps(doc).encode(), abbreviated=False)


@pytest.mark.parametrize(
    ("versions", "newest"),
    [(["1.0.0", "1.10.0", "1.9.0"], "1.10.0"), (["2.0.0-rc.1", "1.9.9"], "2.0.0-rc.1"),
     (["2.0.0-rc.1", "2.0.0"], "2.0.0"), (["1.0.0-alpha.10", "1.0.0-alpha.9"], "1.0.0-alpha.10"),
     (["banana", "0.0.1"], "0.0.1")],
)  # fmt: skip
def test_semver_order(versions: list[str], newest: str) -> None:
    assert max(versions, key=npm.version_order) == newest


def test_a_portal_page_and_a_broken_packument_are_told_apart() -> None:
    """A page that is no JSON object is said to be one (a portal's?); JSON too deep to
    read, or of the wrong shape, is an unreadable packument, not a portal's page."""
    with pytest.raises(npm.PackumentError, match=r"is not demo's packument \(a login portal"):
        npm.process("demo", b"\n<html><body>Sign in to the venue wifi</body></html>", False)
    with pytest.raises(npm.PackumentError, match=r"^unreadable packument \(RecursionError\)$"):
        npm.process("demo", b'{"a":' * 100_000, False)
    with pytest.raises(npm.PackumentError, match=r"^unreadable packument \(JSONDecodeError\)$"):
        npm.process("demo", b'{"name": "demo", ', False)
