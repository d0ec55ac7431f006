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
import urllib.request
from pathlib import Path

import pytest

from retreatkit.mirror.testing import Netns, start_mirror, start_upstream
from retreatkit.mirror.testrepos import npm_pack, write_npm
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
