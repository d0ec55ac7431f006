"""Real pip, uv and opam install through a real mirror from a real (local) upstream."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from retreatkit.mirror.testing import (
    Server,
    make_source_tarball,
    make_wheel,
    start_mirror,
    start_upstream,
    write_opam,
    write_pypi,
)

pytestmark = pytest.mark.e2e
TIMEOUT = 180


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=30) as r:
        doc: dict[str, object] = json.load(r)
    return doc


def clean_env(**extra: str) -> dict[str, str]:
    """No pip/uv/opam settings from this machine: the clients see only the mirror."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "OPAM"))}
    return {**env, "PIP_CONFIG_FILE": os.devnull, **extra}


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    root = tmp_path / "upstream"
    write_pypi(
        root,
        {
            "demo-pkg": [make_wheel("demo-pkg", "1.0", ("demo-dep",))],
            "demo-dep": [make_wheel("demo-dep", "2.0", pad=200_000)],
        },
    )
    server = start_upstream(root)
    yield server, root
    server.stop()


def pip_install(index: str, target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--isolated", "install", "--no-cache-dir",
         "--disable-pip-version-check", "--target", str(target), "--index-url", index, "demo-pkg"],
        capture_output=True, text=True, timeout=TIMEOUT, env=clean_env(),
    )  # fmt: skip


def uv_install(index: str, target: Path) -> subprocess.CompletedProcess[str]:
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    return subprocess.run(
        [uv, "pip", "install", "--no-config", "--no-cache", "--python", sys.executable,
         "--target", str(target), "--index-url", index, "demo-pkg"],
        capture_output=True, text=True, timeout=TIMEOUT, env=clean_env(),
    )  # fmt: skip


def test_pip_and_uv_install_then_upstream_gone(
    upstream: tuple[Server, Path], tmp_path: Path
) -> None:
    server, _ = upstream
    mirror, admin = start_mirror(tmp_path / "store", pypi=f"{server.url}simple/", ttl=0)
    try:
        index = f"{mirror.url}pypi/simple/"
        first = pip_install(index, tmp_path / "t1")
        assert first.returncode == 0, first.stderr
        assert (tmp_path / "t1" / "demo_dep" / "__init__.py").is_file()
        status = get_json(f"{admin}/status")["mirror"]
        assert isinstance(status, dict)
        fetched_once = status["upstream_bytes"]

        with_uv = uv_install(index, tmp_path / "t2")
        assert with_uv.returncode == 0, with_uv.stderr
        assert (tmp_path / "t2" / "demo_pkg" / "__init__.py").is_file()
        status = get_json(f"{admin}/status")["mirror"]
        assert isinstance(status, dict)
        assert status["upstream_bytes"] == fetched_once  # the files crossed the uplink once
        assert status["bytes_from_cache"] > 200_000

        server.stop()  # the uplink is gone: indexes go stale, files stay
        for install, target in ((pip_install, "t3"), (uv_install, "t4")):
            offline = install(index, tmp_path / target)
            assert offline.returncode == 0, offline.stderr
            assert (tmp_path / target / "demo_dep" / "__init__.py").is_file()
        status = get_json(f"{admin}/status")["mirror"]
        assert isinstance(status, dict)
        assert status["stale_served"] >= 4
    finally:
        mirror.stop()


@pytest.mark.skipif(
    shutil.which("opam") is None, reason="opam is not installed (.ci/run installs it)"
)
def test_opam_fetches_archives_through_the_cache(tmp_path: Path) -> None:
    root = tmp_path / "upstream"
    root.mkdir()
    server = start_upstream(root)
    try:
        write_opam(
            root / "opam", f"{server.url}opam/", {"hello.1.0": make_source_tarball("hello", "1.0")}
        )
        mirror, admin = start_mirror(tmp_path / "store", opam=f"{server.url}opam", ttl=0)
        try:
            for round_ in ("online", "offline"):
                opamroot = tmp_path / f"opamroot-{round_}"
                env = clean_env(OPAMROOT=str(opamroot), OPAMYES="1", HOME=str(tmp_path))
                steps = [
                    ["opam", "init", "--bare", "--no-setup", "--disable-sandboxing",
                     "default", f"{mirror.url}opam"],
                    ["opam", "switch", "create", "demo", "--empty"],
                    ["opam", "source", "hello.1.0", "--dir", str(tmp_path / f"src-{round_}")],
                ]  # fmt: skip
                for step in steps:
                    done = subprocess.run(
                        step, capture_output=True, text=True, timeout=TIMEOUT, env=env
                    )
                    assert done.returncode == 0, (step, done.stdout, done.stderr)
                assert (tmp_path / f"src-{round_}" / "README").read_text() == "hello 1.0\n"
                if round_ == "online":
                    stats = get_json(f"{server.url}_stats")
                    # the archive came from upstream once, for the mirror, never for opam directly
                    assert stats.get("/opam/archives/hello-1.0.tar.gz") == 1
                    status = get_json(f"{admin}/status")["mirror"]
                    assert isinstance(status, dict) and status["upstream_fetches"] == 1
                    server.stop()
        finally:
            mirror.stop()
    finally:
        server.stop()
