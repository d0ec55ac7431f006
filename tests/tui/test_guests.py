"""VM guests on the dashboard: listed from a fake supervising endpoint, their own admin
endpoints watched with its token, started and stopped (stop asks first), and guests whose
endpoint answers garbage or refuses the token. No VM boots here: the supervisor is a fake
(real guests are booted by tests/image)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import Label

from retreatkit.tui import run, views
from retreatkit.tui.app import Dashboard
from retreatkit.tui.guests import Guest, parse, watch_url
from retreatkit.tui.logbuffer import TEXT
from retreatkit.tui.screens.service import Section
from retreatkit.tui.state import DashboardState
from retreatkit.tui.testing import (
    HOSTILE,
    TOKEN,
    FakeAdmin,
    actions_done,
    guest,
    guest_token,
    hosting,
    make_dashboard,
    screen_text,
    serve,
    settle,
)
from retreatkit.tui.widgets import Lines, Table

SIZE = (150, 60)


def rows(app: Dashboard, table_id: str) -> list[list[str]]:
    table = app.screen.query_one(table_id, Table)
    return [[cell.plain for cell in table.get_row_at(i)] for i in range(table.row_count)]


def alarms(app: Dashboard) -> list[str]:
    return str(app.screen.query_one("#alarms", Lines).render()).splitlines()


ADDRESSES = {"mirror": "10.0.0.2:8000", "relay": "10.0.0.2:9000", "nameserver": "10.0.0.2:53"}


@pytest.fixture
def relay_guest() -> Iterator[FakeAdmin]:
    """A guest's own admin endpoint: a relay, and a log line."""
    fake = FakeAdmin(status=hosting("relay"))
    fake.logs = [
        {"seq": 1, "at": "2026-01-01T10:00:00.000+00:00", "service": "relay", "level": "INFO",
         "logger": "retreatkit.relay", "message": "paired nameplate 7"},
    ]  # fmt: skip
    with serve(fake) as admin:
        yield admin


@pytest.fixture
def supervisor(relay_guest: FakeAdmin) -> Iterator[FakeAdmin]:
    """`retreatkit up` with the relay and the nameserver as guests, the mirror in-process;
    the nameserver guest is stopped. It says where attendees reach each, its guests' too."""
    fake = FakeAdmin(status=hosting("mirror", addresses=ADDRESSES))
    fake.guests = [
        guest("relay", "relay", relay_guest.url),
        guest("nameserver", "nameserver", "http://127.0.0.1:9", state="stopped"),
    ]
    with serve(fake) as admin:
        yield admin


def test_guests_parse_what_a_supervisor_may_send() -> None:
    found = parse({"guests": [guest(HOSTILE, "relay", None), 7, {"name": 3}, {"name": "x"}]})
    assert [g.name for g in found] == [HOSTILE, "x"]
    assert found[1] == Guest("x", "?", "?", None, None, None, None, None, None, None)
    for bad in ({"guests": "all"}, [], "<html>"):
        with pytest.raises(ValueError, match=r"/vm/guests is not"):
            parse(bad)


def test_the_token_goes_only_where_the_organiser_sends_it() -> None:
    here = "http://127.0.0.1:8080"
    assert watch_url(here, "http://127.0.0.1:41235") == ("http://127.0.0.1:41235", "")
    assert watch_url("http://localhost:8080", "http://127.0.0.1:41235")[0] is not None
    assert watch_url("http://10.0.0.2:8080", "http://10.0.0.2:41235")[0] is not None
    assert watch_url("http://192.0.2.7:8080", "http://127.0.0.1:41235") == (
        None,
        "admin on 192.0.2.7's loopback only",
    )
    assert watch_url(here, "http://192.0.2.9:80") == (
        None,
        "admin on 192.0.2.9, not the supervisor's host: --connect http://192.0.2.9:80 to watch it",
    )
    assert watch_url(here, None)[1] == "admin not reported"
    assert watch_url(here, "gopher://x")[1] == "admin URL not understood"


