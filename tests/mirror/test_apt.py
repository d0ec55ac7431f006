"""apt through the mirror, in process: release sets served whole and flipped only when
complete, index and pool files verified against the hashes the indexes give, the proxy
form for configured origins only. The archive is real: `dpkg-deb` and `dpkg-scanpackages`."""

from __future__ import annotations

import asyncio
import hashlib
import html
import logging
import re
import shutil
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from retreatkit.mirror import apt, apt_http, fakeupstream
from retreatkit.mirror.apt_suites import ReleaseSet
from retreatkit.mirror.errors import StoreFull
from retreatkit.mirror.fakeupstream import Upstream
from retreatkit.mirror.records import Object, Source
from retreatkit.mirror.service import Mirror
from retreatkit.mirror.status import section
from retreatkit.mirror.testing import Clock, mirror_client, settings
from retreatkit.mirror.testrepos import arch, make_deb, write_apt
from retreatkit.mirror.uplink import Limits

pytestmark = pytest.mark.skipif(
    shutil.which("dpkg-scanpackages") is None, reason="dpkg-dev is not installed (.ci/run)"
)
PACKAGES = f"main/binary-{arch()}/Packages.xz"


@dataclass
class Archive:
    upstream: Upstream
    client: TestClient[Any, Any]
    mirror: Mirror
    root: Path
    debs: dict[str, bytes]

    async def get(self, path: str) -> tuple[int, bytes, Mapping[str, str]]:
        r = await self.client.get(path)
        try:
            return r.status, await r.read(), r.headers
        except aiohttp.ClientPayloadError:
            return -1, b"", {}

    def publish(self, debs: dict[str, bytes]) -> None:
        write_apt(self.root / "debian", "stable", debs, signer=None)


@pytest.fixture
async def archive(tmp_path: Path) -> AsyncIterator[Archive]:
    debs = {"hello-rk_1.0_all.deb": make_deb(tmp_path / "build", "hello-rk", "1.0")}
    root = tmp_path / "upstream"
    write_apt(root / "debian", "stable", debs, signer=None)
    limits = Limits(connect_timeout=0.5, headers_timeout=0.5)
    async with fakeupstream.serving(root) as upstream:
        origins = {"debian": upstream.url + "debian"}
        config = settings(tmp_path / "store", apt=origins, index_ttl=0.0, limits=limits)
        async with mirror_client(config) as (client, mirror):
            yield Archive(upstream, client, mirror, root, debs)


async def test_an_archive_through_the_mirror(archive: Archive) -> None:
    release = (archive.root / "debian" / "dists" / "stable" / "Release").read_bytes()
    assert (await archive.get("/debian/dists/stable/InRelease"))[0] == 404  # unsigned here
    status, body, headers = await archive.get("/debian/dists/stable/Release")
    assert (status, body) == (200, release)
    packages = (archive.root / "debian" / "dists" / "stable" / PACKAGES).read_bytes()
    digest = hashlib.sha256(packages).hexdigest()
    status, body, headers = await archive.get(f"/debian/dists/stable/{PACKAGES}")
    assert (status, body) == (200, packages)
    by_hash = f"/debian/dists/stable/main/binary-{arch()}/by-hash/SHA256/{digest}"
    assert (await archive.get(by_hash))[:2] == (200, packages)
    # the index was fetched by hash upstream: a file that never changes mid-push
    assert archive.upstream.counts[by_hash] == 1
    assert archive.upstream.counts[f"/debian/dists/stable/{PACKAGES}"] == 0
    deb = "/debian/pool/main/h/hello-rk/hello-rk_1.0_all.deb"
    status, body, headers = await archive.get(deb)  # known once that Packages is read
    assert (status, body) == (200, archive.debs["hello-rk_1.0_all.deb"])
    status, body, headers = await archive.get(deb)
    assert headers["ETag"] == f'"{hashlib.sha256(body).hexdigest()}"'
    assert archive.upstream.counts["/debian/pool/main/h/hello-rk/hello-rk_1.0_all.deb"] == 1


