"""apt-get install through a real mirror process, as attendees type it: the README's
sources line, packages with dependencies unpacked by dpkg (into a folder of the test's),
the archive's key trusted as a system's keyring is. Then the same with the uplink gone,
and what apt says when the upstream misbehaves.

Each attendee is a network namespace that reaches the mirror at a non-loopback address;
apt-get has every folder of its own (AptClient), so the host's apt is never touched.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import shutil
import urllib.request
from pathlib import Path

import pytest

from retreatkit.mirror.testing import Netns
from retreatkit.mirror.testrepos import AptClient, Signer, arch, make_deb, write_apt
from tests.e2e.mirror_attendee import attendee, attendee_apt, fetched, mirrored

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("apt-get", "dpkg-scanpackages", "gpg")),
        reason="apt-get, dpkg-dev and gpg are needed (.ci/run installs them)",
    ),
]

lan = attendee("i", prefix="apw")
SUITE = "bookworm"


def debs(build: Path) -> dict[str, bytes]:
    """hello-rk, which needs a library and a data package (over 1 MiB: streamed)."""
    return {
        "libhello-rk_1.0_all.deb": make_deb(build, "libhello-rk", "1.0", pad=20_000),
        "hello-data-rk_1.0_all.deb": make_deb(build, "hello-data-rk", "1.0", pad=1_500_000),
        "hello-rk_1.0_all.deb": make_deb(
            build, "hello-rk", "1.0", depends="libhello-rk (>= 1.0), hello-data-rk"
        ),
    }


def installed(apt: AptClient) -> set[str]:
    return {p.name for p in (apt.state / "root" / "usr" / "share" / "doc").iterdir()}


def test_attendees_install_with_dependencies_then_with_the_uplink_gone(
    tmp_path: Path, lan: Netns, signer: Signer
) -> None:
    """The upstream's web server compresses what a client accepts compressed (Apache's
    mod_deflate, a CDN): the mirror must still keep the bytes the Release's hashes name."""
    made = debs(tmp_path / "build")
    root = tmp_path / "upstream"
    write_apt(root / "debian", SUITE, made, signer)
    dists = root / "debian" / "dists" / SUITE
    served = [dists / n for n in ("InRelease", "Release", "Release.gpg")]
    served += [*(dists / "main" / f"binary-{arch()}" / "by-hash").rglob("*")]
    served += [*(root / "debian" / "pool").rglob("*.deb")]
    rules = {"/" + str(p.relative_to(root)): "gzip" for p in served if p.is_file()}
    (root / ".behaviours.json").write_text(json.dumps(rules))
    with mirrored(tmp_path, root, lan, ttl=0) as (upstream, mirror, _admin):
        for round_ in ("online", "offline"):
            apt = attendee_apt(tmp_path / f"apt-{round_}", mirror, signer)
            for command in (["update"], ["install", "-y", "hello-rk"]):
                done = apt.run(*command, argv=lan.argv([]))
                assert done.returncode == 0, (round_, done.stdout, done.stderr)
                assert "W:" not in done.stderr and "E:" not in done.stderr, done.stderr
            assert "Setting up hello-rk (1.0) ..." in done.stdout
            assert installed(apt) == {"hello-rk", "libhello-rk", "hello-data-rk"}
            data = apt.state / "root/usr/share/doc/hello-data-rk/README"
            assert data.read_text() == "hello-data-rk 1.0\n"
            upstream.stop()


