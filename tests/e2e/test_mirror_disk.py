"""A real mirror process whose store's disk is smaller than what it keeps free: said once
at start, and in every refusal real pip prints, with the setting that makes it. On a
small disk, a file that fits beside a download under way is kept, and nothing is evicted
for it."""

from __future__ import annotations

import http.client
import json
import os
import random
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from retreatkit.mirror.testing import (
    Server,
    make_wheel,
    pip_download,
    said,
    start_mirror,
    start_upstream,
    write_pypi,
)
from retreatkit.testing import scratch_disk
from tests.e2e.mirror_attendee import fetched

pytestmark = pytest.mark.e2e
PB = 10**15  # more kept free than any disk the tests run on has
MB = 10**6
JSON = "application/vnd.pypi.simple.v1+json"


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


def wheel_of(name: str, size: int) -> tuple[str, bytes, bytes]:
    """A wheel's name over `size` bytes that do not compress (the mirror checks the hash)."""
    data = random.Random(name).randbytes(size)
    return f"{name}-1.0-py3-none-any.whl", data, f"Name: {name}\nVersion: 1.0\n".encode()


def connect(mirror: Server) -> http.client.HTTPConnection:
    url = urlsplit(mirror.url)
    return http.client.HTTPConnection(url.hostname or "", url.port, timeout=120)


def get(mirror: Server, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = connect(mirror)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def file_path(mirror: Server, project: str) -> str:
    status, body = get(mirror, f"/pypi/simple/{project}/", {"Accept": JSON})
    assert status == 200, body
    return str(json.loads(body)["files"][0]["url"])


def beside_a_download(
    tmp_path: Path, disk: Path, sizes: dict[str, int], extra: str = ""
) -> tuple[dict[str, bytes], int, int, dict[str, int]]:
    """A real mirror whose store is on `disk`: `kept` (if in `sizes`) fetched first, then
    `big` held upstream at 3/4 (its client has read that much: it is on the disk) while
    `mid` is asked for. Returns the files' bytes, mid's status, big's whole length read,
    and what the upstream was asked."""
    wheels = {name: wheel_of(name, size) for name, size in sizes.items()}
    root = tmp_path / "upstream"
    write_pypi(root, {name: [w] for name, w in wheels.items()}, as_json=True)
    (root / ".behaviours.json").write_text(json.dumps({f"/files/{wheels['big'][0]}": "hold"}))
    upstream = start_upstream(root)
    mirror, _ = start_mirror(
        disk / "store", pypi=f"{upstream.url}simple/", read_timeout=120.0, extra=extra
    )
    data = {name: w[1] for name, w in wheels.items()}
    try:
        if "kept" in wheels:
            assert get(mirror, file_path(mirror, "kept")) == (200, data["kept"])
        big = connect(mirror)
        big.request("GET", file_path(mirror, "big"))
        response = big.getresponse()
        assert response.status == 200
        # streamed as written, but for its last byte (held back for the hash check):
        # all the upstream sent of it is on the disk
        cut = len(data["big"]) * 3 // 4 - 1
        head = response.read(cut)
        assert head == data["big"][:cut]
        mid_status, mid_body = get(mirror, file_path(mirror, "mid"))
        assert mid_status != 200 or mid_body == data["mid"]
        get(Server(upstream.process, upstream.url), "/_release")
        rest = response.read()
        big.close()
        if "kept" in wheels:
            assert get(mirror, file_path(mirror, "kept")) == (200, data["kept"])
        asked = fetched(upstream.url)
    finally:
        mirror.stop()
        upstream.stop()
    return data, mid_status, len(head + rest), asked


@pytest.mark.skipif(os.geteuid() != 0, reason="a small tmpfs to fill needs root")
def test_a_file_that_fits_beside_a_download_three_quarters_written_is_kept(
    tmp_path: Path,
) -> None:
    """It was refused: a download's whole size was held apart while the bytes it had
    written were out of the free space too ('no room for mid (6.0 MB): 23.1 MB free',
    where 6 MB of big were still to come)."""
    with scratch_disk("40m") as disk:
        data, mid, big, _ = beside_a_download(tmp_path, disk, {"big": 24 * MB, "mid": 6 * MB})
    assert (mid, big) == (200, len(data["big"]))


@pytest.mark.skipif(os.geteuid() != 0, reason="a small tmpfs to fill needs root")
def test_nothing_is_evicted_for_a_file_that_fits_beside_a_download_under_way(
    tmp_path: Path,
) -> None:
    """With max_size_bytes set, the same count made room by evicting a file held, which
    then crossed the uplink again for its next client."""
    sizes = {"kept": 10 * MB, "big": 20 * MB, "mid": 4 * MB}
    with scratch_disk("40m") as disk:
        data, mid, big, asked = beside_a_download(
            tmp_path, disk, sizes, extra=f"max_size_bytes = {10**9}"
        )
    assert (mid, big) == (200, len(data["big"]))
    assert asked["/files/kept-1.0-py3-none-any.whl"] == 1