def test_one_guest_and_one_restart_are_said_in_the_singular() -> None:
    """`retreatkit vm start` and one qemu killed: "1 guest", "1 restart", not "1 guests"."""
    state = DashboardState(["up:1"])
    vm = {"up": True, "guests": 1, "guests_running": 1, "restarts": 1, "warnings": []}
    status = {**hosting(), "vm": vm}
    status["process"]["services"] = ["vm"]
    state.record("up:1", 0, status=status)
    state.record_guests(
        "up:1", parse({"guests": [{**guest("relay1", "relay", None), "restarts": 1}]})
    )
    assert views.supervisor_lines(state) == [
        "up:1 supervises 1 guest, 1 running, 1 restart since it started"
    ]
    assert views.guest_lines(state) == ["relay1 (relay) running for 1h 00m · 1 restart"]
    vm.update(guests=2, restarts=0)
    assert views.supervisor_lines(state) == [
        "up:1 supervises 2 guests, 1 running, 0 restarts since it started"
    ]


def test_each_guest_is_shown_where_its_own_forward_is() -> None:
    """`up` with its relay as a guest and its mirror in-process, and guests defined
    earlier with `vm start` (stopped): the overview showed every relay guest at `up`'s
    relay's address, and an old mirror guest at the in-process mirror's."""
    state = DashboardState(["up:1"])
    state.record("up:1", 0, status=hosting("mirror", addresses=ADDRESSES))
    stopped = {"state": "stopped"}
    listed = [
        {**guest("relay", "relay", None), "address": "0.0.0.0:9000"},  # up's
        {**guest("r1", "relay", None), **stopped, "address": "127.0.0.1:19200"},
        {**guest("r2", "relay", None), **stopped},  # a supervisor that does not say
        {**guest("mirror", "mirror", None), **stopped, "address": "127.0.0.1:18000"},
    ]
    for item in listed:
        name = item["name"]
        state.add(f"guest {name}", f"http://127.0.0.1:{len(name)}", ("up:1", name))
    state.record_guests("up:1", parse({"guests": listed}))
    rows = [row[:3] for row in views.overview_rows(state)]
    assert rows == [
        ("mirror", "10.0.0.2:8000", "up"),
        ("relay", "10.0.0.2:9000", "unreachable"),  # from every address: the LAN's
        ("relay", "127.0.0.1:19200", "stopped"),
        ("relay", "—", "stopped"),
        ("mirror", "127.0.0.1:18000", "stopped"),
    ]


def test_a_guest_that_restarts_is_down_and_says_why() -> None:
    state = DashboardState(["up:1"])
    state.add("guest relay", "http://127.0.0.1:2", ("up:1", "relay"))
    state.record("guest relay", 0, status=hosting("relay"))
    assert state.endpoints["guest relay"].state_of("relay") == "up"
    restarting = parse({"guests": [{**guest("relay", "relay", None), "state": "restarting"}]})
    state.record_guests("up:1", restarting)
    state.record("guest relay", 1, error="guest relay: cannot connect (connection refused)")
    e = state.endpoints["guest relay"]
    assert e.state_of("relay") == "restarting" and e.is_up("relay") is False
    assert state.alarms(1) == [
        "guest relay is restarting: its relay is down (restart 2; last exit: qemu exit code 1)"
    ]
    booting = parse({"guests": [{**guest("relay", "relay", None), "uptime_seconds": 4.0}]})
    state.record_guests("up:1", booting)
    assert e.state_of("relay") == "starting" and state.alarms(1) == []
    # stopped on purpose, or defined earlier and never started here: shown, not an alarm
    stopped = parse({"guests": [{**guest("relay", "relay", None), "state": "stopped"}]})
    state.record_guests("up:1", stopped)
    assert e.state_of("relay") == "stopped" and state.alarms(1) == []


