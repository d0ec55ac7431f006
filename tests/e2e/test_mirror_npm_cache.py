"""Real npm with its cache on (npm's default), as attendees run it: each test's npm keeps
one cache across its runs, on an attendee's machine (a network namespace reaching a real
mirror process at a non-loopback address), the upstream a real server the test stops.
npm keeps a packument for as long as its Cache-Control says, so what the mirror says
there decides what npm picks once the uplink goes."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from retreatkit.mirror.testing import Netns, start_mirror, start_upstream
from retreatkit.mirror.testrepos import make_npm_tarball, write_npm
from tests.e2e.mirror_attendee import attendee, npm_env

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("npm") is None, reason="npm is needed (node and npm)"),
]
lan = attendee("c", prefix="rknpm")


class Npm:
    """npm in the namespace with no settings of this machine and one cache of its own
    (`--cache`), kept across runs as an attendee's is; each run in a project of its own."""

    def __init__(self, ns: Netns, registry: str, folder: Path) -> None:
        self.ns, self.registry, self.folder = ns, registry, folder
        self.env = npm_env(folder / "home")
        self.cache = folder / "cache"

    def __call__(self, project: str, *args: str) -> subprocess.CompletedProcess[str]:
        where = self.folder / project
        where.mkdir(parents=True)
        (where / "package.json").write_text('{"name": "app", "version": "1.0.0"}')
        argv = ["npm", *args, "--registry", self.registry, "--cache", str(self.cache)]
        return subprocess.run(
            self.ns.argv(argv), cwd=where, env=self.env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip

    def installed(self, project: str, name: str) -> str:
        manifest = self.folder / project / "node_modules" / name / "package.json"
        version: str = json.loads(manifest.read_text())["version"]
        return version


def test_npm_with_its_cache_installs_what_is_held_once_the_uplink_goes(
    tmp_path: Path, lan: Netns
) -> None:
    """An attendee installs one-rk@1.0.0 while the uplink is up (npm keeps the packument:
    2.0.0 latest, not held), then the uplink goes. npm kept the packument for its max-age
    (the mirror's index_ttl, ten minutes), picked 2.0.0 from it, retried its tarball's 504
    for over a minute and failed, where the packument the mirror serves offline restricts
    2.0.0 and npm takes 1.0.0. The packument is revalidated each time now (its ETag: a 304
    while it is the same)."""
    root = tmp_path / "upstream"
    upstream = start_upstream(root)
    host = urlsplit(upstream.url).netloc
    made = [("one-rk", "1.0.0"), ("one-rk", "2.0.0")]
    write_npm(root, upstream.url, [make_npm_tarball(name, v) for name, v in made])
    mirror, _ = start_mirror(tmp_path / "store", npm=upstream.url, listen=f"{lan.host}:0")
    npm = Npm(lan, f"{mirror.url}npm/", tmp_path / "attendee")
    try:
        assert mirror.url.startswith(f"http://{lan.host}:")  # not loopback: as on the LAN
        online = npm("online", "install", "one-rk@1.0.0")
        assert online.returncode == 0, online.stderr
        upstream.stop()
        with pytest.raises(urllib.error.HTTPError) as refused:  # now known down
            urllib.request.urlopen(f"{mirror.url}npm/three-rk", timeout=30)
        refused.value.close()
        assert refused.value.code == 504
        newest_held = npm("latest", "install", "one-rk")
        not_held = npm("pinned", "install", "one-rk@2.0.0")
    finally:
        mirror.stop()
        upstream.stop()
    assert newest_held.returncode == 0, newest_held.stderr
    assert npm.installed("latest", "one-rk") == "1.0.0"
    # pinned to a version not held: the mirror's words at once, no 504 retried for a minute
    assert not_held.returncode == 1 and "E504" not in not_held.stderr, not_held.stderr
    assert (
        "npm error 403 Could not download one-rk@2.0.0 due to policy violations:\n"
        f"npm error 403 upstream {host} is down (connection refused), and the mirror holds"
        " only one-rk 1.0.0\n"
    ) in not_held.stderr, not_held.stderr


def test_npm_set_as_the_page_says_gives_up_on_a_package_the_mirror_cannot_get_in_seconds(
    tmp_path: Path, lan: Netns
) -> None:
    """No status says "cannot get it now" and stops npm: it tries every 5xx three times,
    10 s then 60 s apart, so a package never fetched, with the uplink gone, took over a
    minute to say why. The page's advice makes those waits 1 s and 2 s; npm then prints the
    mirror's words."""
    root = tmp_path / "upstream"
    upstream = start_upstream(root)
    host = urlsplit(upstream.url).netloc
    write_npm(root, upstream.url, [make_npm_tarball("three-rk", "1.0.0")])
    mirror, _ = start_mirror(tmp_path / "store", npm=upstream.url, listen=f"{lan.host}:0")
    npm = Npm(lan, f"{mirror.url}npm/", tmp_path / "attendee")
    try:
        with urllib.request.urlopen(mirror.url, timeout=30) as r:
            said = re.search(r"<code>(npm config set fetch-retry[^<]*)</code>", r.read().decode())
        assert said is not None
        assert npm("configured", *shlex.split(said[1])[1:]).returncode == 0
        upstream.stop()
        never = npm("never", "install", "three-rk", "--loglevel", "http")
    finally:
        mirror.stop()
        upstream.stop()
    assert never.returncode == 1, never.stderr
    assert "attempt 3 failed with 504" in never.stderr  # npm's retries, 1 s then 2 s apart
    shown = (
        rf"npm error 504 upstream {re.escape(host)} is down \(connection refused\);"
        rf" (next try in \d+ s|trying it again now) - GET {re.escape(mirror.url)}npm/three-rk\n"
    )
    assert re.search(shown, never.stderr), never.stderr
