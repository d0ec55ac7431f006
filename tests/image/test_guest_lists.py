"""A nameserver guest's blocklists reloaded from the host's files (image/guestlists.py), in
process: the guest is a real Nameserver behind a real admin endpoint on loopback, its list
copies in a folder of their own, as in a guest's /etc/retreatkit/files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from retreatkit.admin.app import make_app
from retreatkit.image import guestlists
from retreatkit.image.guestconfig import guest_lists
from retreatkit.nameserver import admin as ns_admin
from retreatkit.nameserver import reloaded
from retreatkit.nameserver.fakes import FakeTransport, UDPClient, Zone
from retreatkit.nameserver.service import Nameserver, Settings

UP = ("192.0.2.53", 53)
TOKEN = "guest-token-for-tests"
ZONE = Zone(
    "$TTL 300\n@ SOA ns.test. h.test. 1 3600 600 86400 60\n"
    "ads.example A 198.51.100.66\nnew.example A 198.51.100.67\n"
)
BOOTED = "0.0.0.0 ads.example\n0.0.0.0 tracker.example\n<html>\n"  # two rules, a bad line


@dataclass
class Guest:
    url: str
    ns: Nameserver
    copy: Path  # the guest's copy of the host's file, as carried at boot
    host: Path  # the host's file retreat.toml names
    folder: str  # the guest's copies (/etc/retreatkit/files in a guest)

    async def reload(self, *sources: Path) -> str:
        states = await guestlists.reload(self.url, TOKEN, list(map(str, sources)), self.folder)
        return reloaded.line(states)

    async def blocked(self, name: str) -> bool:
        answer = await UDPClient(self.ns.resolver).ask(name)
        return [r.to_text() for rrset in answer.answer for r in rrset] == ["0.0.0.0"]


async def serve(ns: Nameserver) -> AsyncIterator[str]:
    app = make_app(CollectorRegistry(), {"nameserver": ns.status}, ns.admin_routes(), token=TOKEN)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@pytest.fixture
async def guest(tmp_path: Path) -> AsyncIterator[Guest]:
    host = tmp_path / "host" / "blocks.txt"
    host.parent.mkdir()
    host.write_text(BOOTED)
    carried = tmp_path / "guest-files"
    carried.mkdir()
    [inside] = guest_lists([str(host)], str(carried))  # as the guest's configuration says
    copy = Path(inside)
    copy.write_text(BOOTED)
    settings = Settings(
        listen=("127.0.0.1", 0), upstreams=[UP], blocklists=[str(copy)], carried=str(carried)
    )
    ns = Nameserver(settings, transport=FakeTransport({UP: ZONE.answer}))
    await ns.reload()
    async for url in serve(ns):
        yield Guest(url, ns, copy, host, str(carried))


async def test_an_edited_host_file_reaches_the_guest_and_is_named_as_the_host_names_it(
    guest: Guest,
) -> None:
    """The guest alone read its boot copy again and said `reloaded`: the edit stayed unused."""
    guest.host.write_text(BOOTED + "0.0.0.0 new.example\n")
    assert not await guest.blocked("new.example")
    assert await guest.reload(guest.host) == (
        f"blocklists reloaded: 3 entries from {guest.host} (1 bad line skipped)"
    )
    assert await guest.blocked("new.example")
    assert guest.copy.read_text() == guest.host.read_text()


async def test_a_host_file_gone_keeps_the_guests_last_copy_and_says_why(guest: Guest) -> None:
    guest.host.unlink()
    assert await guest.reload(guest.host) == (
        f"blocklists reloaded: {guest.host} failed (No such file or directory),"
        " its last 2 entries kept"
    )
    assert await guest.blocked("ads.example")


async def test_a_list_named_after_the_guest_started_is_said_to_need_a_restart(
    guest: Guest, tmp_path: Path
) -> None:
    later = tmp_path / "host" / "later.txt"
    later.write_text("0.0.0.0 new.example\n")
    assert await guest.reload(guest.host, later) == (
        f"blocklists reloaded: 2 entries from {guest.host} (1 bad line skipped);"
        f" {later} failed (the guest started without it: restart the guest to add it)"
    )
    assert not await guest.blocked("new.example")


async def put(url: str, name: str, body: bytes) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.put(f"{url}/nameserver/blocklists/carried/{name}", data=body) as response,
    ):
        return response.status, await response.text()


async def test_a_copy_larger_than_a_list_may_be_is_refused_and_the_old_one_kept(
    guest: Guest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ns_admin, "MAX_LIST", 16)
    status, text = await put(guest.url, guest.copy.name, b"0.0.0.0 new.example\n" * 2)
    assert (status, text) == (413, "list larger than 256 MiB\n")
    assert guest.copy.read_text() == BOOTED
    assert sorted(p.name for p in guest.copy.parent.iterdir()) == [guest.copy.name]


async def test_only_a_carried_copy_can_be_replaced(guest: Guest) -> None:
    assert await put(guest.url, "..%2Fescape.txt", b"x\n") == (
        404,
        "no list carried as '../escape.txt'\n",
    )
    assert await put(guest.url, "1-other.txt", b"x\n") == (
        404,
        "no list carried as '1-other.txt'\n",
    )


async def test_a_nameserver_on_the_host_takes_no_list_bytes(tmp_path: Path) -> None:
    """Its lists are the organiser's files: the admin endpoint never writes them."""
    own = tmp_path / "blocks.txt"
    own.write_text(BOOTED)
    settings = Settings(listen=("127.0.0.1", 0), upstreams=[UP], blocklists=[str(own)])
    ns = Nameserver(settings, transport=FakeTransport({UP: ZONE.answer}))
    async for url in serve(ns):
        assert await put(url, own.name, b"0.0.0.0 new.example\n") == (
            404,
            "this nameserver reads its own list files\n",
        )
    assert own.read_text() == BOOTED


