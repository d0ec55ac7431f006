"""A misbehaving upstream never gets its bytes published, and every reader of its download
learns how it ended; hostile paths touch nothing (in process)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import itertools
import json
import logging
from pathlib import Path

import aiohttp
import pytest

from retreatkit.mirror.bodies import decoded
from retreatkit.mirror.errors import BadUpstreamData, UpstreamTimeout
from retreatkit.mirror.respond import reason
from retreatkit.mirror.status import section
from retreatkit.mirror.testing import Clock
from retreatkit.mirror.uplink import Limits
from tests.mirror.conftest import JSON, Env

QUICK = {"limits": Limits(connect_timeout=1.0, headers_timeout=1.0, read_timeout=0.3)}
# breaks mid-body after a Content-Length: continued once, and no more, as these upstreams
# send the whole file again and break at the same byte (continuation.Progress)
CUTS = ("truncate-cl", "stall", "reset")


def blobs(store: Path) -> set[str]:
    return {p.name for p in (store / "blobs" / "sha256").glob("*/*")}


async def fetch(env: Env, url: str) -> tuple[int, bytes]:
    """A transfer cut short shows up as status -1."""
    r = await env.client.get(url)
    try:
        return r.status, await r.read()
    except aiohttp.ClientPayloadError:
        return -1, b""


@pytest.mark.parametrize("env", [QUICK], indirect=True)
@pytest.mark.parametrize("mode", ["truncate", "truncate-cl", "corrupt", "stall", "reset", "fail"])
async def test_bad_upstream_bytes_are_never_published(env: Env, mode: str) -> None:
    filename, data, _ = env.wheels["big-pkg"]
    url = await env.file_url("big-pkg")
    store = env.mirror.settings.store
    clock = env.mirror.fetcher.clock = Clock()
    before = blobs(store)
    env.upstream.rules[f"/files/{filename}"] = mode
    async with asyncio.timeout(30):  # every reader learns the end: a hang fails here
        answers = await asyncio.gather(*(fetch(env, url) for _ in range(3)))
    for status, body in answers:  # never a 200 with the wrong bytes
        assert status in (-1, 502, 504), (status, len(body))
    assert blobs(store) == before
    assert not list((store / "tmp").iterdir())
    assert env.fetched(filename) == (2 if mode in CUTS else 1)  # three readers, one download
    recent = env.mirror.fetcher.fetches()["recent"][0]
    verify = mode in ("corrupt", "truncate")  # a cut with no length shows in the hash
    assert recent["ended"] == ("verify failed" if verify else "upstream error")
    assert env.mirror.stats.verify_failures == verify
    env.upstream.rules.clear()  # once upstream behaves: fetched again, verified, whole
    if verify:  # bad bytes are remembered a while: a client's retry is answered at once
        status, body = await fetch(env, url)
        assert (status, body.endswith(b"; next try in 300 s\n")) == (504, True)
        assert env.fetched(filename) == 1
        clock.now += 300
    assert await fetch(env, url) == (200, data)
    assert hashlib.sha256(data).hexdigest() in blobs(store)


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
        "/lists/" + "0" * 32,
    ],
)
async def test_hostile_paths_touch_nothing(env: Env, path: str) -> None:
    r = await env.client.get(path, allow_redirects=False)
    assert r.status in (400, 404), (r.status, await r.text())
    assert "Set-Cookie" not in r.headers
    assert sum(env.upstream.counts.values()) == 0  # not an open proxy: upstream never asked


@pytest.mark.parametrize("path", ["/blobs/", "/index.sqlite", "/tmp/", "/blobs"])
async def test_what_no_route_serves_is_the_usual_404(env: Env, path: str) -> None:
    r = await env.client.get(path)
    assert (r.status, await r.text()) == (404, "nothing here: see / for what this mirror serves\n")


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        ("loop", "upstream redirected too many times for {}"),
        ("bighead", "upstream sent a header over 8 KB for {}"),
    ],
    ids=["loop", "bighead"],
)
@pytest.mark.parametrize("on", ["file", "page"])
async def test_one_bad_answer_fails_that_request_only(
    env: Env, mode: str, words: str, on: str
) -> None:
    """The upstream answered, so it is up: the next package is asked as usual, and no
    byte of its answer reaches the client's text or /status."""
    if on == "file":
        what = env.wheels["demo-pkg"][0]
        url = await env.file_url("demo-pkg")
        env.upstream.rules[f"/files/{what}"] = mode
    else:
        what, url = f"{env.upstream.url}simple/demo-pkg/", "/pypi/simple/demo-pkg/"
        env.upstream.rules["/simple/demo-pkg/"] = mode
    r = await env.client.get(url)
    assert (r.status, await r.text()) == (502, words.format(what) + "\n")
    report = section(env.mirror, True, 0)
    assert (report["upstreams"]["pypi"]["state"], report["warnings"]) == ("up", [])
    assert report["upstreams"]["pypi"]["last_error"] is None
    assert report["upstream_errors"] == 1
    _, data, _ = env.wheels["demo-dep"]  # never fetched: asked upstream, not refused
    assert await fetch(env, await env.file_url("demo-dep")) == (200, data)


