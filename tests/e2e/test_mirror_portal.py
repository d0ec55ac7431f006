"""The uplink cut, and something else answering in its place: the venue's proxy or
portal, which answers 404 to everything, or its login page. Real pip, uv and opam on an
attendee's machine still install what the mirror holds: the pages it holds are served
stale, not taken from clients by that answer (pip said `No matching distribution found`
for a package it held, and after a 404 opam could not update its repository at all)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from retreatkit.mirror.testing import (
    Netns,
    Server,
    make_source_tarball,
    make_wheel,
    start_mirror,
    start_upstream,
    write_opam,
    write_pypi,
)
from tests.e2e.mirror_attendee import UV, attendee, page_block

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("opam") is None, reason="opam is not installed (.ci/run)"),
]
lan = attendee("p", prefix="rkport")


LOGIN = "<html><head><title>Wi-Fi</title></head><body><form>Log in</form></body></html>\n"


def portal(root: Path, port: int, login: bool) -> Server:
    """A server on the upstream's port that has nothing: 404 to every request, or its
    login page (200) for the pages the mirror asks."""
    root.mkdir()
    if login:
        for page in ("simple/held/index.html", "opam/index.tar.gz"):
            (root / page).parent.mkdir(parents=True, exist_ok=True)
            (root / page).write_text(LOGIN)
    return start_upstream(root, port)


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, **kw)


@pytest.mark.parametrize("login", [False, True], ids=["404", "login-page"])
def test_what_the_mirror_holds_installs_while_a_portal_answers(
    tmp_path: Path, lan: Netns, login: bool
) -> None:
    root = tmp_path / "upstream"
    write_pypi(root, {"held": [make_wheel("held", "1.0")]}, as_json=True)
    upstream = start_upstream(root)
    u = upstream.url
    packages = {f"{n}.1.0": make_source_tarball(n, "1.0") for n in ("held", "lost")}
    write_opam(root / "opam", f"{u}opam/", packages)
    mirror, _ = start_mirror(tmp_path / "store", pypi=f"{u}simple/", opam=f"{u}opam", ttl=0,
                             listen=f"{lan.host}:0")  # fmt: skip
    stand_in = None
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "OPAM"))}
        env.update(HOME=str(tmp_path / "home"), OPAMROOT=str(tmp_path / "opamroot"), OPAMYES="1")
        pip_line = shlex.split(page_block(mirror.url, "pip")[0].replace("PACKAGE", "held"))
        uv_line = shlex.split(page_block(mirror.url, "uv")[0].replace("PACKAGE", "held"))
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", *pip_line[1:],
               "--no-cache-dir", "--target"]  # fmt: skip
        uv = [UV, *uv_line[1:], "--no-cache", "--python", sys.executable, "--target"]
        opam = f"{mirror.url}opam"
        for step in (
            [*pip, str(tmp_path / "online")],
            ["opam", "init", "--bare", "--no-setup", "--disable-sandboxing", "default", opam],
            ["opam", "switch", "create", "demo", "--empty"],
            ["opam", "source", "held.1.0", "--dir", str(tmp_path / "held-online")],
        ):
            done = run(lan.argv(step), env=env)
            assert done.returncode == 0, (step, done.stdout, done.stderr)

        upstream.stop()
        port = urlsplit(u).port
        assert port is not None
        stand_in = portal(tmp_path / "portal", port, login)
        for step in (
            [*pip, str(tmp_path / "pip")],
            [*uv, str(tmp_path / "uv")],
            ["opam", "update"],
            ["opam", "source", "held.1.0", "--dir", str(tmp_path / "held")],
        ):
            done = run(lan.argv(step), env=env)
            assert done.returncode == 0, (step, done.stdout, done.stderr)
        for target in ("pip", "uv"):
            assert (tmp_path / target / "held" / "__init__.py").is_file()
        lost = run(lan.argv(["opam", "source", "lost.1.0", "--dir", str(tmp_path / "lost")]),
                   env=env)  # fmt: skip
        assert lost.returncode != 0 and f"Download failed: {mirror.url}opam/cache/" in lost.stderr
        with urllib.request.urlopen(f"{stand_in.url}_stats", timeout=30) as r:
            asked = json.load(r)
        assert "/simple/held/" in asked and "/opam/index.tar.gz" in asked  # it was asked
        assert not any(k.startswith("opam ") for k in asked)  # by the mirror alone
    finally:
        mirror.stop()
        upstream.stop()
        if stand_in is not None:
            stand_in.stop()