def test_a_deb_of_another_size_than_its_index_says_is_refused_before_its_bytes_cross(
    tmp_path: Path, lan: Netns, signer: Signer
) -> None:
    """An upstream mid-sync: a .deb in the pool is not the one its Packages lists. Its
    Content-Length says so before a byte of it crosses the uplink, and apt is told in
    the mirror's words (it said `File has unexpected size ... Mirror sync in progress?`
    once the mirror had fetched and passed on the wrong file)."""
    made = debs(tmp_path / "build")
    root = tmp_path / "upstream"
    write_apt(root / "debian", SUITE, made, signer)
    pool = root / "debian" / "pool" / "main" / "h" / "hello-data-rk" / "hello-data-rk_1.0_all.deb"
    pool.write_bytes(pool.read_bytes() + b"mid-sync")
    with mirrored(tmp_path, root, lan) as (_upstream, mirror, admin):
        apt = attendee_apt(tmp_path / "apt", mirror, signer)
        assert apt.run("update", argv=lan.argv([])).returncode == 0
        done = apt.run("install", "-y", "hello-rk", argv=lan.argv([]))
        assert done.returncode == 100
        size = len(made["hello-data-rk_1.0_all.deb"])
        said = (
            f"E: Failed to fetch {mirror.url}debian/pool/main/h/hello-data-rk/"
            f"hello-data-rk_1.0_all.deb  502  upstream has hello-data-rk_1.0_all.deb at"
            f" {size + 8} bytes; its index says {size}"
        )
        assert said in done.stderr, done.stderr
        with urllib.request.urlopen(f"{admin}/status", timeout=30) as r:
            status = json.load(r)["mirror"]
        assert status["verify_failures"] == 1
        # the index and the other two files crossed, not a byte of the wrong one
        index = root / "debian" / "dists" / SUITE / "main" / f"binary-{arch()}" / "Packages.xz"
        crossed = index.stat().st_size + sum(len(d) for d in made.values()) - size
        assert status["upstream_bytes"] == crossed


def test_an_unchanged_release_is_a_hit_for_apt_and_a_new_one_is_not(
    tmp_path: Path, lan: Netns, signer: Signer
) -> None:
    """apt asks for InRelease again with `If-Modified-Since`: the date it was given. The
    mirror gives the upstream's own Last-Modified, so an unchanged Release is `Hit:`
    (no body), and one the upstream published since is fetched whole."""
    made = debs(tmp_path / "build")
    root = tmp_path / "upstream"
    write_apt(root / "debian", SUITE, made, signer)
    with mirrored(tmp_path, root, lan, ttl=0) as (_upstream, mirror, _admin):
        where = f"{mirror.url}debian {SUITE}"
        apt = attendee_apt(tmp_path / "apt", mirror, signer)
        first = apt.run("update", argv=lan.argv([]))
        assert f"Get:1 {where} InRelease [" in first.stdout, first.stdout
        again = apt.run("update", argv=lan.argv([]))
        assert again.stdout.splitlines()[0] == f"Hit:1 {where} InRelease", again.stdout
        newer = make_deb(tmp_path / "build", "hello-rk", "1.1")
        write_apt(root / "debian", SUITE, {**made, "hello-rk_1.1_all.deb": newer}, signer)
        dists = root / "debian" / "dists" / SUITE
        for name in ("InRelease", "Release", "Release.gpg"):  # a push an hour later
            published = (dists / name).stat().st_mtime + 3600
            os.utime(dists / name, (published, published))
        pushed = apt.run("update", argv=lan.argv([]))
        assert f"Get:1 {where} InRelease [" in pushed.stdout, pushed.stdout
        assert f"Get:2 {where}/main {arch()} Packages [" in pushed.stdout, pushed.stdout
        done = apt.run("install", "-y", "hello-rk", argv=lan.argv([]))
        assert "Setting up hello-rk (1.1) ..." in done.stdout, (done.stdout, done.stderr)


