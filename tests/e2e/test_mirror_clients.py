"""Real pip, uv and opam through a real mirror from a real (local) upstream.

pip and uv run on an attendee's machine: a network namespace that reaches the mirror at
a non-loopback address of this machine, as the LAN would (pip trusts plain HTTP only on
loopback). They run exactly the lines the page on `/` prints; only flags that keep the
test's installs apart (`--target`, no cache) are added.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from retreatkit.mirror.testing import (
    Netns,
    make_source_tarball,
    make_wheel,
    netns,
    start_mirror,
    start_upstream,
    write_opam,
    write_pypi,
)
from tests.e2e.mirror_attendee import UV

pytestmark = pytest.mark.e2e
TIMEOUT = 180


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=30) as r:
        doc: dict[str, object] = json.load(r)
    return doc


def mirror_status(admin: str) -> dict[str, int]:
    doc = get_json(f"{admin}/status")["mirror"]
    assert isinstance(doc, dict)
    return doc


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """No pip or uv settings from this machine's environment: the clients see the mirror."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "OPAM"))}
    home.mkdir(parents=True, exist_ok=True)
    return {**env, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), **extra}


def page_lines(mirror_url: str) -> dict[str, list[str]]:
    """The attendee page's commands, by client, as a browser would show them."""
    with urllib.request.urlopen(mirror_url, timeout=30) as r:
        text = r.read().decode()
    found: dict[str, list[str]] = {}
    for name, block in re.findall(r"<h2>(\w+)</h2>\n<p>.*?</p>\n<pre>(.*?)</pre>", text, re.S):
        found[name] = html.unescape(block).splitlines()
    return found


class Attendee:
    """Runs the page's lines in the namespace, each install into its own folder."""

    def __init__(self, ns: Netns, home: Path) -> None:
        self.ns, self.home = ns, home
        self.env = clean_env(home)

    def run(self, line: str, target: Path | None = None, package: str = "demo-pkg") -> str:
        words = shlex.split(line.replace("PACKAGE", package))
        if words[0] == "export":
            name, _, value = words[1].partition("=")
            self.env[name] = value
            return ""
        if words[0] == "pip":
            argv = [sys.executable, "-m", "pip", "--disable-pip-version-check", *words[1:]]
            if words[1] == "install":
                argv += ["--no-cache-dir", "--target", str(target)]
        else:
            assert words[:3] == ["uv", "pip", "install"], line
            argv = [UV, *words[1:], "--no-cache", "--python", sys.executable]
            argv += ["--target", str(target)]
        done = subprocess.run(
            self.ns.argv(argv), capture_output=True, text=True, timeout=TIMEOUT, env=self.env
        )
        assert done.returncode == 0, (line, done.stdout, done.stderr)
        return done.stdout + done.stderr


def installed(target: Path, module: str) -> str:
    text = (target / module / "__init__.py").read_text()
    match = re.search(r"VERSION = '([^']+)'", text)
    assert match is not None
    return match[1]


@pytest.fixture
def lan() -> Iterator[Netns]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("an attendee's network namespace needs root and iproute2 (.ci/run)")
    with netns("c") as ns:
        yield ns


