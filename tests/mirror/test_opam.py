"""opam's archives through the mirror in process: stored by checksum, named in the log by
their own file name, so the organiser can tell which package came or failed."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import hashlib
import io
import logging
import re
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from retreatkit.mirror import fakeupstream, opam, opam_http
from retreatkit.mirror.testing import (
    Clock,
    make_source_tarball,
    mirror_client,
    settings,
    write_opam,
)

pytestmark = pytest.mark.skipif(
    shutil.which("opam") is None, reason="opam is not installed (.ci/run installs it)"
)


async def test_the_log_names_an_opam_archive_by_its_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "upstream"
    root.mkdir()
    archives = {f"{n}.1.0": make_source_tarball(n, "1.0") for n in ("hello", "tamper")}
    async with fakeupstream.serving(root) as upstream:
        write_opam(root / "opam", f"{upstream.url}opam/", archives)
        upstream.rules["/opam/archives/tamper-1.0.tar.gz"] = "corrupt"
        config = dataclasses.replace(settings(tmp_path / "store"), opam=f"{upstream.url}opam")
        async with mirror_client(config) as (client, _):
            assert (await client.get("/opam/index.tar.gz")).status == 200
            md5 = {k: hashlib.md5(v).hexdigest() for k, v in archives.items()}
            with caplog.at_level(logging.INFO, logger="retreatkit.mirror"):
                for full, status in (("hello.1.0", 200), ("tamper.1.0", 504)):
                    h = md5[full]
                    r = await client.get(f"/opam/cache/md5/{h[:2]}/{h}")
                    assert r.status == status, await r.text()
    lines = [r.getMessage() for r in caplog.records if "fetch" in r.getMessage()]
    assert len(lines) == 2, lines
    h = md5["hello.1.0"]
    assert re.fullmatch(
        rf"fetched hello-1\.0\.tar\.gz as opam/md5/{h} \(\d+ bytes, \S+s\)", lines[0]
    )
    h = md5["tamper.1.0"]
    assert lines[1].startswith(
        f"fetch of tamper-1.0.tar.gz as opam/md5/{h} failed: "
        "upstream sent bad bytes for tamper-1.0.tar.gz: sha256 mismatch: "
    ), lines[1]


def _cache_url(algo: str, data: bytes) -> str:
    h = hashlib.new(algo, data).hexdigest()
    return f"/opam/cache/{algo}/{h[:2]}/{h}"


async def test_a_tampered_archive_crosses_the_uplink_once_for_opams_retries(
    tmp_path: Path,
) -> None:
    """opam's curl retries a 5xx three times (--retry 3: after 1, 2 and 4 s); the
    mirror answers those retries from memory, saying when it will ask again."""
    root = tmp_path / "upstream"
    root.mkdir()
    data = make_source_tarball("tamper", "1.0")
    path = "/opam/archives/tamper-1.0.tar.gz"
    async with fakeupstream.serving(root) as upstream:
        write_opam(root / "opam", f"{upstream.url}opam/", {"tamper.1.0": data})
        upstream.rules[path] = "corrupt"
        config = dataclasses.replace(settings(tmp_path / "store"), opam=f"{upstream.url}opam")
        async with mirror_client(config) as (client, mirror):
            clock = mirror.fetcher.clock = Clock()
            assert (await client.get("/opam/index.tar.gz")).status == 200
            flipped = bytearray(data)
            flipped[len(data) // 2] ^= 0xFF
            line = (
                "upstream sent bad bytes for tamper-1.0.tar.gz: sha256 mismatch: expected"
                f" {hashlib.sha256(data).hexdigest()}, got {hashlib.sha256(flipped).hexdigest()}"
            )
            got = []
            for wait in (0, 1, 2, 4):
                clock.now += wait
                r = await client.get(_cache_url("md5", data))
                got.append((r.status, r.reason, await r.text()))
            assert got == [
                (504, line, line + "\n"),
                *(
                    (504, f"{line}; next try in {s} s", f"{line}; next try in {s} s\n")
                    for s in (299, 297, 293)
                ),
            ]
            assert upstream.counts[path] == 1
            # the same archive asked by its other checksum is the same bad file
            r = await client.get(_cache_url("sha256", data))
            assert (r.status, await r.text()) == (504, f"{line}; next try in 293 s\n")
            assert upstream.counts[path] == 1
            upstream.rules.clear()  # mended upstream: asked again once the time is up
            clock.now += 293
            r = await client.get(_cache_url("sha256", data))
            assert (r.status, await r.read()) == (200, data)
            assert upstream.counts[path] == 2


async def test_a_broken_or_bomb_index_leaves_the_one_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An index.tar.gz whose deflate stream is broken was a 500 in place of the index held;
    one that inflates without bound (a few MB of gzip hold gigabytes of zeros, which tar
    reads as an empty archive) filled the mirror's memory, then replaced the index held
    with an empty one. Both are refused, and the index held is served stale."""
    root = tmp_path / "upstream"
    root.mkdir()
    data = make_source_tarball("hello", "1.0")
    monkeypatch.setattr(opam, "MAX_TAR", 1 << 20, raising=False)
    bomb = gzip.compress(bytes(2 << 20))
    broken = bomb[:10] + bytes([bomb[10] | 0x06]) + bomb[11:]  # a reserved block type
    async with fakeupstream.serving(root) as upstream:
        write_opam(root / "opam", f"{upstream.url}opam/", {"hello.1.0": data})
        config = dataclasses.replace(
            settings(tmp_path / "store", index_ttl=0.0), opam=f"{upstream.url}opam"
        )
        async with mirror_client(config) as (client, _):
            assert (await client.get("/opam/index.tar.gz")).status == 200
            for bad in (broken, bomb):
                (root / "opam" / "index.tar.gz").write_bytes(bad)
                r = await client.get("/opam/index.tar.gz")
                assert (r.status, r.headers.get("Warning")) == (200, '110 - "Response is Stale"')
                assert "packages/hello/hello.1.0/opam" in _served(await r.read())


