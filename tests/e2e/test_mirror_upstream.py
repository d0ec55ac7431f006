"""A real mirror process against upstreams that fail the way uplinks do: a resolver that
never answers (item 2), a store that rotted while the mirror was down (item 9), a wheel
whose bytes fail their hash and an upstream known down, met by real pip."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import resource
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from retreatkit.mirror.testing import (
    Netns,
    Server,
    flip_a_byte,
    make_wheel,
    pip_download,
    said,
    start_mirror,
    start_upstream,
    write_pypi,
)
from tests.e2e.mirror_attendee import attendee, fetched, page_block

pytestmark = pytest.mark.e2e
JSON = "application/vnd.pypi.simple.v1+json"
lan = attendee("u", prefix="rksf")


def request(
    base: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=60)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.headers), response.read()
    finally:
        conn.close()


def status_of(admin: str) -> dict[str, Any]:
    status, _, body = request(admin, "/status")
    assert status == 200
    doc: dict[str, Any] = json.loads(body)["mirror"]
    return doc


def index(mirror: Server) -> str:
    return f"{mirror.url}pypi/simple/"


def file_path(mirror: Server, project: str) -> str:
    status, _, body = request(mirror.url, f"/pypi/simple/{project}/", {"Accept": JSON})
    assert status == 200, body
    return str(json.loads(body)["files"][0]["url"])


@pytest.fixture
def silent_resolver() -> Iterator[tuple[str, socket.socket]]:
    """A UDP socket on port 53 of a random loopback address that reads and never answers."""
    if os.geteuid() != 0:
        pytest.skip("port 53 and a private mount of resolv.conf need root")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(10):
        address = f"127.53.{secrets.randbelow(256)}.{1 + secrets.randbelow(254)}"
        try:
            sock.bind((address, 53))
            break
        except OSError:
            continue
    else:
        pytest.skip("no loopback address free for a silent resolver")
    yield address, sock
    sock.close()


def test_an_upstream_whose_name_never_resolves(
    tmp_path: Path, silent_resolver: tuple[str, socket.socket]
) -> None:
    root = tmp_path / "upstream"
    write_pypi(root, {"one": [make_wheel("one", "1.0")], "two": [make_wheel("two", "1.0")]})
    upstream = start_upstream(root)
    store = tmp_path / "store"
    try:
        mirror, _ = start_mirror(store, pypi=f"{upstream.url}simple/")
        try:
            assert request(mirror.url, file_path(mirror, "one"))[0] == 200  # cached online
        finally:
            mirror.stop()
    finally:
        upstream.stop()

    # the same store, now with a resolver that never answers (its own mount namespace)
    address, sock = silent_resolver
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {address}\n")  # glibc's defaults: 5 s, twice
    bind = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wrap = lambda argv: [  # noqa: E731
        "prlimit", f"--nofile=1024:{hard}", "unshare", "--mount", "sh", "-c", bind, str(resolv),
        *argv,
    ]  # fmt: skip
    port = urlsplit(upstream.url).port
    extra = "connect_timeout = 1.0\nheaders_timeout = 1.0"
    mirror, admin = start_mirror(
        store, pypi=f"http://pypi.rkmir.test:{port}/simple/", ttl=0, extra=extra, wrap=wrap
    )
    try:
        # the open-file limit was raised to what the system allows
        limits = Path(f"/proc/{mirror.process.pid}/limits").read_text()
        assert re.search(rf"^Max open files\s+{hard}\s+{hard}\s", limits, re.M), limits
        status, headers, body = request(mirror.url, "/pypi/simple/one/", {"Accept": JSON})
        assert status == 200 and headers["Mirror-Offline"] == "cached-only"
        assert [f["filename"] for f in json.loads(body)["files"]] == ["one-1.0-py3-none-any.whl"]
        assert b"pypi\x05rkmir\x04test" in sock.recv(512)  # it did ask the resolver
        doc = status_of(admin)
        pypi = doc["upstreams"]["pypi"]
        assert (pypi["state"], pypi["last_error"]) == ("down", "no connection within 1 s")
        for _ in range(5):  # nobody waits on the resolver again until the backoff ends
            status, headers, _ = request(mirror.url, "/pypi/simple/one/", {"Accept": JSON})
            assert status == 200 and headers["Warning"] == '110 - "Response is Stale"'
        status, _, body = request(mirror.url, "/pypi/simple/two/")  # never cached
        assert status == 504
        assert re.fullmatch(
            rf"upstream pypi.rkmir.test:{port} is down \(no connection within 1 s\);"
            r" next try in \d+ s\n",
            body.decode(),
        )
        doc = status_of(admin)
        assert doc["upstream_skipped"] >= 5 and doc["stale_served"] >= 6
        assert any(w.startswith("upstream down: http://pypi.rkmir.test") for w in doc["warnings"])
    finally:
        mirror.stop()


def test_a_store_that_rotted_while_the_mirror_was_down(tmp_path: Path) -> None:
    root = tmp_path / "upstream"
    wheel = make_wheel("one", "1.0")
    write_pypi(root, {"one": [wheel]})
    upstream = start_upstream(root)
    store = tmp_path / "store"
    try:
        mirror, _ = start_mirror(store, pypi=f"{upstream.url}simple/")
        try:
            path = file_path(mirror, "one")
            assert request(mirror.url, path)[2] == wheel[1]
            said(mirror, r"^Mirror local index: ")  # the kit's own wheel: 3 more blobs
        finally:
            mirror.stop()
        digest = hashlib.sha256(wheel[1]).hexdigest()
        (store / "blobs" / "sha256" / digest[:2] / digest).write_bytes(b"bit rot")
        mirror, admin = start_mirror(store, pypi=f"{upstream.url}simple/")
        try:
            said(mirror, r"^Mirror store check done: 4 kept, 1 corrupt dropped$")
            assert status_of(admin)["store"]["check"] == {
                "state": "done",
                "checked": 5,
                "dropped": 1,
            }
            assert request(mirror.url, path)[2] == wheel[1]  # fetched again, verified
        finally:
            mirror.stop()
    finally:
        upstream.stop()


def test_a_blob_that_rots_while_the_mirror_runs_is_never_served(tmp_path: Path) -> None:
    """Real pip: a wheel changed on disk after the mirror served it is noticed on the next
    hit, dropped with one line in the log and fetched again; with the upstream gone, the
    next such hit is the offline answer, never the rotten bytes."""
    root = tmp_path / "upstream"
    one, two = make_wheel("one", "1.0", pad=1_500_000), make_wheel("two", "1.0")  # by sendfile
    write_pypi(root, {"one": [one], "two": [two]})
    upstream = start_upstream(root)
    host = urlsplit(upstream.url).netloc
    store = tmp_path / "store"
    mirror, _ = start_mirror(store, pypi=f"{upstream.url}simple/")
    try:
        paths = {name: file_path(mirror, name) for name in ("one", "two")}
        for name, wheel in (("one", one), ("two", two)):
            assert request(mirror.url, paths[name])[2] == wheel[1]
        digests = [hashlib.sha256(w[1]).hexdigest() for w in (one, two)]
        blobs = [store / "blobs" / "sha256" / d[:2] / d for d in digests]
        flip_a_byte(blobs[0])
        got = pip_download(index(mirror), "one", tmp_path / "got", tmp_path)
        assert got.returncode == 0, got.stderr
        assert (tmp_path / "got" / one[0]).read_bytes() == one[1]
        said(mirror, rf" WARNING dropping corrupt blob {digests[0]} \(changed on disk while the")

        upstream.stop()
        flip_a_byte(blobs[1])
        status, _, body = request(mirror.url, paths["two"])
        assert (status, body) == (504, f"upstream {host}: connection refused\n".encode())
        said(mirror, rf" WARNING dropping corrupt blob {digests[1]} \(changed on disk")
    finally:
        mirror.stop()
        upstream.stop()


def test_pip_is_told_a_corrupt_wheel_is_bad_not_empty(tmp_path: Path, lan: Netns) -> None:
    """Real pip: a wheel whose bytes fail the index's hash is said in the mirror's words,
    at once, not a 200 cut short (pip then reported the sha256 of nothing, e3b0c442...).
    A 504: the mirror remembers the bad bytes, so pip's own retries of a 502 were each
    answered from that memory, and after the fifth pip printed only "too many 502 error
    responses", never the line."""
    root = tmp_path / "upstream"
    wheel = make_wheel("one", "1.0")
    write_pypi(root, {"one": [wheel]})
    (root / ".behaviours.json").write_text(json.dumps({f"/files/{wheel[0]}": "corrupt"}))
    flipped = bytearray(wheel[1])
    flipped[len(flipped) // 2] ^= 0xFF  # what "corrupt" sends
    upstream = start_upstream(root)
    try:
        mirror, admin = start_mirror(tmp_path / "store", pypi=f"{upstream.url}simple/",
                                     listen=f"{lan.host}:0")  # fmt: skip
        try:
            url = mirror.url.rstrip("/") + file_path(mirror, "one")
            runs = [
                pip_download(index(mirror), "one", tmp_path / "got", tmp_path / "home", lan)
                for _ in range(2)
            ]
            errors = status_of(admin)["errors"]
        finally:
            mirror.stop()
        asked = fetched(upstream.url)
    finally:
        upstream.stop()
    line = (
        f"upstream sent bad bytes for {wheel[0]}: sha256 mismatch: expected"
        f" {hashlib.sha256(wheel[1]).hexdigest()}, got {hashlib.sha256(flipped).hexdigest()}"
    )
    first, again = runs
    assert first.returncode == 1 and "e3b0c442" not in first.stdout + first.stderr
    assert f"\nERROR: 504 Server Error: {line} for url: {url}\n" in first.stderr, first.stderr
    said_again = rf"\nERROR: 504 Server Error: {re.escape(line)}; next try in \d+ s for url: "
    assert again.returncode == 1 and re.search(said_again, again.stderr), again.stderr
    assert "Traceback" not in first.stderr + again.stderr
    assert errors == 2  # each pip asked once: no retry of its own
    assert asked[f"/files/{wheel[0]}"] == 1  # and the second was answered from memory


def test_pip_gets_a_small_wheel_from_a_slow_uplink_before_its_timeout(tmp_path: Path) -> None:
    """A small file goes out once whole and checked, but not at any price: from an uplink
    too slow to bring it within pip's read timeout (15 s) pip heard nothing, gave up and
    asked again. It streams after a few seconds instead; here pip's own line for a
    download begun comes before pip gives up (the upstream sends a byte a second)."""
    root = tmp_path / "upstream"
    wheel = make_wheel("one", "1.0")
    write_pypi(root, {"one": [wheel]})
    (root / ".behaviours.json").write_text(json.dumps({f"/files/{wheel[0]}": "trickle"}))
    upstream = start_upstream(root)
    try:
        mirror, _ = start_mirror(tmp_path / "store", pypi=f"{upstream.url}simple/")
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
            begun = f"Downloading {wheel[0]} ("  # not its .metadata, which came first
            with subprocess.Popen(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
                 "--retries", "0", "--progress-bar", "off",
                 "--index-url", f"{mirror.url}pypi/simple/", "-d", str(tmp_path / "got"), "one"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env={**env, "HOME": str(tmp_path / "home")},
            ) as pip:  # fmt: skip
                assert pip.stdout is not None
                lines = []
                for line in pip.stdout:  # ends when pip does: it gave up
                    lines.append(line)
                    if line.strip().startswith(begun):
                        break
                pip.kill()
            assert lines and lines[-1].strip().startswith(begun), lines
        finally:
            mirror.stop()
    finally:
        upstream.stop()


def test_pip_fails_at_once_in_the_mirrors_words_while_the_upstream_is_down(
    tmp_path: Path, lan: Netns
) -> None:
    """A file never fetched, named by a URL an attendee already has (a lockfile, or a
    page in pip's own cache), the upstream gone: the mirror will not ask it again before
    its own probe, so pip is told so once, in the mirror's words. A 502 was asked five
    more times (about 9 s) and ended in a traceback of pip's. (The mirror's pages list
    only held files while it is down; a page never cached fails pip at once too, but
    pip shows no server's words for a page.)"""
    root = tmp_path / "upstream"
    write_pypi(root, {"one": [make_wheel("one", "1.0")], "two": [make_wheel("two", "1.0")]})
    upstream = start_upstream(root)
    host = urlsplit(upstream.url).netloc
    mirror, admin = start_mirror(tmp_path / "store", pypi=f"{upstream.url}simple/",
                                 listen=f"{lan.host}:0")  # fmt: skip
    try:
        assert mirror.url.startswith(f"http://{lan.host}:")  # not loopback: as on the LAN
        url = mirror.url.rstrip("/") + file_path(mirror, "one")  # listed, not fetched
        upstream.stop()
        status, _, body = request(mirror.url, "/pypi/simple/two/")  # refused: now known down
        assert (status, status_of(admin)["upstreams"]["pypi"]["state"]) == (504, "down")
        assert body == f"upstream {host}: connection refused\n".encode()
        before = status_of(admin)["errors"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        got = subprocess.run(
            lan.argv([sys.executable, "-m", "pip", "--disable-pip-version-check", "download",
                      "--no-deps", "--no-cache-dir", "-d", str(tmp_path / "got"), url]),
            capture_output=True, text=True, timeout=120, env={**env, "HOME": str(tmp_path)},
        )  # fmt: skip
        asked = status_of(admin)["errors"] - before
    finally:
        mirror.stop()
        upstream.stop()
    # the first backoff is 2 s: pip asking later than that (a slow machine) is the probe
    line = rf"upstream {host} is down \([^)]*\); (next try in \d+ s|trying it again now)"
    assert got.returncode == 1, got.stdout
    assert re.search(rf"HTTP error 504 Server Error: {line} for url: {url}", got.stderr), got.stderr
    assert "Traceback" not in got.stderr
    assert asked <= 2  # once, or the probe's refusal and then once: not six times


README = Path(__file__).resolve().parents[2] / "README.md"


def test_pip_shows_the_mirrors_words_for_a_page_at_the_verbosity_the_readme_names(
    tmp_path: Path, lan: Netns
) -> None:
    """A page the mirror cannot give (never fetched, the upstream down): pip prints only
    `No matching distribution found`, and the README names the flag that shows the
    mirror's line. It named `pip -v`, which shows nothing more: pip (23.2.1 as 26.3) logs
    a page that failed at debug level, shown from `-vv` on."""
    said = re.search(
        r"pip prints only `No matching distribution found`, and\s+`pip (-v+)`\s+shows the"
        r"\s+mirror's words", README.read_text(),
    )  # fmt: skip
    assert said is not None
    root = tmp_path / "upstream"
    write_pypi(root, {"one": [make_wheel("one", "1.0")]})
    upstream = start_upstream(root)
    host = urlsplit(upstream.url).netloc
    mirror, admin = start_mirror(tmp_path / "store", pypi=f"{upstream.url}simple/",
                                 listen=f"{lan.host}:0")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}

    def pip(*flags: str) -> str:
        argv = [sys.executable, "-m", "pip", "--disable-pip-version-check", "download",
                "--no-deps", "--no-cache-dir", "--index-url", index(mirror), "--trusted-host",
                lan.host, "-d", str(tmp_path / "got"), *flags, "requests"]  # fmt: skip
        done = subprocess.run(lan.argv(argv), capture_output=True, text=True, timeout=120,
                              env={**env, "HOME": str(tmp_path / "home")})  # fmt: skip
        assert done.returncode == 1 and "Traceback" not in done.stderr, done
        assert "ERROR: No matching distribution found for requests" in done.stderr, done
        return done.stdout + done.stderr

    try:
        upstream.stop()
        assert request(mirror.url, "/pypi/simple/one/")[0] == 504  # now known down
        assert status_of(admin)["upstreams"]["pypi"]["state"] == "down"
        flag = said[1]
        quiet, fewer, told = pip(), pip(flag[:-1]) if len(flag) > 2 else "", pip(flag)
    finally:
        mirror.stop()
        upstream.stop()
    page = re.escape(f"{index(mirror)}requests/")
    line = rf"upstream {re.escape(host)} is down \([^)]*\); (next try in \d+ s|trying it again now)"
    words = rf"Could not fetch URL {page}: 504 Server Error: {line} for url: {page} - skipping"
    assert re.search(words, told), told
    assert "upstream" not in quiet + fewer, (quiet, fewer)  # pip's line alone, as README says


def test_pip_is_told_the_upstream_is_down_for_a_page_held_with_no_file_held(
    tmp_path: Path, lan: Netns
) -> None:
    """The uplink gone, a project whose page the mirror holds and none of its files (an
    attendee looked, nobody installed): the offline page listed nothing, and pip said
    `from versions: none`, as for a name that does not exist. It lists them all now, and
    the one pip picks is answered with why it cannot be had. (A project with a file held
    still gets only those: pip installs it offline.)"""
    root = tmp_path / "upstream"
    write_pypi(root, {name: [make_wheel(name, "1.0")] for name in ("one", "two", "three")})
    upstream = start_upstream(root)
    host = urlsplit(upstream.url).netloc
    mirror, admin = start_mirror(tmp_path / "store", pypi=f"{upstream.url}simple/",
                                 listen=f"{lan.host}:0")  # fmt: skip
    try:
        assert request(mirror.url, file_path(mirror, "one"))[0] == 200  # held
        two = mirror.url.rstrip("/") + file_path(mirror, "two")  # the page alone
        upstream.stop()
        assert request(mirror.url, "/pypi/simple/three/")[0] == 504  # now known down
        assert status_of(admin)["upstreams"]["pypi"]["state"] == "down"
        got_two = pip_download(index(mirror), "two", tmp_path / "got", tmp_path / "home", lan)
        got_one = pip_download(index(mirror), "one", tmp_path / "got", tmp_path / "home", lan)
    finally:
        mirror.stop()
        upstream.stop()
    line = rf"upstream {host} is down \([^)]*\); (next try in \d+ s|trying it again now)"
    assert got_two.returncode == 1, got_two.stdout
    said = rf"\nERROR: 504 Server Error: {line} for url: {re.escape(two)}(\.metadata)?\n"
    assert re.search(said, got_two.stderr), got_two.stderr
    assert "from versions: none" not in got_two.stderr and "Traceback" not in got_two.stderr
    assert got_one.returncode == 0, got_one.stderr  # the held one installs offline


def test_pip_asking_for_a_version_not_held_is_told_the_upstream_is_down(
    tmp_path: Path, lan: Netns
) -> None:
    """The uplink gone, 1.0 held and 2.0 not: the offline page listed 1.0 alone, and pip
    said `from versions: 1.0` of `one==2.0`, as of a version that does not exist. 2.0 is
    listed yanked now: pip still takes 1.0 when it will do, and asked for 2.0 says why
    it cannot have it (the file's 504)."""
    root = tmp_path / "upstream"
    write_pypi(root, {"one": [make_wheel("one", "1.0"), make_wheel("one", "2.0")],
                      "three": [make_wheel("three", "1.0")]})  # fmt: skip
    upstream = start_upstream(root)
    host = urlsplit(upstream.url).netloc
    mirror, _ = start_mirror(tmp_path / "store", pypi=f"{upstream.url}simple/",
                             listen=f"{lan.host}:0")  # fmt: skip
    try:
        held = file_path(mirror, "one")
        assert "one-1.0" in held and request(mirror.url, held)[0] == 200
        upstream.stop()
        assert request(mirror.url, "/pypi/simple/three/")[0] == 504  # now known down
        newer = pip_download(index(mirror), "one==2.0", tmp_path / "got", tmp_path / "home", lan)
        any_one = pip_download(index(mirror), "one", tmp_path / "got", tmp_path / "home", lan)
    finally:
        mirror.stop()
        upstream.stop()
    assert newer.returncode == 1, newer.stdout
    line = rf"upstream {host} is down \([^)]*\); (next try in \d+ s|trying it again now)"
    said = rf"\nERROR: Could not install requirement one==2\.0 .* 504 Server Error: {line} "
    assert re.search(said, newer.stderr), newer.stderr
    assert "from versions" not in newer.stderr and "Traceback" not in newer.stderr
    assert any_one.returncode == 0, any_one.stderr  # the held one still does, no warning
    assert "yanked" not in any_one.stderr
    assert sorted(p.name for p in (tmp_path / "got").iterdir()) == ["one-1.0-py3-none-any.whl"]


def test_pip_installs_offline_a_wheel_held_without_its_metadata(tmp_path: Path, lan: Netns) -> None:
    """A wheel fetched by a client that reads no metadata file (uv, curl), then the
    uplink gone while the page is fresh: the page still offers PEP 658 metadata, and pip
    asks for it first. The mirror makes it from the wheel; it failed pip with a 502."""
    root = tmp_path / "upstream"
    write_pypi(root, {"one": [make_wheel("one", "1.0")]})
    upstream = start_upstream(root)
    mirror, admin = start_mirror(tmp_path / "store", pypi=f"{upstream.url}simple/",
                                 listen=f"{lan.host}:0")  # fmt: skip
    try:
        status, _, _ = request(mirror.url, file_path(mirror, "one"))  # the wheel alone
        assert status == 200
        upstream.stop()
        pip_line = page_block(mirror.url, "pip")[0].replace("PACKAGE", "one")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        got = subprocess.run(
            lan.argv([sys.executable, "-m", "pip", "--disable-pip-version-check",
                      *shlex.split(pip_line)[1:], "--no-cache-dir",
                      "--target", str(tmp_path / "got")]),
            capture_output=True, text=True, timeout=120, env={**env, "HOME": str(tmp_path)},
        )  # fmt: skip
        upstream_errors = status_of(admin)["upstream_errors"]
    finally:
        mirror.stop()
        upstream.stop()
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "got" / "one").is_dir()
    assert upstream_errors == 0  # the metadata file was never asked of the gone upstream


