"""Who may read and act: the token file, loopback reads, non-loopback, cross-site, /logs."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from retreatkit.admin import token as admin_token
from retreatkit.admin.app import make_app
from retreatkit.admin.logs import LogRing
from retreatkit.testing import fill, scratch_disk
from retreatkit.tui.web import COOKIE
from retreatkit.tui.web import access as web_access

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def service_action(request: web.Request) -> web.Response:
    return web.json_response({"done": True})


def app(bound: str, ring: LogRing | None = None) -> web.Application:
    routes = [
        web.post("/nameserver/blocklists/reload", service_action),
        web.get("/nameserver/queries", service_action),
    ]
    return make_app(
        CollectorRegistry(), {"nameserver": dict}, routes, token=TOKEN, bound_host=bound, ring=ring
    )


@pytest.fixture
async def loopback() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(app("127.0.0.1"))) as c:
        yield c
    logging.getLogger("retreatkit").setLevel(logging.NOTSET)


async def test_loopback_reads_are_open_and_actions_need_the_token(loopback: TestClient) -> None:  # type: ignore[type-arg]
    assert (await loopback.get("/status")).status == 200
    assert (await loopback.get("/nameserver/queries")).status == 200  # a service's own read
    for method, path in (("PUT", "/loglevel"), ("POST", "/nameserver/blocklists/reload")):
        r = await loopback.request(method, path, data="debug")
        assert (r.status, await r.text()) == (401, "this needs the admin token\n")
        r = await loopback.request(
            method, path, data="debug", headers={"Authorization": "Bearer nope"}
        )
        assert (r.status, await r.text()) == (401, "wrong admin token\n")
        r = await loopback.request(method, path, data="debug", headers=AUTH)
        assert r.status == 200
    assert (await loopback.get("/logs")).status == 401


async def test_no_cross_site_action(loopback: TestClient) -> None:  # type: ignore[type-arg]
    # a form post from another site: no Authorization header can ride along
    r = await loopback.post(
        "/nameserver/blocklists/reload",
        data={"x": "1"},
        headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert r.status == 401
    # the preflight a browser needs before sending the header cross-site is refused
    r = await loopback.options(
        "/loglevel",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "PUT"},
    )
    assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
    # DNS rebinding: evil.example now points at 127.0.0.1, but the browser says its name
    r = await loopback.get("/status", headers={"Host": "evil.example:8080"})
    assert (r.status, await r.text()) == (403, "open reads answer loopback names only\n")


async def test_beyond_loopback_everything_needs_the_token() -> None:
    async with TestClient(TestServer(app("0.0.0.0"))) as c:
        for path in ("/healthz", "/status", "/metrics", "/nameserver/queries"):
            r = await c.get(path)
            assert r.status == 401
            assert (
                await r.text()
                == "this admin endpoint needs its token (Authorization: Bearer TOKEN)\n"
            )
        assert (await c.get("/status", headers=AUTH)).status == 200


async def test_log_stream_sends_records_and_says_what_it_skipped() -> None:
    ring = LogRing(capacity=3, services=("nameserver",))
    log = logging.getLogger("retreatkit.nameserver.test")
    log.addHandler(ring)
    log.setLevel(logging.INFO)
    try:
        for i in range(5):
            log.info("line %d \x1b[2J", i)
        dropped, records = ring.after(1)
        assert dropped == 1 and [r["seq"] for r in records] == [3, 4, 5]
        assert records[0]["service"] == "nameserver" and records[0]["message"] == "line 2 \x1b[2J"
        async with TestClient(TestServer(app("127.0.0.1", ring)), headers=AUTH) as c:
            r = await c.get("/logs", params={"after": "3"})
            assert r.headers["Content-Type"] == "text/event-stream"
            first = json.loads((await r.content.readuntil(b"\n\n"))[6:])
            assert first["seq"] == 4 and first["level"] == "INFO"
            log.warning("live")  # arrives on the open stream
            await r.content.readuntil(b"\n\n")
            live = json.loads((await r.content.readuntil(b"\n\n"))[6:])
            assert live["message"] == "live" and live["seq"] == 6
            r.close()
            assert (await c.get("/logs", params={"after": "x"})).status == 400
    finally:
        log.removeHandler(ring)
        log.setLevel(logging.NOTSET)


def test_token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    path = admin_token.token_path()
    assert path == tmp_path / "retreatkit" / "admin-token"
    made = admin_token.load_or_create()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(made) >= 43
    assert admin_token.load_or_create() == made == admin_token.read()  # made once
    os.chmod(path, 0o644)
    with pytest.raises(admin_token.TokenError, match=f"open to others: chmod 600 {path}"):
        admin_token.read()


def test_two_starts_at_once_agree_on_one_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second start that comes while the first writes the token (the two relays of a
    LAN test, `up` beside `bob relay`) read an empty file and stopped: "the admin token
    ... is empty". Here the second comes at the worst moment: as the first writes."""
    path = tmp_path / "admin-token"
    second: list[str] = []
    fdopen = os.fdopen

    def meanwhile(fd: int, *args: object, **kwargs: object) -> object:
        if not second:  # the first writer's moment: the second start comes now
            second.append("starting")
            second[0] = admin_token.load_or_create(path)
        return fdopen(fd, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "fdopen", meanwhile)
    first = admin_token.load_or_create(path)
    assert first == second[0] == admin_token.read(path)
    assert [p.name for p in tmp_path.iterdir()] == ["admin-token"]  # no draft left


