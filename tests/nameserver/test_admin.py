"""The nameserver's part of the admin contract (docs/admin-api.md), in process."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from retreatkit.admin.app import make_app
from retreatkit.nameserver.fakes import FakeTransport, ManualClock, UDPClient, Zone
from retreatkit.nameserver.service import Nameserver, Settings

ZONE = Zone(
    "$TTL 300\n@ SOA ns.test. h.test. 1 3600 600 86400 60\n"
    "www.example A 198.51.100.7\nads.example A 198.51.100.66\n"
)
UP = ("192.0.2.53", 53)
TOKEN = "admin-token-for-tests"


@dataclass
class Admin:
    client: TestClient[Any, Any]
    ns: Nameserver
    lan: UDPClient
    clock: ManualClock
    lists: Path

    async def request(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        """Every admin request of these tests goes through here (one place for credentials)."""
        auth = {"Authorization": f"Bearer {TOKEN}"}
        response = await self.client.request(method, path, json=body, headers=auth)
        text = await response.text()
        is_json = response.content_type == "application/json"
        return response.status, (await response.json()) if is_json else text

    async def addresses(self, name: str) -> list[str]:
        answer = await self.lan.ask(name)
        return sorted(r.to_text() for rrset in answer.answer for r in rrset)


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[Admin]:
    lists = tmp_path / "block.txt"
    lists.write_text("||tracker.example.test^\n")
    clock = ManualClock()
    settings = Settings(listen=("127.0.0.1", 0), upstreams=[UP], blocklists=[str(lists)])
    wall = lambda: 1_799_999_000.0 + clock()  # noqa: E731  (2027-01-15T08:00:00Z at start)
    ns = Nameserver(settings, clock=clock, wall=wall, transport=FakeTransport({UP: ZONE.answer}))
    await ns.reload()
    app = make_app(CollectorRegistry(), {"nameserver": ns.status}, ns.admin_routes(), token=TOKEN)
    async with TestClient(TestServer(app)) as client:
        yield Admin(client, ns, UDPClient(ns.resolver), clock, lists)


async def test_pause_and_resume_apply_to_the_next_query(admin: Admin) -> None:
    admin.lists.write_text("||ads.example.test^\n")
    assert await admin.addresses("ads.example.test") == ["198.51.100.66"]  # cached now
    status, body = await admin.request("POST", "/nameserver/blocklists/reload")
    assert status == 200
    assert body == {
        "blocklists": [
            {
                "source": str(admin.lists),
                "entries": 1,
                "bad_lines": 0,
                "loaded_at": "2027-01-15T08:00:00Z",
                "last_error": None,
            }
        ]
    }
    assert await admin.addresses("ads.example.test") == ["0.0.0.0"]
    status, body = await admin.request("POST", "/nameserver/blocking/pause", {"minutes": 5})
    assert (status, body) == (200, {"blocking": "paused until 2027-01-15T08:05:00Z"})
    assert await admin.addresses("ads.example.test") == ["198.51.100.66"]
    doc = (await admin.request("GET", "/status"))[1]["nameserver"]
    assert doc["blocking"] == "paused until 2027-01-15T08:05:00Z"
    assert doc["warnings"] == ["blocking is paused until 2027-01-15T08:05:00Z"]
    status, body = await admin.request("POST", "/nameserver/blocking/pause", {"minutes": 0})
    assert (status, body) == (200, {"blocking": "on"})
    assert await admin.addresses("ads.example.test") == ["0.0.0.0"]


async def test_records_put_and_delete(admin: Admin) -> None:
    status, body = await admin.request("PUT", "/nameserver/records/wiki.retreat.lan",
                                       {"value": "10.0.0.9"})  # fmt: skip
    assert (status, body) == (200, {"name": "wiki.retreat.lan", "type": "A", "value": "10.0.0.9"})
    assert await admin.addresses("wiki.retreat.lan") == ["10.0.0.9"]
    await admin.request("PUT", "/nameserver/records/wiki.retreat.lan", {"value": "10.0.0.10"})
    assert await admin.addresses("wiki.retreat.lan") == ["10.0.0.10"]  # replaced, cache too
    await admin.request("PUT", "/nameserver/records/www.example.test",
                        {"value": "cname:wiki.retreat.lan"})  # fmt: skip
    assert await admin.addresses("www.example.test") == ["10.0.0.10", "wiki.retreat.lan."]
    status, _ = await admin.request("DELETE", "/nameserver/records/www.example.test")
    assert status == 204
    assert await admin.addresses("www.example.test") == ["198.51.100.7"]
    status, text = await admin.request("DELETE", "/nameserver/records/www.example.test")
    assert (status, text) == (404, "no local record named www.example.test\n")


async def test_the_local_names_are_listed_by_name_and_bounded(admin: Admin) -> None:
    before = (await admin.request("GET", "/nameserver/records"))[1]
    for name, value in (("b.retreat.lan", "10.0.0.2"), ("a.retreat.lan", "cname:b.retreat.lan")):
        await admin.request("PUT", f"/nameserver/records/{name}", {"value": value})
    status, body = await admin.request("GET", "/nameserver/records")
    assert status == 200 and body["total"] == before["total"] + 2
    mine = [r for r in body["records"] if r["name"].endswith(".retreat.lan")]
    assert mine[:2] == [
        {"name": "a.retreat.lan", "type": "CNAME", "value": "b.retreat.lan"},
        {"name": "b.retreat.lan", "type": "A", "value": "10.0.0.2"},
    ]
    status, body = await admin.request("GET", "/nameserver/records?limit=1")
    assert status == 200 and len(body["records"]) == 1 and body["total"] == before["total"] + 2


async def test_a_record_that_would_make_a_cname_loop_is_refused(admin: Admin) -> None:
    await admin.request("PUT", "/nameserver/records/loopa.retreat.lan",
                        {"value": "cname:loopb.retreat.lan"})  # fmt: skip
    status, text = await admin.request("PUT", "/nameserver/records/loopb.retreat.lan",
                                       {"value": "cname:loopa.retreat.lan"})  # fmt: skip
    assert (status, text) == (
        400,
        "CNAME loop: loopa.retreat.lan -> loopb.retreat.lan -> loopa.retreat.lan:"
        " loopb.retreat.lan not set\n",
    )
    assert [r.name for r in admin.ns.resolver.policy.local.all()] == ["loopa.retreat.lan"]
    assert await admin.addresses("loopa.retreat.lan") == ["loopb.retreat.lan."]  # no loop


async def test_flush(admin: Admin) -> None:
    await admin.addresses("www.example.test")
    status, body = await admin.request("POST", "/nameserver/cache/flush",
                                       {"name": "WWW.example.test."})  # fmt: skip
    assert (status, body) == (200, {"name": "www.example.test", "dropped": 1})
    await admin.addresses("www.example.test")
    transport = admin.ns.resolver.upstreams[""].transport
    assert isinstance(transport, FakeTransport) and transport.asked() == 2


@pytest.mark.parametrize(
    ("method", "path", "body", "message"),
    [
        ("POST", "/nameserver/blocking/pause", {"minutes": -1},
         'expected {"minutes": N} with N from 0 to 1440\n'),
        ("POST", "/nameserver/blocking/pause", "soon",
         'expected {"minutes": N} with N from 0 to 1440\n'),
        ("PUT", "/nameserver/records/x.retreat.lan", {"value": "nowhere"},
         "expected an IP address or cname:TARGET for x.retreat.lan, got 'nowhere'\n"),
        # the words --record uses: an address the constructor of local names cannot take
        ("PUT", "/nameserver/records/v6scope.retreat.lan", {"value": "fe80::1%eth0"},
         "expected an IP address without %eth0 for v6scope.retreat.lan, got 'fe80::1%eth0'\n"),
        ("PUT", "/nameserver/records/x.retreat.lan", {},
         'expected {"value": "10.0.0.9"} or {"value": "cname:TARGET"}\n'),
        # the name is in the path: the endpoint's own form, not the flag's NAME=ADDRESS
        ("PUT", "/nameserver/records/bad..name", {"value": "10.0.0.9"},
         "not a name: 'bad..name' (expected PUT /nameserver/records/NAME, NAME like"
         " wiki.retreat.lan or *.retreat.lan)\n"),
        # a `=` is part of the name, not where a value starts
        ("PUT", "/nameserver/records/a=b.retreat.lan", {"value": "10.0.0.9"},
         "not a name: 'a=b.retreat.lan' (expected PUT /nameserver/records/NAME, NAME like"
         " wiki.retreat.lan or *.retreat.lan)\n"),
        ("POST", "/nameserver/cache/flush", {"name": "not a name"},
         'expected {"name": "example.org"}\n'),
        ("GET", "/nameserver/queries?after=x", None, "after must be a whole number\n"),
        ("GET", "/nameserver/queries?limit=0", None, "limit must be at least 1\n"),
    ],
)  # fmt: skip
async def test_bad_requests_say_what_to_send(
    admin: Admin, method: str, path: str, body: object, message: str
) -> None:
    assert await admin.request(method, path, body) == (400, message)


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        (None, b'{"minutes": 5\xff}', "the body is not UTF-8 text\n"),
        ("application/json; charset=nosuch", b'{"minutes": 5}',
         "unknown charset in Content-Type: send UTF-8\n"),
        (None, b"[" * 2000 + b"]" * 2000, 'expected JSON: {"minutes": N} (0 resumes)\n'),
    ],
    ids=["not-utf-8", "unknown-charset", "nested-2000-deep"],
)  # fmt: skip
async def test_a_body_that_is_not_text_or_too_deep_is_one_line(
    admin: Admin,
    caplog: pytest.LogCaptureFixture,
    content_type: str | None,
    body: bytes,
    message: str,
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if content_type:
        headers["Content-Type"] = content_type
    with caplog.at_level(logging.DEBUG):
        r = await admin.client.post("/nameserver/blocking/pause", data=body, headers=headers)
        assert (r.status, await r.text()) == (400, message)
    assert [record.getMessage() for record in caplog.records if record.exc_info] == []
    assert admin.ns.resolver.paused_until == 0


async def test_queries_list_every_path_oldest_first(admin: Admin) -> None:
    await admin.addresses("www.example.test")
    await admin.addresses("www.example.test")
    await admin.addresses("x.tracker.example.test")
    admin.clock.advance(2)
    await admin.addresses("x.tracker.example.test")
    status, body = await admin.request("GET", "/nameserver/queries?after=1&limit=2")
    assert status == 200 and body["next"] == 3
    assert [(q["seq"], q["name"], q["answer"], q["rcode"]) for q in body["queries"]] == [
        (2, "www.example.test", "cached", "NOERROR"),
        (3, "x.tracker.example.test", "blocked", "NOERROR"),
    ]
    last = (await admin.request("GET", "/nameserver/queries?after=3"))[1]
    assert last["next"] == 4 and last["queries"][0]["at"] == "2027-01-15T08:00:02Z"
    assert last["queries"][0]["client"] == "10.0.0.5" and last["queries"][0]["type"] == "A"


async def test_status_section_has_the_contract_fields(admin: Admin) -> None:
    await admin.addresses("www.example.test")
    doc = (await admin.request("GET", "/status"))[1]["nameserver"]
    for key in (
        "up",
        "uptime_seconds",
        "connections_open",
        "warnings",
        "queries",
        "cache_hits",
        "blocked",
        "stale_served",
        "forwarded",
        "servfail",
        "blocking",
        "top_domains",
        "top_blocked",
        "top_clients",
        "upstreams",
        "blocklists",
    ):
        assert key in doc
    assert doc["upstreams"] == [{"address": "192.0.2.53:53", "zone": None, "state": "up",
                                 "latency_ms": 0.0, "queries": 1, "errors": 0,
                                 "last_error": None}]  # fmt: skip
    assert doc["top_clients"] == [["10.0.0.5", 1]]


async def test_each_action_that_changes_dns_state_is_one_line_in_the_log(
    admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="retreatkit.nameserver")
    assert await admin.addresses("www.example.test") == ["198.51.100.7"]  # cached now
    admin.lists.write_text("||ads.example.test^\n||tracker.example.test^\n")
    actions: list[tuple[str, str, object]] = [
        ("POST", "/nameserver/blocklists/reload", None),
        ("POST", "/nameserver/blocking/pause", {"minutes": 10}),
        ("POST", "/nameserver/blocking/pause", {"minutes": 2.5}),
        ("POST", "/nameserver/blocking/pause", {"minutes": 0}),
        ("POST", "/nameserver/blocking/pause", {"minutes": 0}),
        ("PUT", "/nameserver/records/wiki.retreat.lan", {"value": "10.0.0.9"}),
        ("PUT", "/nameserver/records/wiki.retreat.lan", {"value": "cname:www.retreat.lan"}),
        ("PUT", "/nameserver/records/wiki.retreat.lan", {"value": "nonsense:"}),  # 400
        ("DELETE", "/nameserver/records/wiki.retreat.lan", None),
        ("DELETE", "/nameserver/records/wiki.retreat.lan", None),  # 404
        ("POST", "/nameserver/cache/flush", {"name": "www.example.test"}),
    ]
    for method, path, body in actions:
        await admin.request(method, path, body)
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("retreatkit.nameserver", "INFO", line)
        for line in (
            "upstream 192.0.2.53:53 is up",  # its first answer
            "admin (127.0.0.1): blocklists reloaded: 2 domains (was 1)",
            "admin (127.0.0.1): blocking paused for 10 min, until 2027-01-15T08:10:00Z",
            "admin (127.0.0.1): blocking paused for 2.5 min, until 2027-01-15T08:02:30Z "
            "(was paused until 2027-01-15T08:10:00Z)",
            "admin (127.0.0.1): blocking resumed",
            "admin (127.0.0.1): blocking resumed (it was not paused)",
            "admin (127.0.0.1): local name wiki.retreat.lan set: A 10.0.0.9 (new)",
            "admin (127.0.0.1): local name wiki.retreat.lan set: CNAME www.retreat.lan "
            "(was A 10.0.0.9)",
            "admin (127.0.0.1): local name wiki.retreat.lan removed (was CNAME www.retreat.lan)",
            "admin (127.0.0.1): cache flushed for www.example.test: 1 answer dropped",
        )
    ]
