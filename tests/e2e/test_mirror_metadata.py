"""Real pip and uv on an attendee's machine, against an upstream that lists a wheel's
core metadata file (PEP 658) and cannot give it: one answers 404, one sends bytes that
fail the index's hash. Both clients read that file before the wheel and install no
wheel whose file fails them (a 404, or a 504 for the bad bytes); the mirror makes it
from the wheel."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from retreatkit.mirror.testing import (
    Netns,
    make_wheel,
    said,
    start_mirror,
    start_upstream,
    write_pypi,
)
from tests.e2e.mirror_attendee import UV, attendee, page_block

pytestmark = pytest.mark.e2e
lan = attendee("m", prefix="rkmeta")


def test_a_wheel_whose_upstream_metadata_file_fails_installs(tmp_path: Path, lan: Netns) -> None:
    root = tmp_path / "upstream"
    missing, broken = make_wheel("missing-meta", "1.0"), make_wheel("broken-meta", "1.0")
    write_pypi(root, {"missing-meta": [missing], "broken-meta": [broken]}, as_json=True)
    (root / "files" / f"{missing[0]}.metadata").unlink()
    rules = {f"/files/{broken[0]}.metadata": "corrupt"}
    (root / ".behaviours.json").write_text(json.dumps(rules))
    upstream = start_upstream(root)
    mirror, _ = start_mirror(tmp_path / "store", pypi=f"{upstream.url}simple/",
                             listen=f"{lan.host}:0")  # fmt: skip
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
        env["HOME"] = str(tmp_path)
        pip_line, uv_line = page_block(mirror.url, "pip")[0], page_block(mirror.url, "uv")[0]
        for tool, line, wheel in (("pip", pip_line, missing), ("uv", uv_line, broken)):
            project = wheel[0].split("-")[0].replace("_", "-")
            words = shlex.split(line.replace("PACKAGE", project))
            target = tmp_path / f"{tool}-target"
            if tool == "pip":
                argv = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--retries",
                        "0", *words[1:], "--no-cache-dir", "--target", str(target)]  # fmt: skip
            else:
                argv = [UV, *words[1:], "--no-cache", "--python", sys.executable,
                        "--target", str(target)]  # fmt: skip
            got = subprocess.run(
                lan.argv(argv), capture_output=True, text=True, timeout=120, env=env
            )
            assert got.returncode == 0, (tool, got.stdout, got.stderr)
            assert (target / project.replace("-", "_")).is_dir()
            said(mirror, rf" WARNING {wheel[0]}\.metadata: upstream .*; making it from the wheel$")
        with urllib.request.urlopen(f"{upstream.url}_stats", timeout=30) as r:
            stats = json.load(r)
        assert stats[f"/files/{missing[0]}"] == stats[f"/files/{broken[0]}"] == 1
    finally:
        mirror.stop()
        upstream.stop()
