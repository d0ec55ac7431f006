"""`retreatkit up` and `retreatkit relay` as real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from retreatkit.testing import Process

pytestmark = pytest.mark.e2e


def retreatkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "retreatkit.cli.main", *args]


@pytest.mark.parametrize("command", ["up", "relay"])
def test_serves_relay_and_admin(tmp_path: Path, command: str) -> None:
    cfg = tmp_path / "retreat.toml"
    cfg.write_text(
        '[relay]\nlisten = "127.0.0.1:0"\n[admin]\nlisten = "127.0.0.1:0"\n'
        f'[mirror]\nlisten = "127.0.0.1:0"\nstore = "{tmp_path / "store"}"\n'
        'pypi = "http://127.0.0.1:1/simple/"\nopam = "http://127.0.0.1:1/opam"\n'
    )
    proc = Process.start(retreatkit("--config", str(cfg), command))
    try:
        proc.wait_for(r"^Relay listening on 127\.0\.0\.1:\d+$")
        admin = proc.wait_for(r"^Admin on (http://\S+)/status$")[1]
        with urllib.request.urlopen(f"{admin}/healthz", timeout=10) as r:
            assert r.read() == b"ok\n"
        with urllib.request.urlopen(f"{admin}/status", timeout=10) as r:
            assert json.load(r)["relay"]["connections_open"] == 0
    finally:
        assert proc.stop() == 0  # SIGTERM is a clean stop


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "retreat.toml"
    cfg.write_text("[relay]\nbogus = 1\n")
    got = subprocess.run(
        retreatkit("--config", str(cfg), "up"), capture_output=True, text=True, timeout=60
    )
    assert got.returncode == 2
    assert got.stderr == f"retreatkit: {cfg}: unknown key 'bogus' in [relay]\n"