def test_attendees_install_with_the_pages_lines_online_then_offline(
    tmp_path: Path, lan: Netns
) -> None:
    root = tmp_path / "upstream"
    big = make_wheel("big-nometa", "1.0", pad=3_000_000)
    write_pypi(
        root,
        {
            "demo-pkg": [make_wheel("demo-pkg", "1.0", ("demo-dep",))],
            "demo-dep": [make_wheel("demo-dep", "2.0", pad=200_000)],
            "big-nometa": [big],
        },
    )
    page = root / "simple" / "big-nometa" / "index.html"  # no PEP 658 metadata: uv uses ranges
    page.write_text(re.sub(r' data-dist-info-metadata="[^"]*"', "", page.read_text()))
    upstream = start_upstream(root)
    mirror, admin = start_mirror(
        tmp_path / "store", pypi=f"{upstream.url}simple/", ttl=0, listen=f"{lan.host}:0"
    )
    try:
        assert mirror.url.startswith(f"http://{lan.host}:")  # not loopback: pip must trust it
        lines = page_lines(mirror.url)
        pip_once, pip_index, pip_trust = lines["pip"]
        uv_once, uv_export = lines["uv"]
        who = Attendee(lan, tmp_path / "home")

        who.run(pip_once, tmp_path / "t1")
        assert installed(tmp_path / "t1", "demo_dep") == "2.0"
        fetched_once = mirror_status(admin)["upstream_bytes"]
        who.run(pip_index)
        who.run(pip_trust)
        who.run("pip install PACKAGE", tmp_path / "t2")  # with the configuration just set
        who.run(uv_once, tmp_path / "t3")
        who.run(uv_export)
        who.run("uv pip install PACKAGE", tmp_path / "t4")
        for target in ("t2", "t3", "t4"):
            assert installed(tmp_path / target, "demo_pkg") == "1.0"
        assert mirror_status(admin)["upstream_bytes"] == fetched_once  # crossed once

        # uv reads a wheel without published metadata by ranges: it is not downloaded twice
        before = mirror_status(admin)
        who.run(uv_once, tmp_path / "t5", package="big-nometa")
        after = mirror_status(admin)
        sent = sum(after[k] - before[k] for k in ("bytes_from_cache", "bytes_from_upstream"))
        assert len(big[1]) <= sent < 1.5 * len(big[1])
        stats = get_json(f"{upstream.url}_stats")
        assert (stats[f"/files/{big[0]}"], stats[f"HEAD /files/{big[0]}"]) == (1, 1)

        # a newer demo-dep appears upstream, is listed, never fetched; then the uplink goes
        newer = make_wheel("demo-dep", "3.0")
        write_pypi(root, {"demo-dep": [make_wheel("demo-dep", "2.0", pad=200_000), newer]})
        with urllib.request.urlopen(f"{mirror.url}pypi/simple/demo-dep/", timeout=30) as r:
            assert newer[0] in r.read().decode()
        upstream.stop()
        out = who.run(pip_once, tmp_path / "t6")
        assert installed(tmp_path / "t6", "demo_dep") == "2.0", out  # what the store holds
        who.run("uv pip install PACKAGE", tmp_path / "t7")
        assert installed(tmp_path / "t7", "demo_dep") == "2.0"
        status = mirror_status(admin)
        assert status["offline_pages"] >= 4 and status["upstreams"]["pypi"]["state"] == "down"
    finally:
        mirror.stop()
        upstream.stop()


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
                env = clean_env(tmp_path / "home", OPAMROOT=str(opamroot), OPAMYES="1")
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


@pytest.mark.skipif(
    shutil.which("opam") is None, reason="opam is not installed (.ci/run installs it)"
)
def test_opams_retries_of_a_tampered_archive_never_reach_the_upstream(tmp_path: Path) -> None:
    root = tmp_path / "upstream"
    root.mkdir()
    server = start_upstream(root)
    archive = "/opam/archives/tamper-1.0.tar.gz"
    try:
        data = make_source_tarball("tamper", "1.0")
        write_opam(root / "opam", f"{server.url}opam/", {"tamper.1.0": data})
        (root / ".behaviours.json").write_text(json.dumps({archive: "corrupt"}))
        mirror, admin = start_mirror(tmp_path / "store", opam=f"{server.url}opam")
        try:
            env = clean_env(tmp_path / "home", OPAMROOT=str(tmp_path / "root"), OPAMYES="1")
            steps = [
                ["opam", "init", "--bare", "--no-setup", "--disable-sandboxing",
                 "default", f"{mirror.url}opam"],
                ["opam", "switch", "create", "demo", "--empty"],
                ["opam", "source", "tamper.1.0", "--dir", str(tmp_path / "src")],
            ]  # fmt: skip
            for step in steps:
                done = subprocess.run(
                    step, capture_output=True, text=True, timeout=TIMEOUT, env=env
                )
            digest = hashlib.sha256(data).hexdigest()
            cache = f"{mirror.url}opam/cache/sha256/{digest[:2]}/{digest}"
            assert done.returncode != 0, done.stderr
            assert f"Download failed: {cache} (curl: code 504" in done.stderr, done.stderr
            # opam's curl asked the mirror again (--retry 3), then the package's `src`,
            # which names the mirror too: one GET for the mirror, none for the retries,
            # none from opam itself (its fallback to the src URL crossed the uplink)
            stats = get_json(f"{server.url}_stats")
            assert stats.get(archive) == 1 and f"opam {archive}" not in stats
            status = mirror_status(admin)
            asked = dict((name, n) for name, n in status["top_packages"])  # type: ignore[attr-defined]
            assert asked["opam/tamper"] >= 2 and status["upstream_fetches"] == 1
        finally:
            mirror.stop()
    finally:
        server.stop()


