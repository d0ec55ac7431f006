"""A real mirror process serving files and pages to clients that ask oddly or at once:
ranges no file has, a store evicting what it just fetched, pages nobody reads."""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from retreatkit import units
from retreatkit.mirror import wheelmaker
from retreatkit.mirror.testing import (
    Server,
    said,
    start_mirror,
    start_upstream,
    write_pypi,
)

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


def servers(root: Path, store: Path, extra: str = "") -> tuple[Server, Server, str]:
    """The upstream serving `root` and a mirror of it: (upstream, mirror, admin URL)."""
    upstream = start_upstream(root)
    try:
        mirror, admin = start_mirror(store, pypi=f"{upstream.url}simple/", extra=extra)
    except BaseException:
        upstream.stop()
        raise
    return upstream, mirror, admin


def log_of(server: Server) -> list[str]:
    """Everything the process said, once it has stopped."""
    server.process.popen.send_signal(signal.SIGTERM)
    _, lines = server.process.finish()
    return lines


def test_a_range_of_any_length_or_script_is_answered_as_rfc_9110_says(tmp_path: Path) -> None:
    root = tmp_path / "upstream"
    big, small = noise("big", "1.0", 2_000_000), noise("small", "1.0", 10_000)  # sendfile, memory
    write_pypi(root, {"big": [big], "small": [small]}, as_json=True)
    upstream, mirror, _ = servers(root, tmp_path / "store")
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


