"""Real npm through a real mirror from a local registry serving packuments and tarballs made
by `npm pack`, then with the registry stopped.

npm runs on an attendee's machine (a network namespace, the mirror at a non-loopback
address of this machine) with an empty user configuration and a cache of its own per run,
so nothing comes from this machine's npm settings or an earlier run. It runs the lines the
page on `/` prints; only the test's own cache is added.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from retreatkit.mirror.testing import Netns, start_mirror, start_upstream
from retreatkit.mirror.testrepos import make_npm_tarball, npm_pack, write_npm
from tests.e2e.mirror_attendee import attendee, npm_env, page_block

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("npm") is None, reason="npm is needed (node and npm)"),
]


lan = attendee("n")


def package(folder: Path, name: str, version: str, deps: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True)
    manifest = {"name": name, "version": version, "main": "index.js", "license": "MIT"}
    if deps:
        manifest["dependencies"] = deps  # type: ignore[assignment]
    (folder / "package.json").write_text(json.dumps(manifest))
    (folder / "index.js").write_text(f"module.exports = {json.dumps(name + '@' + version)};\n")
    return folder


def test_npm_installs_through_the_mirror_online_then_offline(tmp_path: Path, lan: Netns) -> None:
    env = npm_env(tmp_path / "home")
    made = tmp_path / "packed"
    made.mkdir()
    tarballs = [
        npm_pack(package(tmp_path / "src" / "pad", "leftpad-rk", "1.0.0"), made, env),
        npm_pack(
            package(tmp_path / "src" / "util", "@rk/util", "2.0.0", {"leftpad-rk": "^1.0.0"}),
            made,
            env,
        ),
    ]
    root = tmp_path / "upstream"
    upstream = start_upstream(root)
    write_npm(root, upstream.url, [t.read_bytes() for t in tarballs])
    mirror, _admin = start_mirror(tmp_path / "store", npm=upstream.url, listen=f"{lan.host}:0")
    try:
        once, config_set = page_block(mirror.url, "npm")
        assert once == f"npm install --registry {mirror.url}npm/ PACKAGE"
        for round_ in ("online", "offline"):
            for how in ("once", "config"):
                project = tmp_path / f"app-{round_}-{how}"
                project.mkdir()
                (project / "package.json").write_text('{"name": "app", "version": "1.0.0"}')
                run_env = {**env, "npm_config_cache": str(tmp_path / f"cache-{round_}-{how}")}
                lines = [once] if how == "once" else [config_set, "npm install PACKAGE"]
                for line in lines:
                    argv = shlex.split(line.replace("PACKAGE", "@rk/util"))
                    done = subprocess.run(
                        lan.argv(argv), cwd=project, env=run_env, capture_output=True,
                        text=True, timeout=180,
                    )  # fmt: skip
                    assert done.returncode == 0, (round_, line, done.stdout, done.stderr)
                modules = project / "node_modules"
                util = json.loads((modules / "@rk" / "util" / "package.json").read_text())
                pad = json.loads((modules / "leftpad-rk" / "package.json").read_text())
                assert (util["version"], pad["version"]) == ("2.0.0", "1.0.0")
                lock = json.loads((project / "package-lock.json").read_text())
                resolved = lock["packages"]["node_modules/@rk/util"]["resolved"]
                assert resolved == f"{mirror.url}npm/@rk/util/-/util-2.0.0.tgz"
            if round_ == "online":
                with urllib.request.urlopen(f"{upstream.url}_stats", timeout=30) as r:
                    counts = json.load(r)
                assert counts["/leftpad-rk/-/leftpad-rk-1.0.0.tgz"] == 1  # once, for everyone
                upstream.stop()
    finally:
        mirror.stop()
        upstream.stop()


def test_npm_is_told_the_upstream_is_down_for_a_version_the_mirror_does_not_hold(
    tmp_path: Path, lan: Netns
) -> None:
    """The uplink gone, packuments held: npm installs a version held; asked for one no
    held version meets (`one-rk@2` with 1.0.0 held), it said `No matching version found
    for one-rk@2`, as for a version that does not exist, and for a package none of whose
    tarballs is held it retried the tarball's 504 for over a minute. It is told at once
    that the upstream is down, and what the mirror holds."""
    root = tmp_path / "upstream"
    upstream = start_upstream(root)
    host = urlsplit(upstream.url).netloc
    made = [("one-rk", "1.0.0"), ("one-rk", "2.0.0"), ("two-rk", "1.0.0")]
    write_npm(root, upstream.url, [make_npm_tarball(name, v) for name, v in made])
    mirror, _admin = start_mirror(tmp_path / "store", npm=upstream.url, listen=f"{lan.host}:0")
    env = npm_env(tmp_path / "home")

    def npm(project: str, *args: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / project).mkdir()
        (tmp_path / project / "package.json").write_text('{"name": "app", "version": "1.0.0"}')
        argv = ["npm", *args, "--registry", f"{mirror.url}npm/",
                f"--cache={tmp_path / project / 'cache'}"]  # fmt: skip
        return subprocess.run(
            lan.argv(argv), cwd=tmp_path / project, env=env, capture_output=True, text=True,
            timeout=180,
        )  # fmt: skip

    try:
        assert npm("online", "install", "one-rk@1").returncode == 0  # 1.0.0 held
        assert npm("looked", "view", "two-rk").returncode == 0  # its packument alone
        upstream.stop()
        with pytest.raises(urllib.error.HTTPError) as refused:  # now known down
            urllib.request.urlopen(f"{mirror.url}npm/three-rk", timeout=30)
        refused.value.close()
        assert refused.value.code == 504
        two, one = npm("two", "install", "one-rk@2"), npm("none", "install", "two-rk")
        held = npm("held", "install", "one-rk")
    finally:
        mirror.stop()
        upstream.stop()
    down = f"npm error 403 upstream {host} is down (connection refused), and the mirror holds"
    assert two.returncode == 1 and "ETARGET" not in two.stderr, two.stderr
    assert (
        "npm error 403 Could not download one-rk@2 due to policy violations:\n"
        f"{down} only one-rk 1.0.0\n"
    ) in two.stderr, two.stderr
    assert one.returncode == 1 and "E504" not in one.stderr, one.stderr
    assert (
        "npm error 403 Could not download two-rk@* due to policy violations:\n"
        f"{down} no version of two-rk\n"
    ) in one.stderr, one.stderr
    assert held.returncode == 0, held.stderr