SMALL_FAILURES = {  # mode -> the status and line every reader of a small file gets
    "corrupt": (504, "upstream sent bad bytes for {f}: sha256 mismatch: expected {a}, got {b}"),
    "truncate-cl": (502, "upstream cut {f} short"),
    "reset": (502, "upstream cut {f} short"),
    "stall": (504, "upstream went silent sending {f}"),
    "fail": (502, "upstream answered 500 for {f}"),
}


@pytest.mark.parametrize("env", [QUICK], indirect=True)
@pytest.mark.parametrize("mode", sorted(SMALL_FAILURES))
async def test_a_small_file_that_fails_is_said_never_cut(env: Env, mode: str) -> None:
    """Not `200, Content-Length: 967` and then a cut: pip would report the hash of
    nothing, npm an ECONNRESET."""
    env.mirror.fetcher.clock = Clock()
    filename, data, _ = env.wheels["demo-pkg"]
    url = await env.file_url("demo-pkg")
    env.upstream.rules[f"/files/{filename}"] = mode
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        answers = await asyncio.gather(*(env.client.get(url) for _ in range(3)))
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0xFF
        sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
        status, words = SMALL_FAILURES[mode]
        text = words.format(f=filename, a=sha(data), b=sha(flipped)) + "\n"
        # the line is the reason phrase too: what pip, uv, npm and apt-get print
        got = [(r.status, r.reason, await r.text()) for r in answers]
        assert got == [(status, text.rstrip("\n"), text)] * 3
    asks = 2 if mode in CUTS else 1  # one download, continued once if it broke
    assert env.fetched(filename) == asks
    r = await env.client.get(url)  # pip's retry, a moment later
    if mode == "corrupt":  # the same bytes again would only cross the uplink again
        again = text.rstrip("\n") + "; next try in 300 s"
        assert (r.status, r.reason, await r.text()) == (504, again, again + "\n")
        assert env.fetched(filename) == 1
    else:  # a cut, a silence or an error may mend: asked again
        assert r.status == status
        assert env.fetched(filename) == 2 * asks