def test_clients_asking_ranges_of_a_file_evicted_as_it_lands_get_their_bytes(
    tmp_path: Path,
) -> None:
    """The store over its --max-size evicts a file as soon as it is stored (here: always,
    the organiser's own files leaving no room for it); every client that waited for it
    with a range gets its bytes all the same, not "the mirror could not keep" it."""
    root, store = tmp_path / "upstream", tmp_path / "store"
    big, small = noise("big", "1.0", 1_500_000), noise("small", "1.0", 200_000)
    write_pypi(root, {"big": [big], "small": [small]}, as_json=True)
    filler = random.Random("course").randbytes(4_000_000)
    metadata = b"Metadata-Version: 2.1\nName: course\nVersion: 1.0\n"
    name, data = wheelmaker.build(
        "course", "1.0", [("course/data.bin", filler)], {"METADATA": metadata},
        compression=zipfile.ZIP_STORED,
    )  # fmt: skip
    (tmp_path / name).write_bytes(data)
    added = subprocess.run(
        [sys.executable, "-m", "retreatkit.cli.main", "mirror", "add", "--store", str(store),
         str(tmp_path / name)],
        capture_output=True, text=True, timeout=60, env={"HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    upstream, mirror, admin = servers(root, store, "max_size_bytes = 5000000")
    try:
        said(mirror, r"^Mirror local index: ")  # the kit's own wheel, pinned too
        paths = {**file_paths(mirror, "big"), **file_paths(mirror, "small")}
        wanted = [(paths[f], d, f"bytes={n * 1000}-{n * 1000 + 999}") for f, d, _ in (big, small)
                  for n in range(12)]  # fmt: skip

        def one(job: tuple[str, bytes, str]) -> tuple[int, bytes, bytes]:
            path, whole, spec = job
            status, _, body = ask(mirror, path, {"Range": spec})
            start, end = (int(n) for n in spec.removeprefix("bytes=").split("-"))
            return status, body, whole[start : end + 1]

        for _ in range(3):  # each round fetches both again: the last round's copies went
            with ThreadPoolExecutor(len(wanted)) as pool:
                for status, body, expected in pool.map(one, wanted):
                    assert (status, body) == (206, expected), body[:200]
        with urllib.request.urlopen(f"{admin}/status", timeout=30) as r:
            assert (
                json.load(r)["mirror"]["evicted"] >= 6
            )  # every file fetched was evicted as it landed
    finally:
        lines = log_of(mirror)
        upstream.stop()
    assert not [line for line in lines if "Traceback" in line], lines


def unread(server: Server, path: str, headers: str = "") -> tuple[socket.socket, str]:
    """A client that asks for `path`, reads the answer's head, and no more: (its socket,
    the status line). The head comes once the mirror has begun the answer."""
    parts = urlsplit(server.url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.settimeout(60)
    sock.connect((parts.hostname, parts.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: mirror\r\n{headers}\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        got = sock.recv(1)
        assert got, head
        head += got
    return sock, head.split(b"\r\n", 1)[0].decode()


def rss(server: Server) -> int:
    """The process's resident memory, in bytes."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.M)
    assert found is not None, status
    return int(found[1]) * 1024


def until(done: Callable[[], bool], what: str) -> None:
    """Poll a condition with a deadline (a wait for an event, not a sleep for a time)."""
    deadline = time.monotonic() + 60
    while not done():
        assert time.monotonic() < deadline, f"never: {what}"
        select.select([], [], [], 0.01)  # the poll's pace, not a wait for the event


def test_index_pages_to_clients_that_do_not_read_are_held_once_and_bounded(
    tmp_path: Path,
) -> None:
    """Clients that ask for a page and read none of it (a stalled laptop, or someone
    trying) hold it until they read or leave: the same page to any number of them is
    one page's bytes, and past max_pages_sending_bytes another page is refused."""
    root = tmp_path / "upstream"
    names = ("many-a", "many-b", "many-c")  # pages of one size, over what a socket buffers
    write_pypi(root, {n: [noise(n, f"1.{i}", 10) for i in range(16_000)] for n in names}, True)
    bound = 15_000_000
    upstream, mirror, admin = servers(
        root, tmp_path / "store", f"max_pages_sending_bytes = {bound}"
    )
    accept = f"Accept: {JSON}\r\n"

    def status() -> dict[str, int]:
        with urllib.request.urlopen(f"{admin}/status", timeout=30) as r:
            doc: dict[str, int] = json.load(r)["mirror"]
        return doc

    clients: list[socket.socket] = []
    try:
        pages = {n: ask(mirror, f"/pypi/simple/{n}/", {"Accept": JSON})[2] for n in names}
        size = len(pages["many-a"])
        assert {len(page) for page in pages.values()} == {size}
        assert 2 * size <= bound < 3 * size and size > 5_000_000, size  # 4 MB: the kernel's

        before = rss(mirror)
        for _ in range(50):
            sock, line = unread(mirror, "/pypi/simple/many-a/", accept)
            clients.append(sock)
            assert line == "HTTP/1.1 200 OK"
        assert status()["pages_sending_bytes"] == size  # fifty clients, one page
        assert rss(mirror) - before < 5 * size  # not a copy each: that was 50 pages' bytes
        sock, line = unread(mirror, "/pypi/simple/many-b/", accept)
        clients.append(sock)
        assert line == "HTTP/1.1 200 OK"
        assert status()["pages_sending_bytes"] == 2 * size

        code, headers, body = ask(mirror, "/pypi/simple/many-c/", {"Accept": JSON})
        text = body.decode()
        assert (code, headers["Retry-After"]) == (503, "5"), text
        assert text == (
            f"the mirror is sending {units.size(2 * size)} of index pages to clients still"
            " reading them (max_pages_sending_bytes); try again in 5 s\n"
        )
        sock, line = unread(mirror, "/pypi/simple/many-a/", accept)  # on its way already
        clients.append(sock)
        assert line == "HTTP/1.1 200 OK"
        assert (status()["pages_sending_bytes"], status()["pages_refused"]) == (2 * size, 1)

        for sock in clients:
            sock.close()
        clients.clear()
        until(lambda: status()["pages_sending_bytes"] == 0, "the pages of clients gone go")
        assert ask(mirror, "/pypi/simple/many-c/", {"Accept": JSON})[2] == pages["many-c"]
    finally:
        for sock in clients:
            sock.close()
        lines = log_of(mirror)
        upstream.stop()
    assert not [line for line in lines if "Traceback" in line], lines


def test_a_client_that_takes_none_of_a_page_is_cut_and_its_page_let_go(tmp_path: Path) -> None:
    """A client that stops reading a page holds its bytes against max_pages_sending_bytes:
    two doing so on two of npm's largest pages would keep every other page refused for as
    long as they liked. One that takes none of it for page_stall_timeout seconds is cut
    (a broken transfer, never a short 200), and its page let go."""
    root = tmp_path / "upstream"
    write_pypi(root, {"stalled": [noise("stalled", f"1.{i}", 10) for i in range(16_000)]}, True)
    upstream, mirror, admin = servers(root, tmp_path / "store", "page_stall_timeout = 1.0")

    def status() -> dict[str, int]:
        with urllib.request.urlopen(f"{admin}/status", timeout=30) as r:
            doc: dict[str, int] = json.load(r)["mirror"]
        return doc

    try:
        page = ask(mirror, "/pypi/simple/stalled/", {"Accept": JSON})[2]
        sock, line = unread(mirror, "/pypi/simple/stalled/", f"Accept: {JSON}\r\n")
        with sock:
            assert line == "HTTP/1.1 200 OK"
            until(lambda: status()["pages_stalled"] == 1, "the client that reads nothing is cut")
            assert status()["pages_sending_bytes"] == 0
            got = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(1 << 20):
                    got += len(chunk)
            assert got < len(page)  # what it had of the page, then the cut
        assert ask(mirror, "/pypi/simple/stalled/", {"Accept": JSON})[2] == page
    finally:
        lines = log_of(mirror)
        upstream.stop()
    assert not [line for line in lines if "Traceback" in line], lines