def test_apt_shows_the_whole_line_of_a_deb_with_bad_bytes_and_when_the_mirror_asks_again(
    tmp_path: Path, lan: Netns, signer: Signer
) -> None:
    """apt-get prints an error's reason phrase, not its body: with a file name of a
    Debian length and both hashes, the line must still end with the mirror's retry."""
    filename = "libretreatkit-hello-common_1.0.0-1_all.deb"
    made = {filename: make_deb(tmp_path / "build", "libretreatkit-hello-common", "1.0.0-1")}
    root = tmp_path / "upstream"
    write_apt(root / "debian", SUITE, made, signer)
    pool = root / "debian" / "pool" / "main" / "l" / "libretreatkit-hello-common" / filename
    data = bytearray(pool.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the right length, one byte flipped
    pool.write_bytes(bytes(data))
    with mirrored(tmp_path, root, lan) as (_upstream, mirror, _admin):
        apt = attendee_apt(tmp_path / "apt", mirror, signer)
        assert apt.run("update", argv=lan.argv([])).returncode == 0
        want = hashlib.sha256(made[filename]).hexdigest()
        got = hashlib.sha256(data).hexdigest()
        said = (
            f"E: Failed to fetch {mirror.url}debian/pool/main/l/libretreatkit-hello-common/"
            f"{filename}  504  upstream sent bad bytes for {filename}: sha256 mismatch:"
            f" expected {want}, got {got}"
        )
        first = apt.run("install", "-y", "libretreatkit-hello-common", argv=lan.argv([]))
        assert f"{said} [IP: {lan.host} " in first.stderr, first.stderr
        again = apt.run("install", "-y", "libretreatkit-hello-common", argv=lan.argv([]))
        retry = rf"{re.escape(said)}; next try in \d+ s \[IP: "
        assert re.search(retry, again.stderr), again.stderr


def test_a_deb_rebuilt_upstream_under_its_name_is_fetched_again_and_offline_refused(
    tmp_path: Path, lan: Netns, signer: Signer
) -> None:
    """An archive rebuilds a .deb under the same file name and indexes it again. The
    copy held is not the file the new Packages names (apt: `File has unexpected size
    ... Mirror sync in progress?`, for good, once the mirror served it): it is fetched
    again, and with the uplink gone it is refused in words, never served."""
    build = tmp_path / "build"
    made = {"hello-rk_1.0_all.deb": make_deb(build / "1", "hello-rk", "1.0")}
    root = tmp_path / "upstream"
    dists = root / "debian" / "dists" / SUITE

    def rebuild(pad: int) -> bytes:
        """The same name, other bytes, a new Release pushed an hour after the last."""
        made["hello-rk_1.0_all.deb"] = make_deb(build / str(pad), "hello-rk", "1.0", pad=pad)
        published = (dists / "InRelease").stat().st_mtime + 3600
        shutil.rmtree(dists)
        write_apt(root / "debian", SUITE, made, signer)
        for name in ("InRelease", "Release", "Release.gpg"):
            os.utime(dists / name, (published, published))
        return made["hello-rk_1.0_all.deb"]

    write_apt(root / "debian", SUITE, made, signer)
    pool = "/debian/pool/main/h/hello-rk/hello-rk_1.0_all.deb"
    with mirrored(tmp_path, root, lan, ttl=0) as (upstream, mirror, _admin):
        first = attendee_apt(tmp_path / "apt-1", mirror, signer)
        for command in (["update"], ["download", "hello-rk"]):
            assert first.run(*command, argv=lan.argv([])).returncode == 0
        rebuilt = rebuild(pad=100)
        second = attendee_apt(tmp_path / "apt-2", mirror, signer)
        for command in (["update"], ["download", "hello-rk"]):
            done = second.run(*command, argv=lan.argv([]))
            assert done.returncode == 0, (done.stdout, done.stderr)
            assert "W:" not in done.stderr and "E:" not in done.stderr, done.stderr
        assert (second.state / "download" / "hello-rk_1.0_all.deb").read_bytes() == rebuilt
        assert fetched(upstream.url)[pool] == 2
        rebuild(pad=200)
        third = attendee_apt(tmp_path / "apt-3", mirror, signer)
        assert third.run("update", argv=lan.argv([])).returncode == 0
        upstream.stop()
        tries = [third.run("download", "hello-rk", argv=lan.argv([])) for _ in range(2)]
        assert [t.returncode for t in tries] == [100, 100], [t.stderr for t in tries]
        assert not (third.state / "download" / "hello-rk_1.0_all.deb").exists()
        said = (
            f"E: Failed to fetch {mirror.url}debian/pool/main/h/hello-rk/hello-rk_1.0_all.deb"
            "  504  hello-rk_1.0_all.deb changed upstream and the mirror holds only its old"
            f" copy; upstream {upstream.url.split('/')[2]} is down ("
        )
        assert said in tries[1].stderr, tries[1].stderr


def test_a_packages_file_cannot_name_a_deb_after_another_index(
    tmp_path: Path, lan: Netns, signer: Signer
) -> None:
    """A Packages file (a third-party archive's, or a forgery over a plain-http uplink:
    the mirror checks no signature) names a .deb `by-hash/sha256/H`, H the hash of
    another component's Packages.xz: the path the mirror keeps that index by. One
    `apt-get download` of it replaced that index for every client of the origin, and
    every later `apt-get update` with that component failed `File has unexpected size`."""
    root, build = tmp_path / "upstream", tmp_path / "build"
    archive, dists = root / "debian", root / "debian" / "dists" / SUITE
    hello, evil = make_deb(build, "hello-rk", "1.0"), make_deb(build, "evil-rk", "6.6")
    (archive / "pool/contrib/h/hello-rk").mkdir(parents=True)
    (archive / "pool/contrib/h/hello-rk/hello-rk_1.0_all.deb").write_bytes(hello)

    def stanza(package: str, filename: str, data: bytes) -> str:
        return (
            f"Package: {package}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t.invalid>"
            f"\nFilename: {filename}\nSize: {len(data)}\n"
            f"SHA256: {hashlib.sha256(data).hexdigest()}\nDescription: t\n\n"
        )

    contrib = stanza("hello-rk", "pool/contrib/h/hello-rk/hello-rk_1.0_all.deb", hello).encode()
    taken = hashlib.sha256(lzma.compress(contrib)).hexdigest()
    main = stanza("evil-rk", f"by-hash/sha256/{taken}", evil).encode()
    (archive / "by-hash/sha256").mkdir(parents=True)
    (archive / f"by-hash/sha256/{taken}").write_bytes(evil)
    indexes = {}
    for component, text in (("main", main), ("contrib", contrib)):  # apt wants both forms
        indexes[f"{component}/binary-{arch()}/Packages"] = text
        indexes[f"{component}/binary-{arch()}/Packages.xz"] = lzma.compress(text)
    for path, data in indexes.items():
        hashed = (dists / path).parent / "by-hash" / "SHA256"
        hashed.mkdir(parents=True, exist_ok=True)
        (dists / path).write_bytes(data)
        (hashed / hashlib.sha256(data).hexdigest()).write_bytes(data)
    release = [
        "Origin: t", f"Suite: {SUITE}", f"Codename: {SUITE}", f"Architectures: {arch()}",
        "Components: main contrib", "Date: Sat, 01 Jun 2024 08:00:00 UTC",
        "Acquire-By-Hash: yes", "SHA256:",
        *(f" {hashlib.sha256(d).hexdigest()} {len(d)} {p}" for p, d in indexes.items()),
    ]  # fmt: skip
    (dists / "Release").write_text("\n".join(release) + "\n")
    signer.sign(dists / "Release")
    with mirrored(tmp_path, root, lan) as (_upstream, mirror, _admin):
        first = attendee_apt(tmp_path / "apt-1", mirror, signer)
        done = first.run("update", argv=lan.argv([]))
        assert done.returncode == 0 and "E:" not in done.stderr, (done.stdout, done.stderr)
        done = first.run("download", "evil-rk", argv=lan.argv([]))
        said = f"{mirror.url}debian/by-hash/sha256/{taken}  404  not a path in an apt archive"
        assert said in done.stderr, done.stderr
        second = AptClient(tmp_path / "apt-2")
        shutil.copy(signer.keyring, second.state / "trusted.d" / "archive.gpg")
        second.sources(f"deb {mirror.url}debian {SUITE} main contrib")
        for command in (["update"], ["download", "hello-rk"]):
            done = second.run(*command, argv=lan.argv([]))
            assert done.returncode == 0, (done.stdout, done.stderr)
            assert "W:" not in done.stderr and "E:" not in done.stderr, done.stderr
        assert (second.state / "download" / "hello-rk_1.0_all.deb").read_bytes() == hello