def test_a_folder_with_no_hard_links_still_gets_its_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vfat and some FUSE and SMB mounts refuse link(2): every start failed there."""

    def no_links(*_: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "admin-token"
    made = admin_token.load_or_create(path)
    assert made == admin_token.load_or_create(path) == admin_token.read(path)
    assert [p.name for p in tmp_path.iterdir()] == ["admin-token"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="a full disk needs a tmpfs mount (root)")
def test_a_token_a_full_disk_cannot_take_is_one_error_and_no_empty_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An empty token left behind stopped every later start ("is empty: delete it")."""
    with scratch_disk("1m") as disk:
        fill(disk)
        monkeypatch.setenv("XDG_STATE_HOME", str(disk))
        path = admin_token.token_path()
        with pytest.raises(admin_token.TokenError) as failed:
            admin_token.load_or_create()
        assert str(failed.value) == f"cannot write the admin token {path}: No space left on device"
        assert not path.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only folder root cannot write needs a mount")
def test_a_token_a_read_only_folder_cannot_take_is_said_of_the_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The state folder on a read-only file system: the error named the token's draft
    (`.admin-token.1234.ab12cd34: Read-only file system`), not the token."""
    with scratch_disk("1m") as disk:
        (disk / "retreatkit").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        monkeypatch.setenv("XDG_STATE_HOME", str(disk))
        path = admin_token.token_path()
        with pytest.raises(admin_token.TokenError) as failed:
            admin_token.load_or_create()
        assert str(failed.value) == f"cannot write the admin token {path}: Read-only file system"


async def raw_get(port: int, header: bytes) -> bytes:
    """The status line a request with one raw header line gets (bytes a client chose)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header + b"\r\nConnection: close\r\n\r\n"
    )
    line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return line.rstrip()


async def test_a_token_that_is_not_utf8_is_a_wrong_token() -> None:
    # aiohttp keeps such bytes as lone surrogates; encoding them failed: a 500 and a
    # traceback in the organiser's log for anyone on the LAN who sent one
    async with TestServer(app("0.0.0.0")) as server:
        assert server.port is not None
        got = await raw_get(server.port, b"Authorization: Bearer \xff\xfe")
        assert got == b"HTTP/1.1 401 Unauthorized"


async def test_a_dashboard_cookie_that_is_not_utf8_is_refused() -> None:
    page = web.Application(middlewares=[web_access(TOKEN)])
    page.router.add_get("/", service_action)
    async with TestServer(page) as server:
        assert server.port is not None
        got = await raw_get(server.port, f"Cookie: {COOKIE}=".encode() + b"\xff\xfe")
        assert got == b"HTTP/1.1 401 Unauthorized"
