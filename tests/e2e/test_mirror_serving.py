"""A real mirror process serving files and pages to clients that ask oddly or at once:
ranges no file has, a store evicting what it just fetched, pages nobody reads."""

from __future__ import annotations

import http.client
import json
import random
import signal
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from retreatkit.mirror.testing import Server, start_mirror, start_upstream, write_pypi

pytestmark = pytest.mark.e2e
JSON = "application/vnd.pypi.simple.v1+json"
HUGE = "9" * 5000  # past Python's int() limit of 4300 digits


def noise(name: str, version: str, size: int) -> tuple[str, bytes, bytes]:
    """A "wheel" of random bytes, as the index lists it: the mirror only checks its hash."""
    data = random.Random(f"{name} {version}").randbytes(size)
    filename = f"{name}-{version}-py3-none-any.whl"
    return filename, data, f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()


def ask(
    server: Server, path: str, headers: dict[str, str | bytes] | None = None
) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def file_paths(server: Server, project: str) -> dict[str, str]:
    """The project's files, by name, as the paths its page on the mirror gives them."""
    status, _, body = ask(server, f"/pypi/simple/{project}/", {"Accept": JSON})
    assert status == 200, body
    page = f"{server.url.rstrip('/')}/pypi/simple/{project}/"
    return {
        f["filename"]: urlsplit(urljoin(page, f["url"])).path for f in json.loads(body)["files"]
    }


def log_of(server: Server) -> list[str]:
    """Everything the process said, once it has stopped."""
    server.process.popen.send_signal(signal.SIGTERM)
    _, lines = server.process.finish()
    return lines


def test_a_range_of_any_length_or_script_is_answered_as_rfc_9110_says(tmp_path: Path) -> None:
    root = tmp_path / "upstream"
    big, small = noise("big", "1.0", 2_000_000), noise("small", "1.0", 10_000)  # sendfile, memory
    write_pypi(root, {"big": [big], "small": [small]}, as_json=True)
    upstream = start_upstream(root)
    mirror, _ = start_mirror(tmp_path / "store", pypi=f"{upstream.url}simple/")
    try:
        for project, (filename, data, _) in (("big", big), ("small", small)):
            path = file_paths(mirror, project)[filename]
            assert ask(mirror, path)[2] == data  # held from now on
            size = len(data)
            status, headers, body = ask(mirror, path, {"Range": f"bytes={HUGE}-"})
            assert (status, headers["Content-Range"], body) == (416, f"bytes */{size}", b"")
            for spec in (f"bytes=0-{HUGE}", f"bytes=-{HUGE}"):  # the whole file, as a range
                status, headers, body = ask(mirror, path, {"Range": spec})
                assert (status, headers["Content-Range"]) == (206, f"bytes 0-{size - 1}/{size}")
                assert body == data
            # digits of another script are no range at all: the header is ignored
            status, headers, body = ask(mirror, path, {"Range": "bytes=١٢-".encode()})
            assert (status, "Content-Range" in headers, body) == (200, False, data)
    finally:
        lines = log_of(mirror)
        upstream.stop()
    assert not [line for line in lines if "Traceback" in line], lines