async def test_a_deb_that_does_not_match_its_index_is_never_kept(archive: Archive) -> None:
    await archive.get("/debian/dists/stable/Release")
    await archive.get(f"/debian/dists/stable/{PACKAGES}")
    path = "/debian/pool/main/h/hello-rk/hello-rk_1.0_all.deb"
    archive.mirror.fetcher.clock = Clock()
    archive.upstream.rules[path] = "corrupt"
    status, body, _ = await archive.get(path)
    assert status == 504 and archive.mirror.stats.verify_failures == 1
    assert body.startswith(b"upstream sent bad bytes for hello-rk_1.0_all.deb: sha256 mismatch")
    assert await archive.mirror.blob(apt.pool_key("debian", path[8:])) is None
    for _ in range(3):  # apt-get's retries: answered from memory, the upstream not asked
        again = await archive.get(path)
        assert again[:2] == (504, body.rstrip(b"\n") + b"; next try in 300 s\n")
    assert archive.upstream.counts[path] == 1


async def test_a_deb_cut_short_with_no_length_is_a_cut_not_bad_bytes(archive: Archive) -> None:
    """The index says the size: fewer bytes and a close is a cut, which may mend: it is
    continued (this upstream sends the whole file again, cut at the same byte, so once),
    and the next request asks upstream again instead of being told to wait (BadFiles)."""
    await archive.get("/debian/dists/stable/Release")
    await archive.get(f"/debian/dists/stable/{PACKAGES}")
    path = "/debian/pool/main/h/hello-rk/hello-rk_1.0_all.deb"
    archive.mirror.fetcher.clock = Clock()
    archive.upstream.rules[path] = "truncate"
    status, body, _ = await archive.get(path)
    assert (status, body) == (502, b"upstream cut hello-rk_1.0_all.deb short\n")
    del archive.upstream.rules[path]
    assert (await archive.get(path))[0] == 200
    assert archive.upstream.counts[path] == 3


async def test_a_resumed_download_of_a_file_on_its_way_flows_as_it_arrives(
    archive: Archive, tmp_path: Path
) -> None:
    """apt resumes a file it holds in `partial/` with `Range` and `If-Range: DATE`. No
    date validates a file here (none has a Last-Modified), so the answer is the whole
    file (RFC 9110 13.1.5): it flows as the upstream sends it, never held back until the
    download ends, a silence longer than apt's timeout for a big file on a slow uplink."""
    big = make_deb(tmp_path / "build", "big-rk", "1.0", pad=3_000_000)  # over 1 MiB: streamed
    archive.publish({**archive.debs, "big-rk_1.0_all.deb": big})
    await archive.get("/debian/dists/stable/Release")
    await archive.get(f"/debian/dists/stable/{PACKAGES}")
    path = "/debian/pool/main/b/big-rk/big-rk_1.0_all.deb"
    archive.upstream.rules[path] = "stall"  # half the file, then nothing while the test runs
    archive.mirror.settings.limits.read_timeout = 3600.0
    resume = {"Range": "bytes=1000000-", "If-Range": "Sat, 01 Jun 2024 08:00:00 GMT"}
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        async with archive.client.get(path, headers=resume) as r:
            assert (r.status, r.content_length) == (200, len(big))
            assert "Content-Range" not in r.headers
            assert await r.content.readexactly(1_000_000) == big[:1_000_000]


async def test_a_new_release_is_served_only_once_its_indexes_are_held(archive: Archive) -> None:
    _, old, _ = await archive.get("/debian/dists/stable/Release")
    await archive.get(f"/debian/dists/stable/{PACKAGES}")
    newer = make_deb(archive.root.parent / "build", "hello-rk", "1.1")
    archive.publish({**archive.debs, "hello-rk_1.1_all.deb": newer})
    new_packages = (archive.root / "debian" / "dists" / "stable" / PACKAGES).read_bytes()
    by_hash = (
        f"/debian/dists/stable/main/binary-{arch()}/by-hash/SHA256/"
        + hashlib.sha256(new_packages).hexdigest()
    )
    archive.upstream.rules[by_hash] = "fail"  # the new index cannot be had (yet)
    status, body, headers = await archive.get("/debian/dists/stable/Release")
    assert (status, body) == (200, old)  # the old set, whole, said stale
    assert headers["Warning"] == '110 - "Response is Stale"'
    assert section(archive.mirror, True, 0)["warnings"] == [  # the index by its name
        "apt debian/stable: still serving its last complete Release; the upstream's newer"
        f" one is held back: upstream answered 500 for stable/{PACKAGES}"
    ]
    archive.upstream.rules.clear()
    status, body, headers = await archive.get("/debian/dists/stable/Release")
    assert body != old and "Warning" not in headers
    # the new index was fetched before the new Release went out, and its debs are known
    assert archive.upstream.counts[by_hash] == 2
    held = await archive.mirror.blob(apt.index_key("debian", "sha256", by_hash[-64:]))
    assert held is not None
    path = "/debian/pool/main/h/hello-rk/hello-rk_1.1_all.deb"
    assert (await archive.get(path))[:2] == (200, newer)