async def test_opam_archives_count_for_their_package_even_from_memory(tmp_path: Path) -> None:
    root = tmp_path / "upstream"
    root.mkdir()
    archives = {
        "hello.1.0": make_source_tarball("hello", "1.0"),
        "hello.1.1": make_source_tarball("hello", "1.1"),
        "other.2.0": make_source_tarball("other", "2.0"),
    }
    async with fakeupstream.serving(root) as upstream:
        write_opam(root / "opam", f"{upstream.url}opam/", archives)
        config = dataclasses.replace(settings(tmp_path / "store"), opam=f"{upstream.url}opam")
        async with mirror_client(config) as (client, mirror):
            assert (await client.get("/opam/index.tar.gz")).status == 200
            asks = [("md5", "hello.1.0"), ("sha256", "hello.1.0"), ("md5", "hello.1.1")]
            for algo, full in [*asks, ("md5", "other.2.0"), *asks]:  # fetched, then held
                r = await client.get(_cache_url(algo, archives[full]))
                assert (r.status, await r.read()) == (200, archives[full])
            assert len(mirror.hot) == 3  # small archives: answered from memory from now on

            def no_sqlite() -> None:
                raise AssertionError("SQLite asked on the hit path")

            mirror.store.db = no_sqlite  # type: ignore[method-assign,assignment]
            for algo, full in asks:
                r = await client.get(_cache_url(algo, archives[full]))
                assert (r.status, r.headers["X-Cache"]) == (200, "HIT")
            assert mirror.stats.top_packages() == [["opam/hello", 9], ["opam/other", 1]]
            del mirror.store.db  # the class's again
            r = await client.get(_cache_url("md5", b"made up"))  # a name no index gave
            assert r.status == 404
            assert mirror.stats.top_packages() == [["opam/hello", 9], ["opam/other", 1]]


