"""A real mirror process whose upstream sends many index pages slowly at once, as uv
(50 pages at a time per attendee) over a slow uplink makes it: a file asked meanwhile is
fetched, the pages beyond those the mirror asks for at once wait their turn, and the
upstream is never taken for down."""

from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from retreatkit.mirror.testing import make_wheel, start_mirror, start_upstream, write_pypi
from retreatkit.mirror.uplink import Limits
from tests.e2e.mirror_attendee import fetched

pytestmark = pytest.mark.e2e
JSON = "application/vnd.pypi.simple.v1+json"
SLOW = 100  # pages coming slowly: as many as aiohttp's pool held, for pages and files alike


def request(
    base: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=120)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.headers), response.read()
    finally:
        conn.close()


def test_a_file_is_fetched_while_a_hundred_pages_come_slowly(tmp_path: Path) -> None:
    """It was not: the file waited for one of the 100 connections the slow pages held,
    got a 504 'no connection within 5 s' without the upstream being asked, the upstream
    was marked down for it, and every request after got a 504 at once."""
    root = tmp_path / "upstream"
    wheel = make_wheel("quick", "1.0")
    slow = {f"slow{i}": [make_wheel(f"slow{i}", "1.0")] for i in range(SLOW)}
    write_pypi(root, {"quick": [wheel], "later": [make_wheel("later", "1.0")], **slow})
    hold = {f"/simple/slow{i}/": "hold" for i in range(SLOW)}
    (root / ".behaviours.json").write_text(json.dumps(hold))
    upstream = start_upstream(root)
    mirror, admin = start_mirror(
        tmp_path / "store", pypi=f"{upstream.url}simple/", read_timeout=120.0
    )
    clients = ThreadPoolExecutor(SLOW)
    try:
        status, _, body = request(mirror.url, "/pypi/simple/quick/", {"Accept": JSON})
        assert status == 200, body
        path = json.loads(body)["files"][0]["url"]
        pages = [
            clients.submit(request, mirror.url, f"/pypi/simple/slow{i}/", {"Accept": JSON})
            for i in range(SLOW)
        ]
        for _ in range(Limits().pages):  # those the mirror asks for at once: all coming
            upstream.process.wait_for(r"^holding /simple/slow\d+/$")
        status, _, body = request(mirror.url, path)
        assert (status, body) == (200, wheel[1])
        asked = fetched(upstream.url)  # the others wait their turn in the mirror
        assert sum(asked.get(f"/simple/slow{i}/", 0) for i in range(SLOW)) == Limits().pages
        request(upstream.url, "/_release")  # the slow pages end; those waiting go on
        assert [page.result()[0] for page in pages] == [200] * SLOW
        status, _, body = request(mirror.url, "/pypi/simple/later/", {"Accept": JSON})
        assert status == 200, body
        _, _, body = request(admin, "/status")
        pypi = json.loads(body)["mirror"]["upstreams"]["pypi"]
        counts = fetched(upstream.url)
    finally:
        clients.shutdown(wait=False, cancel_futures=True)
        mirror.stop()
        upstream.stop()
    assert (pypi["state"], pypi["last_error"]) == ("up", None)
    assert [counts.get(f"/simple/slow{i}/") for i in range(SLOW)] == [1] * SLOW