async def test_the_log_names_an_index_fetched_for_a_new_release_by_its_path(
    archive: Archive, caplog: pytest.LogCaptureFixture
) -> None:
    """It named it by the store's key, a digest: `apt/debian/by-hash/sha256/...`."""
    await archive.get("/debian/dists/stable/Release")
    await archive.get(f"/debian/dists/stable/{PACKAGES}")
    newer = make_deb(archive.root.parent / "build", "hello-rk", "1.1")
    archive.publish({**archive.debs, "hello-rk_1.1_all.deb": newer})
    with caplog.at_level(logging.INFO, logger="retreatkit.mirror"):
        await archive.get("/debian/dists/stable/Release")
    said = [r.getMessage() for r in caplog.records if "for the new release" in r.getMessage()]
    assert said == [f"apt debian/stable: stable/{PACKAGES} fetched for the new release"]


async def test_an_index_by_its_name_comes_from_the_release_just_served(archive: Archive) -> None:
    """An archive without by-hash: apt asks for InRelease, then for `Packages.xz` by its
    name. The upstream may publish in between; the index must still be the one the
    Release apt holds names, not one of a Release fetched for the index's request."""
    dists = archive.root / "debian" / "dists" / "stable"
    write_apt(archive.root / "debian", "stable", archive.debs, signer=None, by_hash=False)
    await archive.get("/debian/dists/stable/Release")
    _, packages, _ = await archive.get(f"/debian/dists/stable/{PACKAGES}")  # an attendee's
    _, release, _ = await archive.get("/debian/dists/stable/Release")  # the next one's
    newer = make_deb(archive.root.parent, "hello-rk", "1.1")
    debs = {**archive.debs, "hello-rk_1.1_all.deb": newer}
    write_apt(archive.root / "debian", "stable", debs, signer=None, by_hash=False)
    assert (await archive.get(f"/debian/dists/stable/{PACKAGES}"))[:2] == (200, packages)
    assert f"{hashlib.sha256(packages).hexdigest()} " in release.decode()
    _, release, _ = await archive.get("/debian/dists/stable/Release")  # the next update
    packages = (dists / PACKAGES).read_bytes()
    assert f"{hashlib.sha256(packages).hexdigest()} " in release.decode()
    assert (await archive.get(f"/debian/dists/stable/{PACKAGES}"))[:2] == (200, packages)


async def test_status_says_when_a_new_release_is_held_back(archive: Archive) -> None:
    """A new Release whose index does not match it (a CDN node with a bad copy) is never
    served: attendees keep the last complete set, and the organiser is told why, since
    nothing else would show that the suite stopped moving."""
    archive.mirror.fetcher.clock = Clock()
    _, old, _ = await archive.get("/debian/dists/stable/Release")
    await archive.get(f"/debian/dists/stable/{PACKAGES}")
    newer = make_deb(archive.root.parent / "build", "hello-rk", "1.1")
    archive.publish({**archive.debs, "hello-rk_1.1_all.deb": newer})
    new_packages = (archive.root / "debian" / "dists" / "stable" / PACKAGES).read_bytes()
    digest = hashlib.sha256(new_packages).hexdigest()
    by_hash = f"/debian/dists/stable/main/binary-{arch()}/by-hash/SHA256/{digest}"
    archive.upstream.rules[by_hash] = "corrupt"
    assert (await archive.get("/debian/dists/stable/Release"))[:2] == (200, old)
    [warning] = section(archive.mirror, True, 0)["warnings"]
    assert warning.startswith(
        "apt debian/stable: still serving its last complete Release; the upstream's newer"
        f" one is held back: upstream sent bad bytes for stable/{PACKAGES}: sha256 mismatch:"
        f" expected {digest}"
    )
    archive.upstream.rules.clear()
    archive.mirror.fetcher.clock.now += 300  # the bad copy is asked for again
    status, body, _ = await archive.get("/debian/dists/stable/Release")
    assert status == 200 and body != old
    assert section(archive.mirror, True, 0)["warnings"] == []


