"""A real mirror process whose store's disk is smaller than what it keeps free: said once
at start, and in every refusal real pip prints, with the setting that makes it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from retreatkit.mirror.testing import (
    make_wheel,
    pip_download,
    said,
    start_mirror,
    start_upstream,
    write_pypi,
)

pytestmark = pytest.mark.e2e
PB = 10**15  # more kept free than any disk the tests run on has


def test_a_disk_smaller_than_keep_free_bytes_is_said_at_start_and_by_pip(tmp_path: Path) -> None:
    root = tmp_path / "upstream"
    wheel = make_wheel("one", "1.0")
    write_pypi(root, {"one": [wheel]})
    upstream = start_upstream(root)
    mirror, _ = start_mirror(tmp_path / "store", pypi=f"{upstream.url}simple/", keep_free=PB)
    try:
        said(
            mirror,
            r"^Mirror store: its disk has \S+ \S+ free and the mirror keeps 1000 TB free"
            r" \(keep_free_bytes\), so it keeps no new file; lower keep_free_bytes or use a"
            r" larger disk$",
        )
        got = pip_download(f"{mirror.url}pypi/simple/", "one", tmp_path / "got", tmp_path)
    finally:
        mirror.stop()
        upstream.stop()
    assert got.returncode != 0
    line = (
        rf"507 Server Error: the mirror's disk has no room for {re.escape(wheel[0])}"
        r"(\.metadata)? \(\d+ B\): \S+ \S+ free, and it keeps 1000 TB free \(keep_free_bytes\)"
    )
    assert re.search(line, got.stderr), got.stderr  # pip asks for the metadata file first