def test_uv_retrying_a_page_never_cached_waits_on_a_silent_upstream_once(
    tmp_path: Path,
) -> None:
    """Real uv, which retries a 5xx on its own: the upstream accepts the page's request
    and never answers, nothing is cached. uv prints the mirror's words, and the upstream
    is asked by the first try and then once a backoff after each silence: the retries
    between are told at once, the page remembered silent (health.py; pinned in process,
    tests/mirror/test_upstream_down.py: here uv's retries may all land inside the first
    backoff)."""
    root = tmp_path / "upstream"
    write_pypi(root, {"two": [make_wheel("two", "1.0")]})
    (root / ".behaviours.json").write_text(json.dumps({"/simple/two/": "silent"}))
    upstream = start_upstream(root)
    host = urlsplit(upstream.url).netloc
    mirror, _ = start_mirror(tmp_path / "store", pypi=f"{upstream.url}simple/",
                             extra="connect_timeout = 1.0\nheaders_timeout = 1.0")  # fmt: skip
    try:
        uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
        began = time.monotonic()
        got = subprocess.run(
            [uv, "pip", "install", "--no-cache", "--python", sys.executable, "--dry-run",
             "--index-url", f"{mirror.url}pypi/simple/", "two"],
            capture_output=True, text=True, timeout=120, env={**env, "HOME": str(tmp_path)},
        )  # fmt: skip
        took = time.monotonic() - began
        with urllib.request.urlopen(f"{upstream.url}_stats", timeout=30) as r:
            asked = json.load(r).get("/simple/two/", 0)
    finally:
        mirror.stop()
        upstream.stop()
    assert got.returncode != 0
    bound = r"no answer within 2 s"
    words = rf"upstream {re.escape(host)}( is down \({bound}\)|: {bound})"
    assert re.search(words, got.stderr), got.stderr
    # the first try, then one probe a backoff after each failure (2 s, doubling), each
    # ask failing after its own 2 s: what fits in the time uv took, however uv spaced its
    # retries; a retry that asked the upstream itself would be one more
    allowed, start, backoff = 0, 0.0, 2.0
    while start <= took:
        allowed, start, backoff = allowed + 1, start + 2.0 + backoff, backoff * 2
    assert 1 <= asked <= allowed, (asked, took)