def _index(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _served(index: bytes) -> dict[str, str]:
    with tarfile.open(fileobj=io.BytesIO(index), mode="r:gz") as tar:
        return {
            m.name: handle.read().decode()
            for m in tar
            if (handle := tar.extractfile(m)) is not None
        }


def test_the_served_index_names_the_mirror_as_every_archives_only_url() -> None:
    """opam falls back from the archive cache to an archive's own URLs, which hang with
    no uplink: each client's index names the mirror, under the name that client used, as
    the `src` of every archive it can hold, with no `mirrors`; the rest stays as it was."""
    sha = hashlib.sha256(b"a").hexdigest()
    md5 = hashlib.md5(b"b").hexdigest()
    opam_file = (
        'opam-version: "2.0"\n'
        '# src: "a comment"\n'
        f'url {{\n  src: "https://example.org/a-1.0.tbz"\n  checksum: "sha256={sha}"\n'
        '  mirrors: [ "https://one.example/a.tbz" "https://two.example/a.tbz" ]\n}\n'
        f'extra-source "fix.patch" {{\n  src: "https://example.org/fix.patch"\n'
        f'  checksum: [ "md5={md5}" ]\n  mirrors: "https://three.example/fix.patch"\n}}\n'
    )
    pinned = 'opam-version: "2.0"\nurl { src: "git+https://example.org/b.git#v1" }\n'
    # a URL that does not parse was a source too, which took the whole index (a 500)
    odd = (
        'opam-version: "2.0"\n'
        f'url {{ src: "https://c.example:99999/c.tbz" checksum: "md5={md5}" }}\n'
    )
    processed = opam.process(
        _index({"packages/a/a.1.0/opam": opam_file, "packages/b/b.1/opam": pinned,
                "packages/c/c.1/opam": odd})
    )  # fmt: skip
    kept, sources = processed.body, processed.sources
    assert {s.name for s in sources} == {f"opam/sha256/{sha}", f"opam/md5/{md5}"}
    assert {s.url for s in sources} == {
        "https://example.org/a-1.0.tbz",
        "https://example.org/fix.patch",
    }  # the mirror fetches from where upstream said
    served = _served(opam.for_client(kept, "http://mirror.retreat.lan:8000"))
    assert served["packages/a/a.1.0/opam"] == (
        'opam-version: "2.0"\n'
        '# src: "a comment"\n'
        "url {\n"
        f'  src: "http://mirror.retreat.lan:8000/opam/cache/sha256/{sha[:2]}/{sha}"\n'
        f'  checksum: "sha256={sha}"\n  \n}}\n'
        'extra-source "fix.patch" {\n'
        f'  src: "http://mirror.retreat.lan:8000/opam/cache/md5/{md5[:2]}/{md5}"\n'
        f'  checksum: [ "md5={md5}" ]\n  \n}}\n'
    )
    assert served["packages/b/b.1/opam"] == pinned  # no checksum: nothing the mirror holds
    assert served["packages/c/c.1/opam"] == odd  # nowhere the mirror can fetch it from
    assert served["repo"] == opam.REPO_FILE.decode()
    other = _served(opam.for_client(kept, "http://10.0.0.5:8000"))
    assert "http://10.0.0.5:8000/opam/cache/sha256/" in other["packages/a/a.1.0/opam"]


async def test_each_clients_index_is_made_once_for_everyone_asking_at_once(
    tmp_path: Path,
) -> None:
    """The index names the mirror as each client named it, so it is made per name, which
    takes seconds for opam-repository: a room of `opam update`s at once makes it once,
    and Host headers made up one after another make it a bounded number of times."""
    root = tmp_path / "upstream"
    root.mkdir()
    made: list[str] = []

    async def counting(fn: Callable[..., Any], *args: Any) -> Any:
        if fn.__name__ == "_for_client":
            made.append(args[1])
        return await asyncio.to_thread(fn, *args)

    async with fakeupstream.serving(root) as upstream:
        write_opam(root / "opam", f"{upstream.url}opam/", {"hello.1.0": b"x"})
        config = dataclasses.replace(settings(tmp_path / "store"), opam=f"{upstream.url}opam")
        async with mirror_client(config, offload=counting) as (client, _):
            hosts = ["mirror.retreat.lan:8000"] * 8 + ["10.0.0.5:8000"] * 4
            answers = await asyncio.gather(
                *(client.get("/opam/index.tar.gz", headers={"Host": h}) for h in hosts)
            )
            bodies = [await r.read() for r in answers]
    assert sorted(made) == ["http://10.0.0.5:8000", "http://mirror.retreat.lan:8000"]
    for host, body in zip(hosts, bodies, strict=True):
        assert f"http://{host}/opam/cache/sha256/" in _served(body)["packages/hello/hello.1.0/opam"]
    # names made up one after another each cost a whole index up to a bound, then nothing
    made.clear()
    async with fakeupstream.serving(root) as upstream:
        write_opam(root / "opam", f"{upstream.url}opam/", {"hello.1.0": b"x"})
        config = dataclasses.replace(settings(tmp_path / "other"), opam=f"{upstream.url}opam")
        async with mirror_client(config, offload=counting) as (client, mirror):
            for n in range(opam_http.MAX_NAMES + 5):
                r = await client.get("/opam/index.tar.gz", headers={"Host": f"x{n}.example"})
                assert r.status == 200
            beyond = _served(await r.read())["packages/hello/hello.1.0/opam"]
    assert len(made) == opam_http.MAX_NAMES + 1  # the last five share the mirror's own name
    assert f'src: "{mirror.lan_url}/opam/cache/sha256/' in beyond
