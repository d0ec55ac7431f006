"""opam's archives through the mirror in process: stored by checksum, named in the log by
their own file name, so the organiser can tell which package came or failed."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import shutil
from pathlib import Path

import pytest

from retreatkit.mirror import fakeupstream
from retreatkit.mirror.testing import make_source_tarball, mirror_client, settings, write_opam

pytestmark = pytest.mark.skipif(
    shutil.which("opam") is None, reason="opam is not installed (.ci/run installs it)"
)


async def test_the_log_names_an_opam_archive_by_its_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "upstream"
    root.mkdir()
    archives = {f"{n}.1.0": make_source_tarball(n, "1.0") for n in ("hello", "tamper")}
    async with fakeupstream.serving(root) as upstream:
        write_opam(root / "opam", f"{upstream.url}opam/", archives)
        upstream.rules["/opam/archives/tamper-1.0.tar.gz"] = "corrupt"
        config = dataclasses.replace(settings(tmp_path / "store"), opam=f"{upstream.url}opam")
        async with mirror_client(config) as (client, _):
            assert (await client.get("/opam/index.tar.gz")).status == 200
            md5 = {k: hashlib.md5(v).hexdigest() for k, v in archives.items()}
            with caplog.at_level(logging.INFO, logger="retreatkit.mirror"):
                for full, status in (("hello.1.0", 200), ("tamper.1.0", 502)):
                    h = md5[full]
                    r = await client.get(f"/opam/cache/md5/{h[:2]}/{h}")
                    assert r.status == status, await r.text()
    lines = [r.getMessage() for r in caplog.records if "fetch" in r.getMessage()]
    assert len(lines) == 2, lines
    h = md5["hello.1.0"]
    assert re.fullmatch(
        rf"fetched hello-1\.0\.tar\.gz as opam/md5/{h} \(\d+ bytes, \S+s\)", lines[0]
    )
    h = md5["tamper.1.0"]
    assert lines[1].startswith(
        f"fetch of tamper-1.0.tar.gz as opam/md5/{h} failed: "
        "upstream sent bad bytes for tamper-1.0.tar.gz: sha256 mismatch: "
    ), lines[1]