def test_lists_beyond_what_a_guest_holds_in_all_are_not_carried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(guestlists, "MAX_FILES", 30)
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("0.0.0.0 ads.example\n")  # 20 bytes
    second.write_text("0.0.0.0 new.example\n")  # 40 in all
    read = guestlists.read_all([str(first), "https://lists.example/x.txt", str(second)])
    assert [(c.guest, c.data is not None, c.problem) for c in read] == [
        ("/etc/retreatkit/files/0-a.txt", True, ""),
        ("https://lists.example/x.txt", False, ""),  # fetched by the guest itself
        ("/etc/retreatkit/files/2-b.txt", False,
         "lists larger than 64 MiB in all cannot be carried to a guest"),
    ]  # fmt: skip


def test_an_answer_of_another_shape_is_one_line() -> None:
    with pytest.raises(
        guestlists.GuestListsError, match=r"^the guest's answer to the reload names no blocklists$"
    ):
        guestlists.answered([], ["not", "an", "object"])


def test_a_guests_answer_reaches_the_hosts_log_only_as_what_the_host_carried() -> None:
    """A guest taken over answered with lists nobody carried, counts of any kind and an
    error holding a newline: each went into the host's log line as it came."""
    carried = [guestlists.Carried("/srv/blocks.txt", "/etc/retreatkit/files/0-blocks.txt")]
    answer = {"blocklists": [
        {"source": "/etc/retreatkit/files/0-blocks.txt", "entries": "lots", "bad_lines": -4,
         "last_error": "refused\n2026-12-04 12:00:00 retreatkit INFO all is well" + "x" * 999},
        {"source": "/etc/shadow", "entries": 3, "bad_lines": 0, "last_error": None},
    ]}  # fmt: skip
    said = reloaded.line(guestlists.answered(carried, answer))
    assert "\n" not in said and "/etc/shadow" not in said and len(said) < 300
    assert said.startswith(
        "blocklists reloaded: /srv/blocks.txt failed (refused\\n2026-12-04 12:00:00 retreatkit"
    )
