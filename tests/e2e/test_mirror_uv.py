"""Real uv as attendees run it, its cache on (uv's default), on an attendee's machine: a
network namespace that reaches a real mirror process at a non-loopback address, the
upstream a real server the test stops. uv keeps a page for as long as its Cache-Control
says, so what the mirror says there decides what uv sees when the uplink goes."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from retreatkit.mirror.testing import Netns, make_wheel, start_mirror, start_upstream, write_pypi
from tests.e2e.mirror_attendee import UV, attendee, page_block

pytestmark = pytest.mark.e2e
lan = attendee("v", prefix="rkuv")


class Uv:
    """The page's first uv line, run in the namespace with its own cache and no uv settings
    of this machine; only `--target` and `--python` are added, to keep installs apart."""

    def __init__(self, ns: Netns, line: str, home: Path) -> None:
        self.ns, self.words = ns, shlex.split(line)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
        home.mkdir(parents=True, exist_ok=True)
        self.env = {**env, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                    "XDG_CACHE_HOME": str(home / ".cache")}  # fmt: skip

    def install(self, package: str, target: Path) -> subprocess.CompletedProcess[str]:
        words = [w.replace("PACKAGE", package) for w in self.words]
        argv = [UV, *words[1:], "--python", sys.executable, "--target", str(target)]
        return subprocess.run(
            self.ns.argv(argv), capture_output=True, text=True, timeout=180, env=self.env
        )


def version(target: Path) -> str:
    match = re.search(r"VERSION = '([^']+)'", (target / "one" / "__init__.py").read_text())
    assert match is not None
    return match[1]


def test_uv_with_its_cache_installs_what_is_held_once_the_uplink_goes(
    tmp_path: Path, lan: Netns
) -> None:
    """An attendee installs one 1.0 while the uplink is up (uv keeps the page: 2.0 listed,
    not held), then the uplink goes. uv kept the page for its max-age (the mirror's
    index_ttl, ten minutes), picked 2.0 from it and failed on its 504, where the page the
    mirror serves offline lists 2.0 yanked and uv takes 1.0. The page is revalidated each
    time now (an ETag, so a 304), as pip always does."""
    root = tmp_path / "upstream"
    write_pypi(root, {"one": [make_wheel("one", "1.0"), make_wheel("one", "2.0")],
                      "two": [make_wheel("two", "1.0")]})  # fmt: skip
    upstream = start_upstream(root)
    host = urlsplit(upstream.url).netloc
    mirror, _ = start_mirror(tmp_path / "store", pypi=f"{upstream.url}simple/",
                             listen=f"{lan.host}:0")  # fmt: skip
    try:
        assert mirror.url.startswith(f"http://{lan.host}:")  # not loopback: as on the LAN
        uv = Uv(lan, page_block(mirror.url, "uv")[0], tmp_path / "home")
        online = uv.install("one==1.0", tmp_path / "t1")
        assert online.returncode == 0, online.stderr
        upstream.stop()
        with pytest.raises(urllib.error.HTTPError) as refused:  # now known down
            urllib.request.urlopen(f"{mirror.url}pypi/simple/two/", timeout=60)
        refused.value.close()
        assert refused.value.code == 504
        newest_held = uv.install("one", tmp_path / "t2")
        not_held = uv.install("one==2.0", tmp_path / "t3")
        newer = uv.install("one>=2", tmp_path / "t4")
        again = uv.install("one==1.0", tmp_path / "t5")  # a second time, the upstream gone
    finally:
        mirror.stop()
        upstream.stop()
    assert newest_held.returncode == 0, newest_held.stderr
    assert version(tmp_path / "t2") == "1.0"
    assert "yanked" not in newest_held.stderr  # uv passes the yanked 2.0 by without a word
    # pinned, uv takes the yanked file, and prints the mirror's words on its 504
    assert not_held.returncode != 0
    line = rf"504 upstream {host} is down \([^)]*\); (next try in \d+ s|trying it again now)"
    assert re.search(line, not_held.stderr), not_held.stderr
    # a range is never met by a yanked file: uv says why, in the mirror's words
    assert newer.returncode != 0
    said = "one==2.0 was yanked (reason: not held by this mirror, whose upstream is down)"
    assert said in newer.stderr, newer.stderr
    assert again.returncode == 0, again.stderr
    assert version(tmp_path / "t5") == "1.0"
