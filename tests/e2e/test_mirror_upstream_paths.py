"""A real mirror and real pip against an upstream on another machine (a network
namespace) that fails for one thing only: a redirect to a host the venue cannot reach,
one file it never answers. That download fails, in words that say which host and why;
the rest of the upstream's packages are still had, and nobody is told the uplink is gone."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from retreatkit.mirror.testing import (
    Netns,
    make_wheel,
    pip_download,
    start_mirror,
    start_upstream,
    write_pypi,
)
from tests.e2e.mirror_attendee import attendee

pytestmark = pytest.mark.e2e
lan = attendee("d", prefix="mirrordown")
GONE = "The internet link is down right now"  # what the attendees' page says when it is


def status_of(admin: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{admin}/status", timeout=30) as r:
        doc: dict[str, Any] = json.load(r)["mirror"]
    return doc


def page(mirror_url: str) -> str:
    with urllib.request.urlopen(mirror_url, timeout=30) as r:
        return str(r.read().decode())


def test_pip_gets_the_rest_of_an_upstream_whose_files_host_cannot_be_reached(
    tmp_path: Path, lan: Netns
) -> None:
    """PyPI's files host, or the far mirror an apt redirector picks, unreachable from the
    venue: the upstream that redirected there was marked down, and pip was refused every
    other package with `upstream HOST is down`, the uplink working."""
    root = tmp_path / "upstream"
    one, two = make_wheel("one", "1.0"), make_wheel("two", "1.0")
    write_pypi(root, {"one": [one], "two": [two]})
    gone = f"{lan.address}:9"  # nothing listens there: a connect is refused
    moved = {f"/files/{one[0]}": f"redirect http://{gone}/files/{one[0]}"}
    (root / ".behaviours.json").write_text(json.dumps(moved))
    upstream = start_upstream(root, host=lan.address, wrap=lan.argv)
    up = urlsplit(upstream.url).netloc
    try:
        mirror, admin = start_mirror(tmp_path / "store", pypi=f"{upstream.url}simple/",
                                     listen=f"{lan.host}:0")  # fmt: skip
        try:
            index = f"{mirror.url}pypi/simple/"
            got_one = pip_download(index, "one", tmp_path / "got", tmp_path / "home", lan)
            got_two = pip_download(index, "two", tmp_path / "got", tmp_path / "home", lan)
            status, home = status_of(admin), page(mirror.url)
        finally:
            mirror.stop()
    finally:
        upstream.stop()
    assert got_two.returncode == 0, got_two.stderr  # the uplink works: pip is not refused
    assert sorted(p.name for p in (tmp_path / "got").iterdir()) == [two[0]]
    assert status["upstreams"]["pypi"]["state"] == "up"
    assert GONE not in home
    line = re.escape(f"upstream {up} redirected {one[0]} to {gone}: connection refused")
    assert got_one.returncode == 1, got_one.stdout
    assert re.search(rf"504 Server Error: {line} for url: ", got_one.stderr), got_one.stderr
    assert "Traceback" not in got_one.stderr


def test_pip_gets_the_rest_of_an_upstream_that_never_answers_for_one_file(
    tmp_path: Path, lan: Netns
) -> None:
    """One file the upstream takes the request for and never answers (a stuck backend),
    the rest answered: one silence took the whole upstream down, and pip was refused
    every other package as if the uplink were gone."""
    root = tmp_path / "upstream"
    one, two = make_wheel("one", "1.0"), make_wheel("two", "1.0")
    write_pypi(root, {"one": [one], "two": [two]})
    (root / ".behaviours.json").write_text(json.dumps({f"/files/{one[0]}": "silent"}))
    upstream = start_upstream(root, host=lan.address, wrap=lan.argv)
    up = urlsplit(upstream.url).netloc
    try:
        mirror, admin = start_mirror(
            tmp_path / "store", pypi=f"{upstream.url}simple/", listen=f"{lan.host}:0",
            extra="connect_timeout = 1.0\nheaders_timeout = 1.0", read_timeout=30.0,
        )  # fmt: skip
        try:
            index = f"{mirror.url}pypi/simple/"
            got_one = pip_download(index, "one", tmp_path / "got", tmp_path / "home", lan)
            got_two = pip_download(index, "two", tmp_path / "got", tmp_path / "home", lan)
            status, home = status_of(admin), page(mirror.url)
        finally:
            mirror.stop()
    finally:
        upstream.stop()
    assert got_two.returncode == 0, got_two.stderr  # the upstream answers: pip is not refused
    assert sorted(p.name for p in (tmp_path / "got").iterdir()) == [two[0]]
    assert status["upstreams"]["pypi"]["state"] == "up"
    # none but the kit's (its dependencies are not seeded here): no upstream down
    assert [w for w in status["warnings"] if not w.startswith("bob is not")] == []
    assert GONE not in home
    line = re.escape(f"upstream {up}: no answer within 2 s")
    assert got_one.returncode == 1, got_one.stdout
    assert re.search(rf"504 Server Error: {line} for url: ", got_one.stderr), got_one.stderr
    assert "Traceback" not in got_one.stderr
