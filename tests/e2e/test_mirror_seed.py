"""Warming before the event, then the event with no uplink: `retreatkit mirror seed --store`
from a file of every kind, the upstreams stopped, a mirror over that store alone, and the
real clients (uv, npm, opam, apt-get) install from it. Then `seed --mirror` against the
serving mirror finds everything already there.

The clients that treat loopback specially (pip; the others for realism) run on an
attendee's machine: a network namespace reaching the mirror at a non-loopback address.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from retreatkit.mirror.testing import (
    Netns,
    make_source_tarball,
    make_wheel,
    sha256,
    start_mirror,
    start_upstream,
    write_opam,
    write_pypi,
)
from retreatkit.mirror.testrepos import AptClient, Signer, make_deb, npm_pack, write_apt, write_npm
from tests.e2e.mirror_attendee import UV, attendee
from tests.e2e.test_mirror_npm import npm_env, package

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("npm", "opam", "apt-get", "dpkg-scanpackages", "gpg")),
        reason="npm, opam, apt-get, dpkg-dev and gpg are needed (.ci/run installs them)",
    ),
]
TIMEOUT = 180


lan = attendee("s")


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, **kw)
    assert done.returncode == 0, (argv, done.stdout, done.stderr)
    return done


def seed(*args: str, env: dict[str, str]) -> str:
    argv = [sys.executable, "-m", "retreatkit.cli.main", "mirror", "seed", *args]
    return run(argv, env=env).stdout


def python_files(root: Path, url: str) -> list[str]:
    """An index with a project for each Python format, and the files naming them."""
    wheels = {
        "demo-pkg": make_wheel("demo-pkg", "1.0", ("demo-dep",)),
        "demo-dep": make_wheel("demo-dep", "2.0"),
        "pyl-pkg": make_wheel("pyl-pkg", "1.0"),
        "uvl-pkg": make_wheel("uvl-pkg", "1.0"),
    }
    write_pypi(root, {name: [w] for name, w in wheels.items()}, as_json=True)
    (root.parent / "requirements.txt").write_text(
        f"demo-pkg==1.0 --hash=sha256:{sha256(wheels['demo-pkg'][1])}\ndemo-dep\n"
    )
    name, data, _ = wheels["pyl-pkg"]
    (root.parent / "pylock.toml").write_text(
        'lock-version = "1.0"\ncreated-by = "hand"\n[[packages]]\nname = "pyl-pkg"\n'
        f'version = "1.0"\nwheels = [{{ url = "{url}files/{name}", hashes = {{ sha256 = '
        f'"{sha256(data)}" }} }}]\n'
    )
    name, data, _ = wheels["uvl-pkg"]
    (root.parent / "uv.lock").write_text(
        f'version = 1\n[[package]]\nname = "uvl-pkg"\nversion = "1.0"\nsource = {{ registry ='
        f' "{url}simple" }}\nwheels = [{{ url = "{url}files/{name}", hash = "sha256:'
        f'{sha256(data)}" }}]\n'
    )
    return [str(root.parent / n) for n in ("requirements.txt", "pylock.toml", "uv.lock")]


def npm_files(tmp_path: Path, root: Path, url: str, env: dict[str, str]) -> Path:
    """A registry with two packages, and a package-lock.json made by npm against it, its
    `resolved` URLs then on the public registry, as a lock made at home reads."""
    packed = tmp_path / "packed"
    packed.mkdir()
    tarballs = [
        npm_pack(package(tmp_path / "src" / "pad", "leftpad-rk", "1.0.0"), packed, env),
        npm_pack(
            package(tmp_path / "src" / "util", "@rk/util", "2.0.0", {"leftpad-rk": "^1.0.0"}),
            packed,
            env,
        ),
    ]
    write_npm(root, url, [t.read_bytes() for t in tarballs])
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "app", "version": "1.0.0"}')
    run(["npm", "install", "--package-lock-only", "--registry", url, "@rk/util"],
        cwd=app, env={**env, "npm_config_cache": str(tmp_path / "npm-lock-cache")})  # fmt: skip
    lock = app / "package-lock.json"
    # an attendee's lockfile names npm's default registry, which `npm ci --registry`
    # replaces (its replace-registry-host setting); nothing here connects to it
    lock.write_text(lock.read_text().replace(url.rstrip("/"), "https://registry.npmjs.org"))
    return lock


def test_seed_a_store_then_install_from_it_with_no_uplink(tmp_path: Path, lan: Netns) -> None:
    root = tmp_path / "upstream"
    root.mkdir()
    upstream = start_upstream(root)
    u = upstream.url
    signer = Signer.make(tmp_path / "gnupg")
    mirror = None
    try:
        env = npm_env(tmp_path / "home")
        files = python_files(root / "pypi", f"{u}pypi/")
        lock = npm_files(tmp_path, root / "npm", f"{u}npm/", env)
        write_opam(root / "opam", f"{u}opam/", {"hello.1.0": make_source_tarball("hello", "1.0")})
        (tmp_path / "dev.export").write_text('opam-version: "2.0"\ninstalled: ["hello.1.0"]\n')
        deb = make_deb(tmp_path / "build", "hello-rk", "1.0")
        write_apt(root / "debian", "stable", {"hello-rk_1.0_all.deb": deb}, signer)
        (tmp_path / "debs.txt").write_text("hello-rk\n")
        upstreams = [
            "--pypi", f"{u}pypi/simple/", "--npm", f"{u}npm/", "--opam", f"{u}opam",
            "--apt", f"debian={u}debian",
        ]  # fmt: skip
        store = tmp_path / "store"
        out = seed("--store", str(store), *upstreams, "--apt-dist", "debian/stable", *files,
                   str(lock), str(tmp_path / "dev.export"), f"apt:{tmp_path / 'debs.txt'}",
                   env=env)  # fmt: skip
        lines = out.splitlines()
        assert re.fullmatch(r"Seeded 12 files: 12 fetched \(\d+(\.\d)? kB\), 0 already there,"
                            r" 0 failed\.", lines[0]), out  # fmt: skip
        assert lines[1:] == [
            "  note: demo-dep: not pinned, took 2.0 (its dependencies are not resolved)"
        ]
        upstream.stop()  # the venue: no uplink from here on

        mirror, _ = start_mirror(
            store, pypi=f"{u}pypi/simple/", npm=f"{u}npm/", opam=f"{u}opam",
            apt={"debian": f"{u}debian"}, ttl=0, listen=f"{lan.host}:0",
        )  # fmt: skip
        index = f"{mirror.url}pypi/simple/"
        target = tmp_path / "site"
        run(lan.argv([UV, "pip", "install", "--index-url", index, "--no-cache", "--python",
                      sys.executable, "--target", str(target), "demo-pkg", "pyl-pkg", "uvl-pkg"]),
            env={**os.environ, "HOME": str(tmp_path / "home")})  # fmt: skip
        assert {p.name for p in target.iterdir()} >= {"demo_pkg", "demo_dep", "pyl_pkg", "uvl_pkg"}

        app = lock.parent
        run(lan.argv(["npm", "ci", "--registry", f"{mirror.url}npm/"]), cwd=app,
            env={**env, "npm_config_cache": str(tmp_path / "npm-ci-cache")})  # fmt: skip
        pad = json.loads((app / "node_modules" / "leftpad-rk" / "package.json").read_text())
        assert pad["version"] == "1.0.0"

        opam_env = {**os.environ, "HOME": str(tmp_path / "home"), "OPAMYES": "1",
                    "OPAMROOT": str(tmp_path / "opamroot")}  # fmt: skip
        steps = [
            ["opam", "init", "--bare", "--no-setup", "--disable-sandboxing", "default",
             f"{mirror.url}opam"],
            ["opam", "switch", "create", "dev", "--empty"],
            ["opam", "source", "hello.1.0", "--dir", str(tmp_path / "hello")],
        ]  # fmt: skip
        for step in steps:
            run(step, env=opam_env)
        assert (tmp_path / "hello" / "README").read_text() == "hello 1.0\n"

        apt = AptClient(tmp_path / "apt")
        apt.sources(f"deb [signed-by={signer.keyring}] {mirror.url}debian stable main")
        for command in (["update"], ["download", "hello-rk"]):
            done = apt.run(*command, argv=lan.argv([]))
            assert done.returncode == 0 and "E:" not in done.stderr, (done.stdout, done.stderr)
        assert (apt.state / "download" / "hello-rk_1.0_all.deb").read_bytes() == deb

        lists = [str(lock), str(tmp_path / "dev.export"), f"apt:{tmp_path / 'debs.txt'}"]
        again = seed("--mirror", mirror.url, "--apt-dist", "debian/stable", *files, *lists, env=env)
        assert again.splitlines()[0] == (
            "Seeded 12 files: 0 fetched (0 B), 12 already there, 0 failed."
        )
    finally:
        if mirror is not None:
            mirror.stop()
        upstream.stop()
        signer.close()