async def test_a_trickle_is_cut_at_the_rate_floor(env: Env) -> None:
    """A byte at a time, each well inside read_timeout, would hold a download slot and its
    clients for as long as the upstream likes: it is cut once a minute brought less than
    1 kB a second. The clock is the test's: each look at it is 20 s on."""
    ticks = itertools.count(1000.0, 20.0)
    env.mirror.fetcher.clock = lambda: next(ticks)
    filename, _, _ = env.wheels["demo-pkg"]
    url = await env.file_url("demo-pkg")
    env.upstream.rules[f"/files/{filename}"] = "trickle"
    env.upstream.drips = drips = asyncio.Queue()
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        answer = asyncio.create_task(env.client.get(url))
        while not answer.done():  # a byte, then wait until it is sent (or the answer came)
            drips.put_nowait(None)
            sent = asyncio.ensure_future(env.upstream.dripped.get())
            await asyncio.wait({answer, sent}, return_when=asyncio.FIRST_COMPLETED)
            sent.cancel()
        r = answer.result()
        text = f"upstream sent {filename} at under 1.0 kB/s for 60 s\n"
        assert (r.status, await r.text()) == (504, text)
    assert env.mirror.fetcher.fetches()["recent"][0]["ended"] == "upstream error"
    assert section(env.mirror, True, 0)["upstreams"]["pypi"]["state"] == "up"


def test_a_reason_phrase_shows_nothing_a_terminal_obeys() -> None:
    assert reason("upstream cut a\x1b[2J\tb\u00e9 short") == "upstream cut a?[2J?b? short"
    assert reason("x" * 1000) == "x" * 509 + "..."


async def test_a_page_with_a_length_needs_no_end_tag(env: Env) -> None:
    """PEP 503 asks for HTML5, where </body></html> may be left out."""
    page = env.root / "simple" / "demo-dep" / "index.html"
    page.write_text(page.read_text().replace("</body></html>", ""))
    r = await env.client.get("/pypi/simple/demo-dep/", headers={"Accept": JSON})
    assert r.status == 200, await r.text()
    assert [f["filename"] for f in json.loads(await r.read())["files"]] == [
        env.wheels["demo-dep"][0]
    ]


@pytest.mark.parametrize("mode", ["truncate", "nolength"])
async def test_a_page_ended_by_a_close_must_show_its_end(env: Env, mode: str) -> None:
    """No length and no chunks: only the end tag tells a whole page from a cut one."""
    env.upstream.rules["/simple/demo-dep/"] = mode
    r = await env.client.get("/pypi/simple/demo-dep/", headers={"Accept": JSON})
    if mode == "nolength":
        assert r.status == 200
    else:
        page = f"{env.upstream.url}simple/demo-dep/"
        assert (r.status, await r.text()) == (502, f"{page}: page is truncated (no </html>)\n")


async def test_a_page_crosses_gzipped_and_a_file_as_published(env: Env) -> None:
    """An upstream that compresses what a client accepts compressed (mod_deflate, a CDN):
    index pages come gzipped and are kept decoded; a file is asked for as published, as
    its hash names those bytes."""
    filename, data, _ = env.wheels["demo-dep"]
    env.upstream.rules["/simple/demo-dep/"] = "gzip"
    env.upstream.rules[f"/files/{filename}"] = "gzip"
    assert [f["filename"] for f in (await env.page("demo-dep"))["files"]] == [filename]
    assert await fetch(env, await env.file_url("demo-dep")) == (200, data)
    assert env.upstream.counts["gzip /simple/demo-dep/"] == 1
    pages = [p.stat().st_size for p in (env.root / "simple" / "demo-dep").iterdir()]
    assert 0 < env.mirror.stats.upstream_index_bytes < min(pages)  # counted as it crossed
    assert env.upstream.counts[f"gzip /files/{filename}"] == 0
    assert env.upstream.counts[f"/files/{filename}"] == 1


