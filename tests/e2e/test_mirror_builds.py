"""An sdist in the course's lock, built at the venue with no uplink: `retreatkit mirror
seed` fetches what builds it (its build requirements are in no lock file), and real pip
(build isolation, `--require-hashes`) and uv (`uv sync`) on an attendee's machine build
it from the mirror alone."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from retreatkit.mirror.testing import (
    Netns,
    make_backend,
    make_sdist,
    make_wheel,
    start_mirror,
    start_upstream,
    write_pypi,
)
from tests.e2e.mirror_attendee import UV, attendee, page_block

pytestmark = pytest.mark.e2e
lan = attendee("b", prefix="rkbld")


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, **kw)
    assert done.returncode == 0, (argv, done.stdout, done.stderr)
    return done


def test_an_sdist_seeded_before_the_event_builds_with_no_uplink(tmp_path: Path, lan: Netns) -> None:
    root = tmp_path / "upstream"
    write_pypi(
        root,
        {
            "course-pkg": [make_wheel("course-pkg", "1.0", ("needs-build",))],
            "needs-build": [make_sdist("needs-build", "1.0", ("demo-backend",))],
            "demo-backend": [make_backend("demo-backend", "1.0")],
        },
        as_json=True,
    )
    upstream = start_upstream(root)
    index = f"{upstream.url}simple/"
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env.update(HOME=str(home), UV_NO_CACHE="1", UV_PYTHON_DOWNLOADS="never")
    project = tmp_path / "course"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[project]\nname = "course"\nversion = "0.1"\nrequires-python = ">=3.8"\n'
        'dependencies = ["course-pkg"]\n'
    )
    mirror = None
    try:
        # at home: the organiser locks the course and seeds a store from the lock
        run([UV, "lock", "--default-index", index], env=env, cwd=project)
        run([UV, "export", "--format", "requirements-txt", "--no-emit-project", "-o",
             str(tmp_path / "requirements.txt")], env=env, cwd=project)  # fmt: skip
        store = tmp_path / "store"
        seeded = run(
            [sys.executable, "-m", "retreatkit.cli.main", "mirror", "seed", "--store", str(store),
             "--pypi", index, str(project / "uv.lock")], env=env,
        ).stdout  # fmt: skip
        assert "  note: demo-backend: took 1.0 to build needs_build-1.0.tar.gz\n" in seeded
        upstream.stop()  # the venue: no uplink from here on

        mirror, _ = start_mirror(store, pypi=index, ttl=0, listen=f"{lan.host}:0")
        pip_line = shlex.split(page_block(mirror.url, "pip")[0])
        target = tmp_path / "pip-target"
        run(lan.argv([sys.executable, "-m", "pip", "--disable-pip-version-check",
                      *pip_line[1:-1], "--no-cache-dir", "--require-hashes", "--target",
                      str(target), "-r", str(tmp_path / "requirements.txt")]), env=env)  # fmt: skip
        assert (target / "needs_build" / "__init__.py").read_text() == "VERSION = '1.0'\n"

        name, _, value = shlex.split(page_block(mirror.url, "uv")[1])[1].partition("=")
        synced = run(lan.argv([UV, "sync", "--python", sys.executable]),
                     env={**env, name: value}, cwd=project)  # fmt: skip
        assert "+ needs-build==1.0" in synced.stderr
    finally:
        if mirror is not None:
            mirror.stop()
        upstream.stop()