async def test_apt_never_waits_on_the_probe(archive: Archive) -> None:
    now = [1000.0]
    archive.mirror.fetcher.clock = lambda: now[0]
    release = "/debian/dists/stable/Release"
    _, old, _ = await archive.get(release)
    for name in ("InRelease", "Release", "Release.gpg"):
        archive.upstream.rules[f"/debian/dists/stable/{name}"] = "silent"
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        assert (await archive.get(release))[:2] == (200, old)  # waits the bound once: down
        archive.mirror.settings.limits.headers_timeout = 3600.0  # the probe never ends
        now[0] += 2.0
        archive.upstream.asked.clear()
        for _ in range(2):  # the first starts the probe; neither waits on it
            status, body, headers = await archive.get(release)
            assert (status, body, headers["Warning"]) == (200, old, '110 - "Response is Stale"')
        await archive.upstream.asked.wait()
        assert archive.upstream.counts["/debian/dists/stable/InRelease"] == 3


async def test_proxy_requests_for_configured_origins_only(archive: Archive) -> None:
    assert archive.client.port is not None
    port = archive.client.port

    async def raw(request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        async with asyncio.timeout(5):
            data = await reader.read()
        writer.close()
        return data

    upstream = archive.upstream.url.rstrip("/")
    ok = await raw(
        f"GET {upstream}/debian/dists/stable/Release HTTP/1.1\r\nHost: {upstream[7:]}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    assert ok.startswith(b"HTTP/1.1 200 ")
    assert ok.endswith((archive.root / "debian/dists/stable/Release").read_bytes())
    other = await raw(
        b"GET http://example.invalid/debian/dists/stable/Release HTTP/1.1\r\n"
        b"Host: example.invalid\r\nConnection: close\r\n\r\n"
    )
    said = b"not an open proxy: this mirror serves only its apt origins (debian);"
    said += b' set Acquire::http::Proxy::example.invalid "DIRECT"'
    assert other.startswith(b"HTTP/1.1 403 " + said + b"\r\n")
    assert other.endswith(said + b"\n")
    tunnel = await raw(
        b"CONNECT example.invalid:443 HTTP/1.1\r\nHost: example.invalid:443\r\n"
        b"Connection: close\r\n\r\n"
    )
    assert tunnel.startswith(
        b'HTTP/1.1 405 this mirror is not an https proxy: set Acquire::https::Proxy "DIRECT"\r\n'
    )
    counted = archive.upstream.counts
    assert set(counted) == {"/debian/dists/stable/InRelease", "/debian/dists/stable/Release",
                            "/debian/dists/stable/Release.gpg"}  # fmt: skip


@pytest.mark.parametrize(
    "path",
    [
        "/debian/pool/main/h/hello-rk/unknown_1.0_all.deb",
        "/debian/..%2f..%2fetc/passwd",
        "/debian/dists/stable/main/.hidden",
        "/debian/dists/stable/main/binary-amd64/by-hash/SHA256/" + "0" * 64,
        "/debian/dists/stable/main/binary-amd64/Packages.diff/Index",
        "/ubuntu/dists/stable/Release",
    ],
)
async def test_what_no_index_names_is_never_fetched(archive: Archive, path: str) -> None:
    status, _, _ = await archive.get(path)
    assert status == 404
    pool = [p for p in archive.upstream.counts if "/pool/" in p or "by-hash" in p or ".." in p]
    assert pool == []


async def test_a_suite_with_escapes_never_leaves_its_archive(archive: Archive) -> None:
    """A suite named `%2e%2e%2f...` reached the upstream as `../`: a request made the
    mirror fetch and serve the release files, and the indexes they list, of another
    archive on the same host, one that is not an origin of the mirror. A path under
    `dists/` has no `%` in apt (only pool file names carry escapes, `%3a`)."""
    shutil.copytree(archive.root / "debian", archive.root / "other")
    suite = "%2e%2e%2f%2e%2e%2fother%2fdists%2fstable".replace("%", "%25")
    status, body, _ = await archive.get(f"/debian/dists/{suite}/Release")
    assert (status, body) == (404, b"not a path in an apt archive\n")
    assert archive.upstream.counts == {}


async def test_the_page_gives_no_line_a_release_can_break_out_of(archive: Archive) -> None:
    """The attendee page gives a `deb` line for each suite held, in single quotes, with
    the components its Release names. A Release with a quote among them (an upstream's,
    or a forgery over a plain-http uplink: the mirror checks no signature, apt does) made
    a line that ran a command of its own in every shell it was pasted into."""
    release = archive.root / "debian" / "dists" / "stable" / "Release"
    hostile = "Components: main contrib x';touch${IFS}owned;'"
    release.write_text(release.read_text().replace("Components: main", hostile))
    assert (await archive.get("/debian/dists/stable/Release"))[0] == 200
    r = await archive.client.get("/", headers={"Host": "mirror.retreat.lan:8000"})
    text = html.unescape(await r.text()).replace("</pre>", "")
    lines = [line for line in text.splitlines() if "deb " in line]
    assert lines == [
        "echo 'deb http://mirror.retreat.lan:8000/debian stable main contrib'"
        " | sudo tee /etc/apt/sources.list.d/retreat-debian.list"
    ]


RELEASE = b"""-----BEGIN PGP SIGNED MESSAGE-----
Hash: SHA512

Origin: Debian
Suite: stable-security
Valid-Until: Sat, 08 Jun 2024 08:00:00 UTC
Acquire-By-Hash: yes
MD5Sum:
 0123456789abcdef0123456789abcdef 123 main/binary-amd64/Packages
SHA256:
 %s 123 main/binary-amd64/Packages
 %s 99 ../../etc/passwd
- -dash-escaped: ignored
-----BEGIN PGP SIGNATURE-----

abc
-----END PGP SIGNATURE-----
""" % (b"a" * 64, b"b" * 64)


def test_a_release_is_read() -> None:
    release = apt.parse_release(RELEASE)
    assert list(release.files) == ["main/binary-amd64/Packages"]
    f = release.files["main/binary-amd64/Packages"]
    assert f.size == 123 and f.strongest == ("sha256", "a" * 64)
    assert release.by_hash and release.valid_until == 1717833600.0
    source = apt.index_source("debian", "http://d.test/debian", "stable", release, f)
    assert (
        source.url
        == "http://d.test/debian/dists/stable/main/binary-amd64/by-hash/SHA256/" + "a" * 64
    )
    assert source.name == "apt/debian/by-hash/sha256/" + "a" * 64


@pytest.mark.parametrize(
    ("a", "b", "order"),
    [("1.0", "1.0", 0), ("1.0~rc1", "1.0", -1), ("1:0.9", "2.0", 1), ("1.0-2", "1.0-10", -1),
     ("2.36-9+deb12u4", "2.36-9+deb12u10", -1), ("1.0a", "1.0+", -1), ("1.0", "1.0.0", -1)],
)  # fmt: skip
def test_debian_version_order(a: str, b: str, order: int) -> None:
    assert apt.compare_versions(a, b) == order
    assert apt.compare_versions(b, a) == -order


def test_a_decompression_bomb_is_refused() -> None:
    import lzma

    bomb = lzma.compress(b"\0" * 10_000_000)
    with pytest.raises(apt.AptError, match="larger than the mirror's limit"):
        apt.decompress("Packages.xz", bomb, limit=1_000_000)


@pytest.mark.parametrize(
    ("url", "found"),
    [
        ("http://deb.test/debian/pool/a.deb", ("debian", "pool/a.deb")),
        ("http://deb.test:80/debian/dists/x/InRelease", ("debian", "dists/x/InRelease")),
        ("http://deb.test/debian-security/x", ("security", "x")),
        ("http://deb.test/debianx/pool/a.deb", None),
        ("https://deb.test/debian/pool/a.deb", None),
        ("http://evil.test/debian/pool/a.deb", None),
        ("http://deb.test:8080/debian/pool/a.deb", None),
        ("http://tls.test/ubuntu/pool/a.deb", ("ubuntu", "pool/a.deb")),
        ("http://tls.test:8443/ubuntu/pool/a.deb", None),
    ],
)
def test_proxied_urls(url: str, found: tuple[str, str] | None) -> None:
    origins = {"debian": "http://deb.test/debian", "security": "http://deb.test/debian-security",
               "ubuntu": "https://tls.test/ubuntu"}  # fmt: skip
    assert apt.proxied(origins, url) == found


async def test_status_warns_of_a_release_that_expires(archive: Archive) -> None:
    suites = archive.client.server.app[apt_http.SUITES_KEY]
    suites._keep(("debian", "stable-security"), ReleaseSet(apt.parse_release(RELEASE), {}, 0.0))
    assert section(archive.mirror, True, 0)["warnings"] == [
        "apt debian/stable-security: its Release expired at 2024-06-08T08:00:00Z; offline,"
        " apt then needs [check-valid-until=no] in its sources line"
    ]


async def test_a_404_for_a_held_release_serves_the_last_one(archive: Archive) -> None:
    """The uplink cut and the venue's proxy or portal answering 404 to everything: the
    suite the mirror holds is served stale, not taken from apt by that 404."""
    release = "/debian/dists/stable/Release"
    _, old, _ = await archive.get(release)
    _, packages, _ = await archive.get(f"/debian/dists/stable/{PACKAGES}")
    shutil.rmtree(archive.root / "debian")  # 404 for every file of the archive
    status, body, headers = await archive.get(release)
    assert (status, body, headers["Warning"]) == (200, old, '110 - "Response is Stale"')
    assert (await archive.get(f"/debian/dists/stable/{PACKAGES}"))[:2] == (200, packages)


def test_a_packages_file_is_counted_at_its_size_unpacked() -> None:
    """What reading it holds of max_pages_reading: the Release lists the plain file too."""
    listing = "\n".join(
        f" {'a' * 64} {size} main/binary-amd64/{name}"
        for name, size in (("Packages", 50_000), ("Packages.xz", 9_000), ("Sources.gz", 700))
    )
    release = apt.parse_release(f"Suite: stable\nSHA256:\n{listing}\n".encode())
    files = release.files
    assert apt.unpacked_size(release, files["main/binary-amd64/Packages.xz"]) == 50_000
    assert apt.unpacked_size(release, files["main/binary-amd64/Packages"]) == 50_000
    assert apt.unpacked_size(release, files["main/binary-amd64/Sources.gz"]) == 700


def test_a_page_with_a_field_like_line_is_no_release() -> None:
    """A portal's page whose CSS reads as a field: a Release names its suite."""
    page = b"<html>\n<style>\nbody { margin: 0; }\n</style>\n</html>\n"
    with pytest.raises(apt.AptError, match="names no Suite or Codename and lists no index"):
        apt.parse_release(page)
    assert not apt.looks_like("InRelease", page) and not apt.looks_like("Release.gpg", page)
    assert apt.looks_like("InRelease", RELEASE)


def test_a_release_that_names_no_suite_but_lists_indexes_is_one() -> None:
    """`apt-ftparchive release` writes no Suite or Codename unless told to; apt takes it."""
    listing = "\n".join(f" {'0' * 64} 10 main/binary-amd64/{n}" for n in ("Packages", "Release"))
    release = apt.parse_release(
        f"Date: Thu, 03 Dec 2026 10:00:00 UTC\nSHA256:\n{listing}\n".encode()
    )
    assert sorted(release.files) == ["main/binary-amd64/Packages", "main/binary-amd64/Release"]


def test_a_sources_index_names_each_file_under_its_directory() -> None:
    """What `apt-get source` fetches; a Directory or file name that leaves the pool is
    never a file to fetch."""
    text = (
        "Package: hello\nDirectory: pool/main/h/hello\nChecksums-Sha256:\n"
        f" {'a' * 64} 10 hello_1.0.dsc\n {'b' * 64} 20 hello_1.0.tar.xz\n\n"
        "Package: evil\nDirectory: ../../etc\nChecksums-Sha256:\n"
        f" {'c' * 64} 30 passwd\n\n"
        "Package: evil2\nDirectory: pool/main/e/evil2\nChecksums-Sha256:\n"
        f" {'d' * 64} 40 ../../x.dsc\n"
    )
    found = apt.listed("debian", "http://d.test/debian", "main/source/Sources.xz", text)
    assert [(s.name, s.url, s.size) for s in found] == [
        ("apt/debian/pool/main/h/hello/hello_1.0.dsc",
         "http://d.test/debian/pool/main/h/hello/hello_1.0.dsc", 10),
        ("apt/debian/pool/main/h/hello/hello_1.0.tar.xz",
         "http://d.test/debian/pool/main/h/hello/hello_1.0.tar.xz", 20),
    ]  # fmt: skip
    assert found[0].hashes == {"sha256": "a" * 64}


async def test_a_packages_file_that_cannot_be_read_is_tried_once(archive: Archive) -> None:
    """A Packages.xz its Release lists, with the right hash, that does not decompress: a
    request for a pool file no index names reads it once and answers 404. It was read
    again and again for as long as the mirror ran, and a request that joined that
    reading as it ended spun the event loop, the whole mirror stopped."""
    dists = archive.root / "debian" / "dists" / "stable"
    broken = b"not xz at all"
    old = (dists / PACKAGES).read_bytes()
    (dists / PACKAGES).write_bytes(broken)
    by_hash = (dists / PACKAGES).parent / "by-hash" / "SHA256"
    (by_hash / hashlib.sha256(broken).hexdigest()).write_bytes(broken)
    release = (dists / "Release").read_text()
    for algo in ("md5", "sha256"):
        was = f" {hashlib.new(algo, old).hexdigest()} {len(old):>8} {PACKAGES}"
        now = f" {hashlib.new(algo, broken).hexdigest()} {len(broken):>8} {PACKAGES}"
        release = release.replace(was, now)
    (dists / "Release").write_text(release)
    assert (await archive.get("/debian/dists/stable/Release"))[0] == 200
    assert (await archive.get(f"/debian/dists/stable/{PACKAGES}"))[:2] == (200, broken)
    for _ in range(2):  # the first joins the reading the index's request started
        status, body, _ = await archive.get("/debian/pool/main/n/no-rk/no-rk_1.0_all.deb")
        assert status == 404, body
    deb = "/debian/pool/main/h/hello-rk/hello-rk_1.0_all.deb"  # in no index it could read
    assert (await archive.get(deb))[0] == 404


def test_no_pool_file_is_named_as_the_stores_indexes_are() -> None:
    """The store keeps an origin's release files as `dists/...` and its index files as
    `by-hash/ALGO/HEX` under the origin, and pool files by their path: a Packages or
    Sources naming a file there would replace an index for every client."""
    sha = "a" * 64
    entries = ["pool/main/h/hello/hello_1.0_all.deb", f"by-hash/sha256/{sha}",
               "dists/stable/InRelease", "pool/main/by-hash/x_1.0_all.deb"]  # fmt: skip
    text = "".join(
        f"Package: p{i}\nFilename: {path}\nSize: 10\nSHA256: {sha}\n\n"
        for i, path in enumerate(entries)
    )
    found = apt.listed("debian", "http://d.test/debian", PACKAGES, text)
    assert [s.name for s in found] == [
        "apt/debian/pool/main/h/hello/hello_1.0_all.deb",
        "apt/debian/pool/main/by-hash/x_1.0_all.deb",
    ]
    sources = "".join(
        f"Package: s{i}\nDirectory: {folder}\nChecksums-Sha256:\n {sha} 10 {file}\n\n"
        for i, (folder, file) in enumerate(
            [("pool/main/s/s0", "s0_1.0.dsc"), ("by-hash/sha256", sha), ("dists/stable", "Release")]
        )
    )
    found = apt.listed("debian", "http://d.test/debian", "main/source/Sources.xz", sources)
    assert [s.name for s in found] == ["apt/debian/pool/main/s/s0/s0_1.0.dsc"]
    assert apt.classify(f"by-hash/sha256/{sha}") is None
    assert apt.classify("pool/main/by-hash/x_1.0_all.deb") == apt.Asked(
        "pool", path="pool/main/by-hash/x_1.0_all.deb"
    )


async def test_an_index_a_packages_file_took_over_in_the_store_is_mended(
    archive: Archive,
) -> None:
    """A store where an older mirror kept a .deb under an index's name, as a lying
    Packages file made it: the index's source is said again when its Release is read
    from the store, and the file held is not the one it names, so it is fetched again.
    Meanwhile that index does not decompress: it is read once, not in a loop."""
    await archive.get("/debian/dists/stable/Release")
    path = f"/debian/dists/stable/{PACKAGES}"
    status, packages, _ = await archive.get(path)
    assert status == 200
    store, deb = archive.mirror.store, archive.debs["hello-rk_1.0_all.deb"]
    key = apt.index_key("debian", "sha256", hashlib.sha256(packages).hexdigest())
    evil = apt.pool_sources(
        "debian",
        archive.upstream.url + "debian",
        f"Package: evil\nFilename: {key.removeprefix('apt/debian/')}\nSize: {len(deb)}\n"
        f"SHA256: {hashlib.sha256(deb).hexdigest()}\n",
    )
    assert evil == []  # refused now; as an older mirror read it:
    digest = hashlib.sha256(deb).hexdigest()
    took = Source(key, archive.upstream.url + "x.deb", {"sha256": digest}, "apt", "evil", len(deb))

    def take_over() -> None:
        store.put_bytes(deb)
        store.add_sources([took])
        store.put(Object(key, digest, len(deb), "application/octet-stream", time.time()))

    await store.run(take_over)
    archive.mirror.hot.clear()
    assert (await archive.get(path))[1] == deb  # what that store served every client
    # a Packages that cannot be read is tried once, not again and again by each
    # request for a pool file no index names
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        status, _, _ = await archive.get("/debian/pool/main/n/no-rk/no-rk_1.0_all.deb")
    assert status == 404
    archive.client.app[apt_http.SUITES_KEY]._sets.clear()  # the mirror started again
    assert (await archive.get("/debian/dists/stable/Release"))[0] == 200
    assert (await archive.get(path))[:2] == (200, packages)


async def test_a_suite_slower_than_apt_waits_is_named_by_its_release(archive: Archive) -> None:
    """apt reads the words of a 504: they name the file that was slow, not the origin."""
    archive.mirror.settings.limits.index_timeout = 0.1
    for name in ("InRelease", "Release", "Release.gpg"):
        archive.upstream.rules[f"/debian/dists/stable/{name}"] = "silent"
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        status, body, _ = await archive.get("/debian/dists/stable/InRelease")
    assert (status, body.decode()) == (
        504,
        f"upstream took over 0.1 s sending {archive.upstream.url}debian/dists/stable/InRelease;"
        " the mirror goes on fetching it for the next try\n",
    )


async def test_a_deb_whose_packages_file_the_catalog_had_no_room_for_is_refused_for_the_disk(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Packages file fetched and served, but the files it lists with no room in the
    catalog (SQLite's `database or disk is full`): a .deb it lists was `404 ... is in no
    Packages or Sources index this mirror holds (apt update first)`, for an attendee whose
    update had just worked. With room again, the next request reads it."""
    store = archive.mirror.store
    noted = store.add_sources

    def no_room(sources: list[Source]) -> None:
        if any(s.name.startswith("apt/debian/pool/") for s in sources):
            store.outgrown()  # as Store._catalog_error does
            raise StoreFull("the mirror's disk is full (its catalog cannot grow)")
        noted(sources)

    monkeypatch.setattr(store, "add_sources", no_room)
    assert (await archive.get("/debian/dists/stable/Release"))[0] == 200
    assert (await archive.get(f"/debian/dists/stable/{PACKAGES}"))[0] == 200
    deb = "/debian/pool/main/h/hello-rk/hello-rk_1.0_all.deb"
    r = await archive.client.get(deb)
    said = (  # how full is the test machine's disk's (Space.fullness)
        rf"the mirror's disk is .+, so it could not note the files debian/stable/"
        rf"{re.escape(PACKAGES)} lists; pool/main/h/hello-rk/hello-rk_1\.0_all\.deb may be one"
    )
    assert r.status == 507 and re.fullmatch(said, r.reason or ""), (r.status, r.reason)
    monkeypatch.setattr(store, "add_sources", noted)
    store.space.outgrown = None  # room made
    assert (await archive.get(deb))[:2] == (200, archive.debs["hello-rk_1.0_all.deb"])