async def test_guests_listed_and_watched_with_their_own_token(
    supervisor: FakeAdmin, relay_guest: FakeAdmin
) -> None:
    """Each guest is sent its own token, which its supervisor gives for the supervisor's;
    it was sent the supervisor's, which a guest taken over would keep and use on its host."""
    app = make_dashboard(supervisor.url, follow_logs=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        services = rows(app, "#services")
        # where attendees reach each, a guest's as its supervisor says (not the guest's
        # own listen, behind qemu's forward); the supervisor's vm has no address
        assert [r[:3] for r in services] == [
            ["mirror", "10.0.0.2:8000", "up"],
            ["vm", "", "up"],
            ["relay", "10.0.0.2:9000", "up"],
        ]  # the stopped nameserver guest is not watched: its line under Guests says so
        assert "nameserver (nameserver) stopped · 2 restarts" in str(
            app.screen.query_one("#guests", Lines).render()
        )
        assert not [a for a in alarms(app) if "nameserver" in a]  # stopped: no alarm
        assert not [a for a in alarms(app) if "cannot connect" in a]
        own = f"Bearer {guest_token('relay')}"
        assert ("GET", "/status", own, "") in relay_guest.seen
        assert ("GET", "/vm/guests/relay/token", f"Bearer {TOKEN}", "") in supervisor.seen
        while not app.logs.received:  # its log stream is followed in the background
            await pilot.pause()
        assert app.logs.lines[0][TEXT].endswith("relay@guest relay INFO    paired nameplate 7")
        await pilot.press("2")  # the relay screen: the guest's relay, its transfers
        await settle(pilot)
        [section] = app.screen.query(Section)
        assert section.endpoint == "guest relay"
        assert ("GET", "/relay/transfers", own, "") in relay_guest.seen
        await pilot.press("6")
        await settle(pilot)
        assert rows(app, "#guests") == [
            ["relay", "relay", "running", "1h 00m", "2", "147 MB", "93.2 s", "128 MB",
             f"{relay_guest.url[7:]} (up)", "qemu exit code 1", supervisor.url[7:]],
            ["nameserver", "nameserver", "stopped", "", "2", "", "93.2 s", "128 MB",
             "127.0.0.1:9", "qemu exit code 1", supervisor.url[7:]],
        ]  # fmt: skip
        summary = str(app.screen.query_one("#summary", Lines).render())
        assert (
            summary
            == f"{supervisor.url[7:]} supervises 2 guests, 1 running, 4 restarts since it started"
        )
    assert {s[2] for s in relay_guest.seen} == {own}  # the logs too: never the host's token


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        # a supervisor that keeps no token per guest (its guests hold the host's)
        (None, "{sup}: no such guest"),
        (b'{"token": "x\\r\\nHost: evil"}',
         "its supervisor's answer for its admin token holds no token"),
    ],
)  # fmt: skip
async def test_a_guest_whose_token_is_not_given_is_not_watched(
    supervisor: FakeAdmin, relay_guest: FakeAdmin, answer: bytes | None, why: str
) -> None:
    """Nor sent the supervisor's token in its place: it is listed, and says why."""
    if answer is None:
        supervisor.gives_tokens = False
    else:
        supervisor.raw["/vm/guests/relay/token"] = answer
    app = make_dashboard(supervisor.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("6")
        await settle(pilot)
        shown = why.format(sup=supervisor.url[7:])
        # the line under the table holds the whole row: the table leaves out the admin
        # column when a long reason would make it too wide
        detail = " ".join(str(app.screen.query_one("#detail", Lines).render()).split())
        assert f"not watched: {shown}" in detail
    assert relay_guest.seen == []


async def test_stopping_a_guest_asks_first(supervisor: FakeAdmin) -> None:
    app = make_dashboard(supervisor.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("6")
        await settle(pilot)
        await pilot.press("x")  # the relay, on the first row
        await pilot.pause()
        await pilot.press("n")
        await actions_done(pilot)
        assert not [s for s in supervisor.seen if s[0] == "POST"]
        await pilot.press("x")
        await pilot.pause()
        await pilot.press("y")
        await actions_done(pilot)
        assert ("POST", "/vm/guests/relay/stop", f"Bearer {TOKEN}", "") in supervisor.seen
        assert str(app.screen.query_one("#result", Lines).render()) == "guest relay stopped"
        assert rows(app, "#guests")[0][2] == "stopped"
        await pilot.press("1")
        await settle(pilot)
        # stopped on purpose: not watched, so no row of its own, and no alarm
        assert [r[0] for r in rows(app, "#services")] == ["mirror", "vm"]
        assert "relay (relay) stopped · 2 restarts" in str(
            app.screen.query_one("#guests", Lines).render()
        )
        assert not [a for a in alarms(app) if "relay" in a]
        await pilot.press("6")
        await settle(pilot)
        await pilot.press("s")  # starting asks nothing
        await actions_done(pilot)
        assert ("POST", "/vm/guests/relay/start", f"Bearer {TOKEN}", "") in supervisor.seen
        assert rows(app, "#guests")[0][2] == "running"
        assert str(app.screen.query_one("#result", Lines).render()) == (
            "guest relay starting: its row says when it is up, or how it ended"
        )


@pytest.mark.parametrize(
    ("mode", "line"),
    [
        ("garbage", "guest relay: /status answered something that is not JSON"),
        ("unauthorized", "guest relay: the admin token was refused (pass --token or set"
                         " RETREATKIT_TOKEN to this endpoint's token)"),
    ],
)  # fmt: skip
async def test_a_guest_answering_garbage_or_refusing_the_token(mode: str, line: str) -> None:
    with serve(FakeAdmin(mode=mode)) as bad, serve(FakeAdmin(status=hosting("mirror"))) as sup:
        sup.guests = [guest("relay", "relay", bad.url)]
        app = make_dashboard(sup.url, follow_logs=True)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert f"! {line}" in alarms(app)
            assert rows(app, "#services")[-1][:3] == ["relay", "—", "unreachable"]
            await pilot.press("6")
            await settle(pilot)
            assert rows(app, "#guests")[0][8] == f"{bad.url[7:]} (unreachable)"
            await pilot.press("5")
            await settle(pilot)
            assert app.is_running


def record(seq: int, message: str) -> dict[str, object]:
    return {"seq": seq, "at": "2026-01-01T10:00:00.000+00:00", "service": "relay",
            "level": "INFO", "logger": "retreatkit.relay", "message": message}  # fmt: skip


async def test_a_restarted_guest_is_read_from_its_first_line_again() -> None:
    """A guest started again numbers its log records and queries from 1 again: the
    dashboard reads them from there, not after the last number the old one reached."""
    status = hosting("relay", "nameserver")
    with serve(FakeAdmin(status=status, logs_end=True)) as g:
        g.logs = [record(1, "old 1"), record(2, "old 2"), record(3, "old 3")]
        app = make_dashboard(g.url, follow_logs=True)
        app.retry_logs = 0.2
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("4")
            await settle(pilot)
            while app.logs.received < 3:
                await pilot.pause()
            g.status = {**status, "process": {**status["process"], "started_at": "later"}}
            g.logs = [record(1, "new 1")]
            while app.logs.received < 4:
                await pilot.pause()
            assert app.logs.lines[-1][TEXT].endswith("new 1")
            assert rows(app, "#queries")[0][2] == "example.org"
            g.lists["/nameserver/queries"]["queries"] = [
                {"seq": 1, "client": "10.0.0.9", "name": "after.restart", "type": "A"}
            ]
            for _ in range(2):  # one read sees it started again, the next reads from 1
                await settle(pilot)
            assert [row[2] for row in rows(app, "#queries")] == ["after.restart"]


def test_a_real_supervisors_list_is_read(tmp_path: Path) -> None:
    """The supervisor's own items (a guest defined, not booted) as the dashboard reads them."""
    from retreatkit.image.supervisor import Definition, Supervisor
    from retreatkit.image.testing import manifest

    image = tmp_path / "relay"
    image.mkdir()
    (image / "manifest.json").write_text(json.dumps(manifest("relay")))
    supervisor = Supervisor(tmp_path / "vm")
    supervisor.define(Definition(name="relay", image=str(image), forwards=[]))
    [found] = parse({"guests": supervisor.items()})
    admin = supervisor.item("relay")["admin"]
    [relay] = [f for f in supervisor.item("relay")["forwards"] if f.endswith(":9000")]
    address = relay.removeprefix("tcp:").removesuffix(":9000")  # its port 9000, on 127.0.0.1
    assert found == Guest(
        "relay", "relay", "stopped", 0.0, 0, 0.0, 0.0, 128.0, None, admin, address=address
    )
    assert watch_url("http://127.0.0.1:8080", admin) == (admin, "")


async def test_the_guest_acted_on_is_the_one_under_the_cursor(supervisor: FakeAdmin) -> None:
    """The table has the keys when the screen opens; the cursor stays on its guest when
    the list changes; a stopped guest is not stopped again."""
    supervisor.guests = [*(supervisor.guests or []), guest("mirror", "mirror", None)]
    app = make_dashboard(supervisor.url)

    def result() -> str:
        return str(app.screen.query_one("#result", Lines).render())

    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("6")
        await settle(pilot)
        table = app.screen.query_one("#guests", Table)
        assert app.focused is table
        await pilot.press("down", "down", "x")
        await pilot.pause()
        question = str(app.screen.query_one("#question", Label).render())
        assert question.startswith("Stop the guest mirror? ")
        await pilot.press("n")
        await actions_done(pilot)
        assert result() == "stopping the guest mirror cancelled"
        supervisor.guests.insert(0, guest("cache", "mirror", None))  # listed before it now
        await app.poll(supervisor.url[7:])
        await settle(pilot)
        assert rows(app, "#guests")[table.cursor_row][0] == "mirror"
        await pilot.press("up", "x")  # the nameserver guest: stopped already
        await actions_done(pilot)
        assert result() == "guest nameserver is already stopped"
        assert not [s for s in supervisor.seen if s[0] == "POST"]


def test_a_guest_started_again_shows_nothing_of_its_last_run() -> None:
    """qemu killed: the supervisor lists the guest restarting, then running again, before
    the guest's own endpoint is read again; its service says that, never its last "up"."""
    state = DashboardState(["up:1"])
    state.add("guest relay", "http://127.0.0.1:2", ("up:1", "relay"))
    e = state.endpoints["guest relay"]

    def listed(**change: object) -> None:
        item = {**guest("relay", "relay", None), **change}
        state.record_guests("up:1", parse({"guests": [item]}))

    listed()
    state.record("guest relay", 0, status=hosting("relay"))
    assert e.state_of("relay") == "up"
    listed(state="restarting", restarts=3)
    assert e.state_of("relay") == "restarting"
    listed(uptime_seconds=1.5, restarts=3)
    assert e.state_of("relay") == "starting"
    state.record("guest relay", 1, status=hosting("relay"))  # it answers: up again
    listed(uptime_seconds=2.5, restarts=3)
    assert e.state_of("relay") == "up"
    listed(uptime_seconds=0.5, restarts=3)  # stopped and started between two reads
    assert e.state_of("relay") == "starting" and state.alarms(2) == []
    listed(uptime_seconds=90.0, restarts=3)  # and never answered since
    assert e.state_of("relay") == "unreachable"


async def test_80x24_leaves_columns_out_but_the_line_under_has_them(
    supervisor: FakeAdmin, relay_guest: FakeAdmin
) -> None:
    app = make_dashboard(supervisor.url)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("6")
        await settle(pilot)
        table = app.screen.query_one("#guests", Table)
        # an address is shown whole or not at all: the supervisor's and the admin
        # endpoint's are left out, for the line under the table
        assert table.shown == [
            "Guest", "Service", "State", "Uptime", "Restarts", "Memory", "CPU", "Last exit"
        ]  # fmt: skip
        text = screen_text(app)
        assert "Guests (s starts the one under the cursor, x stops it)" in text
        detail = (
            f"relay: service relay · state running · uptime 1h 00m · restarts 2 · memory"
            f" 147 MB · cpu 93.2 s · ram 128 MB · admin {relay_guest.url[7:]} (up) · last"
            f" exit qemu exit code 1 · supervisor {supervisor.url[7:]}"
        )
        assert str(app.screen.query_one("#detail", Lines).render()) == detail
        assert " ".join(text.split()).count(detail) == 1  # every row of it on the screen


async def test_a_guest_claiming_to_supervise_takes_nothing_over(
    supervisor: FakeAdmin, relay_guest: FakeAdmin
) -> None:
    """A compromised guest answers as a supervisor whose guests are its host's own admin
    endpoint (stopped, say) and some loopback port: its list is never read, so the host's
    rows stay its own and no port the guest names is sent the token."""
    with serve(FakeAdmin()) as probe:
        relay_guest.guests = [
            guest("host", "mirror", supervisor.url, state="stopped"),
            guest("probe", "relay", probe.url),
        ]
        app = make_dashboard(supervisor.url)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await app.poll(supervisor.url[7:])  # the host read again, after the guest
            await app.poll("guest relay")
            await settle(pilot)
            assert [r[:3] for r in rows(app, "#services")] == [
                ["mirror", "10.0.0.2:8000", "up"],
                ["vm", "", "up"],
                ["relay", "10.0.0.2:9000", "up"],
                ["vm", "", "up"],
            ]
            assert app.state.endpoints[supervisor.url[7:]].guest_of is None
            assert list(app.clients) == [supervisor.url[7:], "guest relay"]
            assert (
                "! guest relay: a guest's own list of guests is not read (only an endpoint"
                " named with --connect supervises guests)"
            ) in alarms(app)
            await pilot.press("6")
            await settle(pilot)
            assert [r[0] for r in rows(app, "#guests")] == ["relay", "nameserver"]
    assert probe.seen == []
    assert not [s for s in relay_guest.seen if s[1].startswith("/vm/")]


async def test_a_guest_named_too_is_shown_as_the_guest_it_is(
    supervisor: FakeAdmin, relay_guest: FakeAdmin
) -> None:
    """Both named with --connect: the guest's endpoint is watched once, as its guest; a
    supervisor that lists itself as a guest is not taken for one."""
    assert supervisor.guests is not None
    supervisor.guests.append(guest("itself", "mirror", supervisor.url))
    app = make_dashboard(supervisor.url, relay_guest.url)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await app.poll(supervisor.url[7:])  # the guest's status read by now
        await settle(pilot)
        sup, relay = supervisor.url[7:], relay_guest.url[7:]
        assert app.state.endpoints[relay].guest_of == (sup, "relay")
        assert app.state.endpoints[sup].guest_of is None
        assert list(app.clients) == [sup, relay]  # its stopped nameserver is not watched


async def test_a_guest_named_with_connect_is_sent_its_own_token_not_its_hosts(
    supervisor: FakeAdmin, relay_guest: FakeAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`retreatkit tui --connect GUEST_URL` with no token given sent the guest this
    machine's token, which opens the supervisor and every guest and service here."""
    monkeypatch.setattr(run, "here", lambda: [supervisor.url])  # noted on this machine
    monkeypatch.setattr(run, "local_token", lambda: TOKEN)
    found = await run.endpoints([relay_guest.url], None, find=False)
    assert [(e.url, e.token) for e in found] == [(relay_guest.url, guest_token("relay"))]
    assert await run.reachable(found) == []
    assert {s[2] for s in relay_guest.seen} == {f"Bearer {guest_token('relay')}"}
    assert ("GET", "/vm/guests/relay/token", f"Bearer {TOKEN}", "") in supervisor.seen
    # the supervisor named beside it keeps this machine's token
    both = await run.endpoints([supervisor.url, relay_guest.url], None, find=False)
    assert [e.token for e in both] == [TOKEN, guest_token("relay")]
    # a token given is the organiser's choice, sent as given
    given = await run.endpoints([relay_guest.url], "organisers-own-token", find=False)
    assert [e.token for e in given] == ["organisers-own-token"]
    # named by another of this machine's names for the same port: the same guest
    other = relay_guest.url.replace("127.0.0.1", "localhost")
    found = await run.endpoints([other], None, find=False)
    assert [(e.url, e.token) for e in found] == [(other, guest_token("relay"))]
    # the supervisor by another name is still this machine's own endpoint
    same = supervisor.url.replace("127.0.0.1", "localhost")
    assert [e.token for e in await run.endpoints([same], None, find=False)] == [TOKEN]


async def test_an_endpoint_here_that_no_supervisor_can_vouch_for_is_sent_no_token(
    supervisor: FakeAdmin, relay_guest: FakeAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port of this machine where nothing noted here listens may be a guest's forward:
    with its supervisor unable to answer, it was sent this machine's token."""
    monkeypatch.setattr(run, "here", lambda: [supervisor.url])
    monkeypatch.setattr(run, "local_token", lambda: TOKEN)
    supervisor.mode = "unauthorized"  # it refuses this machine's token
    found = await run.endpoints([relay_guest.url], None, find=False)
    assert [(e.url, e.token) for e in found] == [(relay_guest.url, None)]
    # one on another host is the organiser's to name, as before
    remote = "http://192.0.2.7:8080"
    assert [e.token for e in await run.endpoints([remote], None, find=False)] == [TOKEN]


async def test_a_guest_whose_supervisor_keeps_its_token_is_sent_none(
    supervisor: FakeAdmin, relay_guest: FakeAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "here", lambda: [supervisor.url])
    monkeypatch.setattr(run, "local_token", lambda: TOKEN)
    supervisor.gives_tokens = False
    found = await run.endpoints([relay_guest.url], None, find=False)
    assert [(e.url, e.token) for e in found] == [(relay_guest.url, None)]
    await run.reachable(found)
    assert relay_guest.seen and {s[2] for s in relay_guest.seen} == {None}  # no token at all
