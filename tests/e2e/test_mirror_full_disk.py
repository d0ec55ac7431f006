"""A real mirror whose store's disk fills up (a tmpfs this test mounts and fills), and the
real clients of attendees on the LAN: apt-get, pip and npm are each told, in the line
they print, that the mirror's disk is full; the organiser reads it once in the log and
on /status, however many clients are refused.

apt-get follows any failed first InRelease but a 404 with its own `The repository ...
is not signed.`: the mirror's line, printed first, says that this is only the disk."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retreatkit import units
from retreatkit.mirror.testing import (
    Netns,
    Server,
    make_wheel,
    pip_download,
    start_mirror,
    start_upstream,
    write_pypi,
)
from retreatkit.mirror.testrepos import Signer, make_deb, npm_pack, write_apt, write_npm
from retreatkit.testing import fill, scratch_disk
from tests.e2e.mirror_attendee import attendee, attendee_apt, npm_env

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="a small tmpfs to fill needs root"),
]
APT = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("apt-get", "dpkg-scanpackages", "gpg")),
    reason="apt-get, dpkg-dev and gpg are needed (.ci/run installs them)",
)
SUITE = "bookworm"
FULL = r"full: \d+ B free"  # what is left of a filled tmpfs: nothing, to the page
STATUS_LINE = r"disk full: \d+ B free; new files are not kept, cached ones are still served"

lan = attendee("f", prefix="aptfull")


@pytest.fixture
def disk() -> Iterator[Path]:
    with scratch_disk("8m") as mounted:
        yield mounted


def status(admin: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{admin}/status", timeout=30) as r:
        found: dict[str, Any] = json.load(r)["mirror"]
    return found


def log_of(mirror: Server) -> list[str]:
    """Every line the mirror wrote, once it has stopped."""
    mirror.process.popen.terminate()
    return mirror.process.finish()[1]


def said_full(lines: list[str]) -> list[str]:
    return [line for line in lines if re.search(rf" WARNING {STATUS_LINE} \(", line)]


def archive(tmp_path: Path, signer: Signer) -> tuple[Path, bytes]:
    deb = make_deb(tmp_path / "build", "hello-rk", "1.0", pad=200_000)
    root = tmp_path / "upstream"
    write_apt(root / "debian", SUITE, {"hello-rk_1.0_all.deb": deb}, signer)
    return root, deb


@APT
def test_a_first_apt_update_on_a_full_disk_is_told_the_disk_is_full(
    tmp_path: Path, lan: Netns, signer: Signer, disk: Path
) -> None:
    """It was `507  the mirror's disk is full (its catalog cannot grow)`, or `(writing a
    download)` with a few pages left, then apt's `is not signed.`, and the organiser's log
    said nothing of it."""
    root, _ = archive(tmp_path, signer)
    upstream = start_upstream(root)
    try:
        mirror, admin = start_mirror(
            disk / "store", apt={"debian": upstream.url + "debian"}, listen=f"{lan.host}:0"
        )
        try:
            fill(disk)
            url = f"{mirror.url}debian/dists/{SUITE}/InRelease"
            port = mirror.url.rstrip("/").rsplit(":", 1)[1]
            for attempt in ("first", "again"):
                apt = attendee_apt(tmp_path / f"apt-{attempt}", mirror, signer)
                done = apt.run("update", argv=lan.argv([]))
                assert done.returncode == 100, (done.stdout, done.stderr)
                line = (
                    rf"E: Failed to fetch {re.escape(url)}  507  the mirror's disk is {FULL},"
                    rf" so it cannot keep the Release of debian/{SUITE}; apt's 'not signed'"
                    rf" that follows means only this \[IP: {re.escape(lan.host)} {port}\]\n"
                    rf"E: The repository '{re.escape(mirror.url)}debian {SUITE} InRelease'"
                    r" is not signed\.\n"
                )
                assert re.match(line, done.stderr), done.stderr
            found = status(admin)
        finally:
            lines = log_of(mirror)
    finally:
        upstream.stop()
    assert found["store"]["disk_full"] is True
    assert any(re.fullmatch(STATUS_LINE, w) for w in found["warnings"]), found["warnings"]
    assert len(said_full(lines)) == 1, lines
    assert f" (apt debian/{SUITE}: the mirror's disk is full (" in said_full(lines)[0], lines


@APT
def test_on_a_disk_that_fills_apt_keeps_its_release_and_a_deb_is_refused_for_the_disk(
    tmp_path: Path, lan: Netns, signer: Signer, disk: Path
) -> None:
    """The upstream signs its Release again (a new Date, the same indexes) once the disk
    is full: the one held is served, not a 507 for the new one (apt then said `The
    repository ... is no longer signed.`). A .deb is refused in a line that names the
    disk, and however many are refused, the log says it once."""
    root, deb = archive(tmp_path, signer)
    upstream = start_upstream(root)
    try:
        mirror, admin = start_mirror(
            disk / "store", apt={"debian": upstream.url + "debian"}, ttl=0,
            listen=f"{lan.host}:0",
        )  # fmt: skip
        try:
            apt = attendee_apt(tmp_path / "apt", mirror, signer)
            assert apt.run("update", argv=lan.argv([])).returncode == 0
            fill(disk)
            release = root / "debian" / "dists" / SUITE / "Release"
            text = release.read_text().replace("Date: Sat, 01 Jun", "Date: Sun, 02 Jun")
            release.write_text(text)
            signer.sign(release)
            done = apt.run("update", argv=lan.argv([]))
            assert done.returncode == 0, (done.stdout, done.stderr)
            assert "E:" not in done.stderr and "W:" not in done.stderr, done.stderr
            deb_url = f"{mirror.url}debian/pool/main/h/hello-rk/hello-rk_1.0_all.deb"
            size = re.escape(units.size(len(deb)))
            for _ in range(2):
                done = apt.run("download", "hello-rk", argv=lan.argv([]))
                assert done.returncode == 100, (done.stdout, done.stderr)
                line = (
                    rf"E: Failed to fetch {re.escape(deb_url)}  507  the mirror's disk has no"
                    rf" room for hello-rk_1.0_all\.deb \({size}\): \d+ B free \[IP: "
                )
                assert re.match(line, done.stderr), done.stderr
            found = status(admin)
        finally:
            lines = log_of(mirror)
    finally:
        upstream.stop()
    held_back = (
        f"apt debian/{SUITE}: still serving its last complete Release; the upstream's newer"
        rf" one is held back: the mirror's disk is {FULL}"
    )
    assert any(re.fullmatch(held_back, w) for w in found["warnings"]), found["warnings"]
    assert any(re.fullmatch(STATUS_LINE, w) for w in found["warnings"]), found["warnings"]
    assert len(said_full(lines)) == 1, lines
    assert not [line for line in lines if "fetch of hello-rk_1.0_all.deb" in line], lines


def test_a_first_pip_download_on_a_full_disk_is_told_the_disk_is_full(
    tmp_path: Path, lan: Netns, disk: Path
) -> None:
    """The page is served from memory, the catalog having no room for it: its files were
    then in no index the mirror had read (`404 Client Error: not in any index the mirror
    has read`)."""
    root = tmp_path / "upstream"
    wheel = make_wheel("one", "1.0", pad=100_000)
    write_pypi(root, {"one": [wheel]})
    upstream = start_upstream(root)
    try:
        mirror, _ = start_mirror(
            disk / "store", pypi=f"{upstream.url}simple/", listen=f"{lan.host}:0"
        )
        try:
            fill(disk)
            got = pip_download(f"{mirror.url}pypi/simple/", "one", tmp_path / "got", tmp_path, lan)
        finally:
            mirror.stop()
    finally:
        upstream.stop()
    assert got.returncode == 1
    line = (
        rf"ERROR: 507 Server Error: the mirror's disk has no room for {re.escape(wheel[0])}"
        r"\.metadata \(\d+ B\): \d+ B free for url: "
    )
    assert re.search(line, got.stderr), got.stderr


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is needed (node and npm)")
def test_a_first_npm_install_on_a_full_disk_is_told_the_disk_is_full(
    tmp_path: Path, lan: Netns, disk: Path
) -> None:
    """As pip's: `npm error 404 not in any index the mirror has read`. npm's own retries
    of a 5xx (about 70 s) are turned off: the line is the same."""
    env = {**npm_env(tmp_path / "home"), "npm_config_fetch_retries": "0"}
    package = tmp_path / "src"
    package.mkdir()
    manifest = {"name": "leftpad-rk", "version": "1.0.0", "license": "MIT"}
    (package / "package.json").write_text(json.dumps(manifest))
    made = tmp_path / "packed"
    made.mkdir()
    tarball = npm_pack(package, made, env)
    root = tmp_path / "upstream"
    upstream = start_upstream(root)
    try:
        write_npm(root, upstream.url, [tarball.read_bytes()])
        mirror, _ = start_mirror(disk / "store", npm=upstream.url, listen=f"{lan.host}:0")
        try:
            fill(disk)
            project = tmp_path / "app"
            project.mkdir()
            (project / "package.json").write_text('{"name": "app", "version": "1.0.0"}')
            argv = ["npm", "install", "--registry", f"{mirror.url}npm/", "leftpad-rk"]
            done = subprocess.run(
                lan.argv(argv), cwd=project, capture_output=True, text=True, timeout=180,
                env={**env, "npm_config_cache": str(tmp_path / "cache")},
            )  # fmt: skip
        finally:
            mirror.stop()
    finally:
        upstream.stop()
    assert done.returncode != 0
    line = (
        r"npm error 507 the mirror's disk has no room for leftpad-rk-1\.0\.0\.tgz \(\d+ B\):"
        rf" \d+ B free - GET {re.escape(mirror.url)}npm/leftpad-rk/-/leftpad-rk-1\.0\.0\.tgz"
    )
    assert re.search(line, done.stderr), done.stderr
