"""An attendee without bob installs it from the mirror with no uplink: the line the page on
`/` prints, run on an attendee's machine (a network namespace) after the organiser seeded
the kit's own dependencies with the command /status gave (`retreatkit mirror seed --kit`)
and the uplink went. Before that seed the page offers no line: it offered one that failed
(`textual-serve was not found in the package registry`, or offline a 504 for segno).

The upstream index is built from the distributions installed here, packed back into
wheels, so the test needs no network; the kit's own wheel is the one the mirror builds
from what is running.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from retreatkit.mirror.seedfiles import running_kit
from retreatkit.mirror.testing import (
    Netns,
    make_wheel,
    said,
    start_mirror,
    start_upstream,
    wheel_from_installed,
    write_pypi,
)
from tests.e2e.mirror_attendee import UV, attendee, page_block

pytestmark = pytest.mark.e2e


lan = attendee("k")


def page(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as r:
        text: str = r.read().decode()
    return text


def status(admin: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{admin}/status", timeout=30) as r:
        doc: dict[str, Any] = json.load(r)["mirror"]
    return doc


def test_attendees_install_bob_from_the_mirror_with_no_uplink(tmp_path: Path, lan: Netns) -> None:
    root = tmp_path / "upstream"
    deps = running_kit().wants
    index = {w.name: [wheel_from_installed(w.name)] for w in deps}
    index["course-pkg"] = [make_wheel("course-pkg", "99.0")]  # a name taken on the public index
    write_pypi(root, index)
    upstream = start_upstream(root)
    mirror, admin = start_mirror(tmp_path / "store", pypi=f"{upstream.url}simple/",
                             listen=f"{lan.host}:0", ttl=0)  # fmt: skip
    try:
        home = tmp_path / "home"
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_"))},
               "HOME": str(home), "XDG_STATE_HOME": str(home / "state")}  # fmt: skip
        # the kit's wheel served, nothing it needs held: no line that would fail, and the
        # organiser told what to run, at the start and on /status (the dashboard's alarms)
        said(mirror, r"^Mirror local index: ")
        home_page = page(mirror.url)
        assert "uv tool install" not in home_page and "pipx" not in home_page
        assert "cannot be installed from this mirror yet" in home_page
        lacks = rf"the store lacks {len(deps)} of the {len(deps)} distributions"
        assert re.search(lacks, said(mirror, r"^Mirror: bob is not offered ").string)
        [warning] = [w for w in status(admin)["warnings"] if w.startswith("bob is not offered")]
        command = re.fullmatch(r"bob is not offered on the attendee page: .*; with the uplink"
                               r" up, run `(retreatkit mirror seed [^`]+)`", warning)  # fmt: skip
        assert command is not None, warning
        assert command[1] == f"retreatkit mirror seed --kit --mirror {mirror.url.rstrip('/')}"
        argv = [sys.executable, "-m", "retreatkit.cli.main", *shlex.split(command[1])[1:]]
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, (done.stdout, done.stderr)
        # a wheel's metadata file asked after its wheel is stored is made from the wheel:
        # already there, nothing more over the uplink
        seeded_line = r"Seeded (\d+) files: (\d+) fetched \(.*?\), (\d+) already there, 0 failed"
        seeded = re.match(seeded_line, done.stdout)
        assert seeded is not None, done.stdout
        total, fetched, already = map(int, seeded.groups())
        assert total == fetched + already == 2 * len(deps) and fetched >= len(deps)
        # the page checks what the store holds as it is asked; /status then gives that
        # verdict (it starts a check when the store changed, and says the last one)
        assert "uv tool install" in page(mirror.url)
        assert not [w for w in status(admin)["warnings"] if w.startswith("bob")]
        upstream.stop()  # the venue: no uplink

        uv_line, pipx_line = page_block(mirror.url, "bob")
        assert pipx_line.endswith(" pipx install retreatkit")
        words = shlex.split(uv_line)
        assert words[0] == "UV_PYTHON_DOWNLOADS=never" and words[1:3] == ["uv", "tool"]
        tools = tmp_path / "tools"
        attendee = {
            **env, "UV_PYTHON_DOWNLOADS": "never", "UV_TOOL_DIR": str(tools / "envs"),
            "UV_TOOL_BIN_DIR": str(tools / "bin"), "UV_CACHE_DIR": str(tools / "cache"),
        }  # fmt: skip
        install = [UV, *words[2:], "--python", sys.executable]
        done = subprocess.run(lan.argv(install), capture_output=True, text=True,
                              env=attendee, timeout=300)  # fmt: skip
        assert done.returncode == 0, (done.stdout, done.stderr)
        bob = subprocess.run([str(tools / "bin" / "bob"), "--help"], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert bob.returncode == 0 and "send" in bob.stdout, bob

        # the course's own package, published by the organiser through the admin endpoint
        course = tmp_path / "course_pkg-0.1-py3-none-any.whl"
        course.write_bytes(make_wheel("course-pkg", "0.1")[1])
        organiser = {**env, "XDG_STATE_HOME": str(tmp_path / "store-home" / "state")}
        add = [sys.executable, "-m", "retreatkit.cli.main", "mirror", "add", "--admin", admin,
               str(course)]  # fmt: skip
        done = subprocess.run(add, capture_output=True, text=True, env=organiser, timeout=60)
        assert (done.returncode, done.stdout) == (
            0,
            f"{course.name}: published as course-pkg 0.1\n",
        )
        pip_once = page_block(mirror.url, "pip")[0].replace("PACKAGE", "course-pkg")
        target = ["--no-cache-dir", "--target", str(tmp_path / "course")]
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check",
               *shlex.split(pip_once)[1:], *target]  # fmt: skip
        done = subprocess.run(lan.argv(pip), capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, (done.stdout, done.stderr)
        installed = (tmp_path / "course" / "course_pkg" / "__init__.py").read_text()
        assert "VERSION = '0.1'" in installed  # never the public index's 99.0
    finally:
        mirror.stop()
        upstream.stop()
