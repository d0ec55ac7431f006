"""What the mirror's end-to-end tests share: an attendee's machine, the page's lines, and an
apt archive mirrored for attendees."""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from retreatkit.mirror.testing import Netns, Server, netns, start_mirror, start_upstream
from retreatkit.mirror.testrepos import AptClient, Signer

# the uv beside this Python when none is on PATH (uv run puts its own there)
UV = shutil.which("uv") or str(Path(sys.executable).parent / "uv")


def attendee(tag: str, prefix: str = "rkmir2") -> Callable[[], Iterator[Netns]]:
    """A fixture: a network namespace that reaches this machine at a non-loopback address
    (`PREFIX-...`, so it never collides with another suite's), removed after the test."""

    @pytest.fixture
    def lan() -> Iterator[Netns]:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            pytest.skip("an attendee's network namespace needs root and iproute2 (.ci/run)")
        with netns(tag, prefix=prefix) as ns:
            yield ns

    return lan


def page_block(mirror_url: str, client: str) -> list[str]:
    """One client's lines on the page at `/`, as a browser shows them."""
    with urllib.request.urlopen(mirror_url, timeout=30) as r:
        text = r.read().decode()
    block = re.search(rf"<h2>{client}</h2>\n<p>.*?</p>\n<pre>(.*?)</pre>", text, re.S)
    assert block is not None, text
    return html.unescape(block[1]).splitlines()


def fetched(upstream_url: str) -> dict[str, int]:
    """What a test's upstream was asked for: {path: GETs} (fakeupstream's `_stats`)."""
    with urllib.request.urlopen(f"{upstream_url}_stats", timeout=30) as r:
        counts: dict[str, int] = json.load(r)
    return counts


@contextlib.contextmanager
def mirrored(
    tmp_path: Path, root: Path, lan: Netns, **options: Any
) -> Iterator[tuple[Server, Server, str]]:
    """The upstream serving `root`, and a mirror of its `debian` archive on the
    attendees' LAN address: (upstream, mirror, admin URL)."""
    upstream = start_upstream(root)
    try:
        mirror, admin = start_mirror(
            tmp_path / "store", apt={"debian": upstream.url + "debian"},
            listen=f"{lan.host}:0", **options,
        )  # fmt: skip
        try:
            yield upstream, mirror, admin
        finally:
            mirror.stop()
    finally:
        upstream.stop()


def attendee_apt(
    folder: Path, mirror: Server, signer: Signer, suite: str = "bookworm", src: bool = False
) -> AptClient:
    """An attendee's apt with the README's line (and its `deb-src` twin if `src`); the
    archive's key is trusted the way a system trusts its distribution's (no `signed-by`)."""
    apt = AptClient(folder)
    shutil.copy(signer.keyring, apt.state / "trusted.d" / "archive.gpg")
    line = f"deb {mirror.url}debian {suite} main"
    apt.sources(line + (f"\n{line.replace('deb ', 'deb-src ', 1)}" if src else ""))
    return apt


def npm_env(home: Path) -> dict[str, str]:
    """No npm settings of this machine: an empty user and global configuration."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "npmrc").touch()
    (home / "global-npmrc").touch()
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("npm_config_")}
    return {
        **env, "HOME": str(home), "npm_config_userconfig": str(home / "npmrc"),
        "npm_config_globalconfig": str(home / "global-npmrc"),
        "npm_config_update_notifier": "false", "npm_config_fund": "false",
    }  # fmt: skip