def test_a_gzipped_page_is_bounded_and_checked() -> None:
    """A page's coding is undone within the page's own limit: a small gzip can hold
    gigabytes of zeros."""
    url = "https://upstream.test/simple/x/"
    page = b"<html>" + b"a" * 1000 + b"</html>"
    packed = gzip.compress(page)
    assert decoded("gzip", packed, 2000, url) == page
    assert decoded("", page, 2000, url) == page
    failures = {
        (
            "gzip",
            gzip.compress(b"\0" * 10_000_000),
        ): "upstream index is larger than the mirror's limit",
        ("gzip", packed[: len(packed) // 2]): "upstream cut the index short",
        ("br", packed): f"{url}: upstream sent the page as 'br', not asked for",
    }
    for (coding, body), words in failures.items():
        with pytest.raises(BadUpstreamData) as failed:
            decoded(coding, body, 2000, url)
        assert str(failed.value) == words
    with pytest.raises(
        BadUpstreamData, match=r"^https://upstream.test/simple/x/: upstream sent a broken gzip page"
    ):
        decoded("gzip", b"\x1f\x8b" + b"\xff" * 40, 2000, url)


@pytest.mark.parametrize(
    "env",
    [{"limits": Limits(index_timeout=0.05, read_timeout=5.0, min_rate=0.0)}],
    indirect=True,
)
async def test_a_page_that_trickles_on_is_cut_at_ten_times_what_a_client_waits(
    env: Env,
) -> None:
    """A page goes on crossing after its client stopped waiting (index_timeout), for the
    next one; a byte a second inside the silence bound, with no least rate, held that one
    fetch and its memory for as long as the upstream liked."""
    env.upstream.rules["/simple/demo-pkg/"] = "trickle"
    url = f"{env.upstream.url}simple/demo-pkg/"
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        with pytest.raises(UpstreamTimeout) as cut:
            await env.mirror.fetcher.get_index(url, {}, 1 << 20)
    assert str(cut.value) == f"upstream took over 0.5 s sending {url}"


async def test_a_page_that_fails_with_nothing_held_is_one_line_in_the_log(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """The attendee's pip says why; the organiser's log says it too, once however many
    retry it, and nothing for a project the upstream does not have."""
    env.upstream.rules["/simple/demo-pkg/"] = "fail"
    with caplog.at_level(logging.INFO, logger="retreatkit.mirror"):
        for _ in range(3):  # pip's retries, or three attendees
            r = await env.client.get("/pypi/simple/demo-pkg/")
            assert r.status == 502
        r = await env.client.get("/pypi/simple/no-such-project/")
        assert r.status == 404
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert said == [
        f"cannot serve pypi/simple/demo-pkg: the upstream answered 500 for"
        f" {env.upstream.url}simple/demo-pkg/"
    ]


async def test_a_link_the_mirror_cannot_fetch_leaves_the_rest_of_the_page(env: Env) -> None:
    """A link that is no URL the mirror can fetch (a broken IPv6 literal, a port out of
    range, a local path) is left out, as one with no hash is; it took the whole page, a
    500 with a traceback in the log."""
    filename, data, _ = env.wheels["demo-dep"]
    sha = hashlib.sha256(data).hexdigest()
    bad = ["http://[up.test/x.tar.gz", "http://up.test:99999/x.tar.gz", "file:///etc/passwd"]
    links = "".join(
        f'<a href="{url}#sha256={sha}">demo_dep-9.{i}.tar.gz</a>' for i, url in enumerate(bad)
    )
    page = env.root / "simple" / "demo-dep" / "index.html"
    page.write_text(page.read_text().replace("</body>", links + "</body>"))
    assert [f["filename"] for f in (await env.page("demo-dep"))["files"]] == [filename]


@pytest.mark.parametrize("env", [{"index_ttl": 0.0, "as_json": True}], indirect=True)
async def test_a_page_too_deep_to_read_leaves_the_one_held(env: Env) -> None:
    """JSON nested deeper than Python reads is a page the mirror cannot read: the page
    held is served stale, as for any bad page, not a 500."""
    filename, data, _ = env.wheels["demo-dep"]
    assert await fetch(env, await env.file_url("demo-dep")) == (200, data)
    (env.root / "simple" / "demo-dep" / "index.json").write_text('{"files": ' + "[" * 100_000)
    r = await env.client.get("/pypi/simple/demo-dep/", headers={"Accept": JSON})
    assert (r.status, r.headers.get("Warning")) == (200, '110 - "Response is Stale"')
    assert [f["filename"] for f in json.loads(await r.read())["files"]] == [filename]
