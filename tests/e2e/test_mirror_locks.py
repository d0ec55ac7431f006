"""Lock and requirements files that name another index, met by real uv and pip on an
attendee's machine, as the page on `/` tells attendees to handle them: `uv sync --frozen`
goes where the lock says, and a requirements file's own `--index-url` wins over pip's."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from retreatkit.mirror.testing import (
    Netns,
    make_wheel,
    start_mirror,
    start_upstream,
    write_pypi,
)
from tests.e2e.mirror_attendee import UV, attendee, page_block

pytestmark = pytest.mark.e2e
lan = attendee("l", prefix="rklock")


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    home.mkdir(parents=True, exist_ok=True)
    return {**env, "HOME": str(home), "UV_NO_CACHE": "1", "UV_PYTHON_DOWNLOADS": "never",
            "XDG_CONFIG_HOME": str(home / ".config"), **extra}  # fmt: skip


def run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


def test_a_lock_and_a_requirements_file_made_against_another_index(
    tmp_path: Path, lan: Netns
) -> None:
    root = tmp_path / "upstream"
    write_pypi(
        root,
        {
            "demo-pkg": [make_wheel("demo-pkg", "1.0", ("demo-dep",))],
            "demo-dep": [make_wheel("demo-dep", "1.0"), make_wheel("demo-dep", "2.0")],
        },
        as_json=True,
    )
    upstream = start_upstream(root)  # on this machine's loopback: out of the attendee's reach
    index = f"{upstream.url}simple/"
    mirror, _ = start_mirror(tmp_path / "store", pypi=index, listen=f"{lan.host}:0")
    try:
        project = tmp_path / "course"
        project.mkdir()
        (project / "pyproject.toml").write_text(
            '[project]\nname = "course"\nversion = "0.1"\nrequires-python = ">=3.8"\n'
            'dependencies = ["demo-pkg", "demo-dep<2"]\n'
        )
        home = tmp_path / "home"
        made = run([UV, "lock", "--default-index", index], env_for(home), project)
        assert made.returncode == 0, made.stderr
        assert index in (project / "uv.lock").read_text()

        # the attendee sets what the page says, then syncs the lock made elsewhere
        with urllib.request.urlopen(mirror.url, timeout=30) as r:
            said = r.read().decode()
        assert "<code>uv sync</code>, not <code>--frozen</code>, moves it here" in said
        assert "a requirements file's own <code>--index-url</code> line wins" in said
        uv_lines = page_block(mirror.url, "uv")
        name, _, value = shlex.split(uv_lines[1])[1].partition("=")
        env = env_for(home, **{name: value})
        python = ["--python", sys.executable]
        frozen = run(lan.argv([UV, "sync", "--frozen", *python]), env, project)
        assert frozen.returncode != 0 and upstream.url in frozen.stderr, frozen.stderr
        synced = run(lan.argv([UV, "sync", *python]), env, project)
        assert synced.returncode == 0, synced.stderr
        assert "+ demo-dep==1.0" in synced.stderr  # the lock's versions, from the mirror
        lock = (project / "uv.lock").read_text()
        assert value in lock and index not in lock

        # a requirements file naming its own index: it wins until its line goes
        requirements = tmp_path / "requirements.txt"
        pinned = "demo-pkg==1.0\ndemo-dep==1.0\n"
        requirements.write_text(f"--index-url {index}\n{pinned}")
        pip_line = shlex.split(page_block(mirror.url, "pip")[0])
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--retries", "0"]
        argv = [*pip, *pip_line[1:-1], "--no-cache-dir", "-r", str(requirements)]
        for kept in (True, False):
            target = tmp_path / f"target-{kept}"
            got = run(lan.argv([*argv, "--target", str(target)]), env_for(home), tmp_path)
            if kept:
                assert got.returncode != 0 and index in got.stderr + got.stdout, got.stdout
                requirements.write_text(pinned)  # as the page says: remove it
            else:
                assert got.returncode == 0, got.stderr
                assert (target / "demo_dep").is_dir()
    finally:
        mirror.stop()
        upstream.stop()