@pytest.mark.skipif(
    shutil.which("opam") is None, reason="opam is not installed (.ci/run installs it)"
)
def test_opam_fails_at_once_for_an_archive_the_mirror_cannot_get(tmp_path: Path) -> None:
    """The uplink silent (it takes connections, answers nothing), one package held, one
    not: opam gets the first from the mirror and fails the second at once. opam tries
    the repository's archive cache, then the package's own URLs; the mirror's index names
    the mirror as every archive's `src`, so opam's fallback never reaches for the uplink,
    where its curl (no time limit) hung for as long as the uplink stayed silent."""
    root = tmp_path / "upstream"
    root.mkdir()
    server = start_upstream(root)
    lost = "/opam/archives/lost-1.0.tar.gz"
    try:
        packages = {f"{n}.1.0": make_source_tarball(n, "1.0") for n in ("held", "lost")}
        write_opam(root / "opam", f"{server.url}opam/", packages)
        extra = "connect_timeout = 1.0\nheaders_timeout = 1.0"
        mirror, _ = start_mirror(tmp_path / "store", opam=f"{server.url}opam", extra=extra)
        try:
            env = clean_env(tmp_path / "home", OPAMROOT=str(tmp_path / "root"), OPAMYES="1")
            steps = [
                ["opam", "init", "--bare", "--no-setup", "--disable-sandboxing",
                 "default", f"{mirror.url}opam"],
                ["opam", "switch", "create", "demo", "--empty"],
                ["opam", "source", "held.1.0", "--dir", str(tmp_path / "held")],
                ["opam", "show", "lost.1.0", "--field=url.src:"],  # as the README says
            ]  # fmt: skip
            for step in steps:
                done = subprocess.run(
                    step, capture_output=True, text=True, timeout=TIMEOUT, env=env
                )
                assert done.returncode == 0, (step, done.stdout, done.stderr)
            digest = hashlib.sha256(packages["lost.1.0"]).hexdigest()
            cache = f"{mirror.url}opam/cache/sha256/{digest[:2]}/{digest}"
            assert done.stdout == f'"{cache}"\n'
            (root / ".behaviours.json").write_text(json.dumps({lost: "silent"}))
            try:
                done = subprocess.run(
                    ["opam", "source", "lost.1.0", "--dir", str(tmp_path / "lost")],
                    capture_output=True, text=True, timeout=TIMEOUT, env=env,
                )  # fmt: skip
            except subprocess.TimeoutExpired as exc:
                raise AssertionError(f"opam hung on the silent uplink: {exc.stderr!r}") from None
        finally:
            mirror.stop()
        stats = get_json(f"{server.url}_stats")
    finally:
        server.stop()
    assert done.returncode != 0
    assert f"Download failed: {cache} (curl: code 504" in done.stderr, done.stderr
    assert stats.get(lost, 0) >= 1 and f"opam {lost}" not in stats  # the mirror's tries only
