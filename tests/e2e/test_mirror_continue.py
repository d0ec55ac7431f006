"""A real mirror process whose upstream download of a wheel breaks half way, met by real
pip on an attendee's machine: the mirror continues the download where it broke, and
the uplink carries the wheel once and a bit, not twice."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from retreatkit import units
from retreatkit.mirror.testing import (
    Netns,
    make_wheel,
    said,
    start_mirror,
    start_upstream,
    write_pypi,
)
from tests.e2e.mirror_attendee import attendee, fetched

pytestmark = pytest.mark.e2e
lan = attendee("c", prefix="rkrs")


@pytest.mark.parametrize("mode", ["cut-once", "cut-whole"])
def test_pip_gets_a_wheel_whose_upstream_download_broke_half_way(
    tmp_path: Path, lan: Netns, mode: str
) -> None:
    """`cut-once` answers the rest (206); `cut-whole` ignores the range and sends the
    wheel again (200), written over from its first byte."""
    root = tmp_path / "upstream"
    filename, data, _ = wheel = make_wheel("one", "1.0", pad=3_000_000)  # streams: > 1 MiB
    write_pypi(root, {"one": [wheel]})
    path = f"/files/{filename}"
    (root / ".behaviours.json").write_text(json.dumps({path: mode}))
    upstream = start_upstream(root)
    try:
        mirror, _ = start_mirror(
            tmp_path / "store", pypi=f"{upstream.url}simple/", listen=f"{lan.host}:0"
        )
        try:
            assert mirror.url.startswith(f"http://{lan.host}:")  # not loopback: as on the LAN
            env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
            got = subprocess.run(
                lan.argv([sys.executable, "-m", "pip", "--disable-pip-version-check",
                          "download", "--no-deps", "--no-cache-dir", "--retries", "0",
                          "--index-url", f"{mirror.url}pypi/simple/", "--trusted-host", lan.host,
                          "-d", str(tmp_path / "got"), "one"]),
                capture_output=True, text=True, timeout=120,
                env={**env, "HOME": str(tmp_path / "home")},
            )  # fmt: skip
            assert got.returncode == 0, got.stderr
            assert "interrupted" not in got.stderr  # pip's stream was never cut
            assert (tmp_path / "got" / filename).read_bytes() == data
            counts = fetched(upstream.url)
            [asked] = [k.split(" ", 2)[2] for k in counts if k.startswith(f"range {path} ")]
            at = int(asked.removeprefix("bytes=").rstrip("-"))
            assert 0 < at <= len(data) // 2 and asked == f"bytes={at}-"
            assert counts[f'if-range {path} "{zlib.crc32(data):08x}"'] == 1
            assert counts[path] == 2
            if mode == "cut-once":
                assert counts[f"sent {path}"] < 1.5 * len(data)
            said(
                mirror,
                rf" retreatkit\.mirror INFO continuing {re.escape(filename)} from pypi at"
                rf" {re.escape(units.size(at))} after: upstream cut {re.escape(filename)} short$",
            )
            if mode == "cut-whole":
                said(mirror, rf" INFO upstream sent {re.escape(filename)} from pypi whole again")
        finally:
            mirror.stop()
    finally:
        upstream.stop()