def test_an_upstream_redirects_nowhere_near_the_mirror(tmp_path: Path, lan: Netns) -> None:
    """An upstream on another machine (here, across a network namespace) chooses where it
    redirects. One that sent the mirror to its admin endpoint on 127.0.0.1 was followed;
    one that sent it to the mirror itself held the page's fetch waiting on its own
    request. Neither is followed now, nor one from http to https (nor the reverse); a
    redirect within the upstream is."""
    root = tmp_path / "upstream"
    names = ("moved", "admin", "itself", "upgrade")
    write_pypi(root, {name: [make_wheel(name, "1.0")] for name in names})
    real = root / "real" / "moved"
    real.mkdir(parents=True)
    (real / "index.html").write_bytes((root / "simple" / "moved" / "index.html").read_bytes())
    upstream = start_upstream(root, host=lan.address, wrap=lan.argv)
    host = urlsplit(upstream.url).netloc
    try:
        assert upstream.url.startswith(f"http://{lan.address}:")  # not this machine's
        mirror, admin = start_mirror(
            tmp_path / "store", pypi=f"{upstream.url}simple/", listen=f"{lan.host}:0",
            extra="index_timeout = 5.0",  # a mirror that asks itself waits no longer
        )  # fmt: skip
        try:
            (root / ".behaviours.json").write_text(json.dumps({
                "/simple/moved/": "redirect /real/moved/",
                "/simple/admin/": f"redirect {admin}",
                "/simple/itself/": f"redirect {mirror.url}pypi/simple/itself/",
                "/simple/upgrade/": f"redirect https://{host}/simple/upgrade/",
            }))  # fmt: skip
            got = {name: request(mirror.url, f"/pypi/simple/{name}/") for name in names}
            statuses = status_of(admin)
        finally:
            mirror.stop()
        asked = fetched(upstream.url)
    finally:
        upstream.stop()
    assert got["moved"][0] == 200 and b"moved-1.0-py3-none-any.whl" in got["moved"][2]
    admin_host = urlsplit(admin).hostname
    mirror_host = urlsplit(mirror.url).hostname
    refused = {
        "admin": f"to {admin_host}, on the mirror's own machine or link: not followed",
        "itself": f"to {mirror_host}, on the mirror's own machine or link: not followed",
        "upgrade": "from http to https: not followed",
    }
    for name, words in refused.items():
        page = f"http://{host}/simple/{name}/"
        assert got[name][:3:2] == (502, f"upstream redirected {page} {words}\n".encode())
    assert statuses["upstreams"]["pypi"]["state"] == "up"  # it answered, if badly
    assert asked["/simple/itself/"] == 1  # asked once, not again by the mirror itself
