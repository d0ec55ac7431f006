"""The relay's connection lifecycle in process, on a clock the test turns: exact times."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from retreatkit.peers import limited_as
from retreatkit.relay import status
from retreatkit.relay.lifecycle import (
    HANDSHAKE_BYTES,
    Action,
    Arm,
    Close,
    Conn,
    Ending,
    Phase,
    RelayCore,
    Warn,
    Write,
)
from retreatkit.relay.matching import Limits

LIMITS = Limits(
    per_ip=4,
    waiting=4,
    waiting_per_ip=3,
    handshake_timeout=10.0,
    wait_timeout=600.0,
    idle_timeout=300.0,
    failed_joins=2,
    failed_join_wait=15.0,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Relay:
    """A core with a turnable clock, and what it asked each connection to do."""

    def __init__(self, limits: Limits = LIMITS, unpaired: int | None = None) -> None:
        self.clock = Clock()
        plates = itertools.count(0)
        self.core = RelayCore(
            limits,
            clock=self.clock,
            wall=lambda: 1.7e9,
            randbelow=lambda n: next(plates) % n,
            unpaired=unpaired,
        )
        self.ports = itertools.count(40000)

    def connect(self, ip: str = "10.0.0.1") -> tuple[Conn, list[Action]]:
        return self.core.connect(ip, f"{ip}:{next(self.ports)}", None)

    def line(self, text: str, ip: str = "10.0.0.1") -> tuple[Conn, list[Action]]:
        conn, _ = self.connect(ip)
        return conn, self.core.received(conn, text.encode() + b"\n")

    def pair(self, sender_ip: str = "10.0.0.1", receiver_ip: str = "10.0.0.2") -> tuple[Conn, Conn]:
        sender, actions = self.line("bob/1 send", sender_ip)
        nameplate = written(actions)[0].split()[1]
        receiver, _ = self.line(f"bob/1 recv {nameplate}", receiver_ip)
        assert sender.phase is receiver.phase is Phase.PAIRED
        return sender, receiver

    def turn(self, seconds: float) -> None:
        self.clock.now += seconds


def written(actions: list[Action]) -> list[str]:
    return [a.data.decode() for a in actions if isinstance(a, Write)]


def closed(actions: list[Action]) -> list[Ending | None]:
    return [a.conn.ending for a in actions if isinstance(a, Close)]


def armed(actions: list[Action]) -> list[float | None]:
    return [a.at for a in actions if isinstance(a, Arm)]


# -- timers -----------------------------------------------------------------------------


def test_handshake_timeout_fires_at_its_time_and_not_before() -> None:
    r = Relay()
    conn, actions = r.connect()
    assert armed(actions) == [1010.0]
    r.turn(9.999)  # a loop that wakes early is sent back to sleep until the deadline
    assert armed(r.core.expire(conn)) == [1010.0]
    r.turn(0.001)
    actions = r.core.expire(conn)
    assert written(actions) == ["error handshake timed out\n"]
    assert closed(actions) == [Ending.HANDSHAKE_TIMEOUT]
    assert r.core.expire(conn) == []  # once closed, a stray timer does nothing


def test_half_a_line_buys_no_time() -> None:
    r = Relay()
    conn, _ = r.connect()
    r.turn(9)
    assert r.core.received(conn, b"bob/1 se") == []
    r.turn(1)
    assert closed(r.core.expire(conn)) == [Ending.HANDSHAKE_TIMEOUT]


def test_wait_timeout_lets_a_lonely_sender_go() -> None:
    r = Relay()
    sender, actions = r.line("bob/1 send")
    assert written(actions) == ["ok 1\n"] and armed(actions) == [1600.0]
    r.turn(600)
    actions = r.core.expire(sender)
    assert written(actions) == ["error nobody came for this nameplate\n"]
    assert closed(actions) == [Ending.WAIT_TIMEOUT]
    assert r.core.matcher.waiting == 0


def test_idle_timeout_counts_from_the_last_byte_either_way() -> None:
    r = Relay()
    sender, receiver = r.pair()
    assert receiver.deadline == 1300.0 and sender.deadline is None  # one timer per pair
    r.turn(200)
    r.core.forwarded(receiver, 10)
    r.turn(100)
    assert armed(r.core.expire(receiver)) == [1500.0]
    r.turn(199)
    r.core.forwarded(sender, 10)
    r.turn(200)
    assert armed(r.core.expire(receiver)) == [1799.0]
    r.turn(100)
    actions = r.core.expire(receiver)
    assert written(actions) == []  # paired: no error line into the peers' stream
    assert closed(actions) == [Ending.IDLE_TIMEOUT, Ending.IDLE_TIMEOUT]


def test_bytes_reported_late_count_from_when_they_moved() -> None:
    """The spliced path collects counts after the fact: the idle timer keeps to the time
    the bytes moved, not the time they were counted, and an older time moves nothing back."""
    r = Relay()
    sender, receiver = r.pair()
    r.turn(250)
    r.core.forwarded(sender, 10, at=1100.0)  # counted at 1250
    r.turn(50)
    assert armed(r.core.expire(receiver)) == [1400.0]
    r.core.forwarded(receiver, 5, at=1050.0)
    assert armed(r.core.expire(receiver)) == [1400.0]
    assert sender.transfer is not None
    assert (sender.sent, receiver.sent, sender.transfer.bytes) == (10, 5, 15)
    r.turn(100)
    assert closed(r.core.expire(receiver)) == [Ending.IDLE_TIMEOUT, Ending.IDLE_TIMEOUT]


def test_a_pair_that_keeps_talking_is_never_idle() -> None:
    r = Relay()
    sender, receiver = r.pair()
    for _ in range(1000):
        r.turn(299)
        r.core.forwarded(sender, 1)
        assert closed(r.core.expire(receiver)) == []
    assert receiver.phase is Phase.PAIRED


# -- request lines ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "answer", "ending"),
    [
        (b"bob/1 send " + b"7" * 200, "error handshake line too long\n", Ending.BAD_REQUEST),
        # the newline in time, carriage returns before it: 129 bytes as received
        (b"bob/1 send 5" + b"\r" * 116 + b"\n", "error handshake line too long\n",
         Ending.BAD_REQUEST),
        (b"bob/1 send 5" + b"\r" * 200 + b"\n", "error handshake line too long\n",
         Ending.BAD_REQUEST),
        (b"bob/2 send\n", "error not a bob/1 request\n", Ending.BAD_REQUEST),
        (b"\xff\n", "error not a bob/1 request\n", Ending.BAD_REQUEST),
        (b"bob/1 recv\n", "error recv needs a nameplate\n", Ending.BAD_REQUEST),
        # one nameplate, one spelling: `07` would never meet `7`
        (b"bob/1 send 0555\n", "error nameplate 0555 has a leading zero\n", Ending.BAD_REQUEST),
        (b"bob/1 recv 07\n", "error nameplate 07 has a leading zero\n", Ending.BAD_REQUEST),
        (b"bob/1 send\nhello", "error send nothing until paired\n", Ending.BAD_REQUEST),
        (b"bob/1 recv 77\n", "error no sender is waiting on nameplate 77\n", Ending.NO_SENDER),
    ],
)  # fmt: skip
def test_bad_requests_get_one_error_line(sent: bytes, answer: str, ending: Ending) -> None:
    r = Relay()
    conn, _ = r.connect()
    actions = r.core.received(conn, sent)
    assert written(actions) == [answer]
    assert closed(actions) == [ending]
    assert r.core.handshakes_refused == 1


def test_a_request_line_is_128_bytes_at_most_as_received_in_pieces() -> None:
    r = Relay()
    conn, _ = r.connect()
    assert r.core.received(conn, b"bob/1 send 5" + b"\r" * 115) == []  # 127: may go on
    assert written(r.core.received(conn, b"\n")) == ["ok 5\n"]  # 128 with its newline
    conn, _ = r.connect()
    assert r.core.received(conn, b"b" * 127) == []
    actions = r.core.received(conn, b"c" * 999 + b"\n")
    assert written(actions) == ["error handshake line too long\n"]
    assert closed(actions) == [Ending.BAD_REQUEST]


def test_a_waiting_sender_that_talks_is_closed() -> None:
    r = Relay()
    sender, _ = r.line("bob/1 send")
    actions = r.core.received(sender, b"early")
    assert written(actions) == ["error send nothing until paired\n"]
    assert closed(actions) == [Ending.BAD_REQUEST]
    assert r.core.matcher.waiting == 0


def test_who_left_when() -> None:
    r = Relay()
    early, _ = r.connect()
    sender, _ = r.line("bob/1 send")
    assert closed(r.core.lost(early)) == [Ending.LEFT_EARLY]
    assert closed(r.core.lost(sender)) == [Ending.SENDER_LEFT]
    assert r.core.lost(sender) == []  # reported twice: counted once
    assert r.core.matcher.waiting == 0 and r.core.conns == set()


# -- pairs: what the relay can tell from byte counts -----------------------------------------


def test_pair_past_the_key_exchange_is_completed_and_refunds_the_join() -> None:
    r = Relay()
    sender, receiver = r.pair()
    r.core.forwarded(sender, 37)
    r.core.forwarded(receiver, 73)
    r.core.forwarded(sender, 36)
    assert not sender.transfer.confirmed  # type: ignore[union-attr]
    r.core.forwarded(sender, 1)  # a byte past PAKE and CONFIRM: the OFFER
    assert sender.transfer.confirmed  # type: ignore[union-attr]
    actions = r.core.lost(receiver)
    assert closed(actions) == [Ending.COMPLETED, Ending.COMPLETED]
    assert (r.core.transfers_completed, r.core.handshakes_failed) == (1, 0)
    assert r.core.bytes_relayed == HANDSHAKE_BYTES + 1 + 73
    assert r.core.matcher._buckets["10.0.0.2"].tokens == 2  # the join's token came back


def test_pair_that_ends_in_the_key_exchange_failed() -> None:
    r = Relay()
    sender, receiver = r.pair()
    r.core.forwarded(sender, HANDSHAKE_BYTES)
    r.core.forwarded(receiver, HANDSHAKE_BYTES)
    assert closed(r.core.lost(sender)) == [Ending.KEY_EXCHANGE_FAILED] * 2
    assert (r.core.transfers_completed, r.core.handshakes_failed) == (0, 1)
    assert r.core.matcher._buckets["10.0.0.2"].tokens == 1  # the guess cost the receiver
    assert r.core.matcher.recent_failures() == 1


# -- limits -----------------------------------------------------------------------------------


def test_a_pair_the_relay_cannot_carry_is_busy_and_nobody_s_guess() -> None:
    r = Relay()
    sender, receiver = r.pair()
    actions = r.core.no_room(sender)
    assert written(actions) == []  # paired already: no line into the peers' stream
    assert closed(actions) == [Ending.BUSY, Ending.BUSY]
    assert (r.core.transfers_completed, r.core.handshakes_failed) == (0, 0)
    assert r.core.matcher._buckets["10.0.0.2"].tokens == 2  # the join's token came back
    assert r.core.matcher.recent_failures() == 0
    assert r.core.recent[0].ended is Ending.BUSY and not r.core.active
    assert r.core.no_room(receiver) == [] and r.core.lost(sender) == []


def test_per_ip_connections() -> None:
    r = Relay()
    for _ in range(4):
        r.connect("10.0.0.9")
    _conn, actions = r.connect("10.0.0.9")
    assert written(actions) == ["error too many connections from 10.0.0.9\n"]
    assert closed(actions) == [Ending.REFUSED]
    r.connect("10.0.0.8")  # another address is not concerned


def test_connections_not_yet_paired_are_bounded_in_all_and_logged_once_a_minute() -> None:
    r = Relay(unpaired=3)
    sender, _ = r.line("bob/1 send", "10.0.0.1")  # waiting
    r.connect("10.0.0.2")  # before its request line
    receiver, _ = r.connect("10.0.0.3")
    turned, actions = r.connect("10.0.0.2")
    assert written(actions) == ["busy the relay is full; try again later\n"]
    assert closed(actions) == [Ending.BUSY]
    assert [a.text for a in actions if isinstance(a, Warn)] == [
        "3 connections are not yet paired, the most the open-file limit leaves room for:"
        " new ones are told busy (raise the limit, ulimit -n); most from 10.0.0.1 (1),"
        " 10.0.0.2 (1), 10.0.0.3 (1)"
    ]
    assert r.core.matcher.open_connections == 3 and turned not in r.core.conns
    _, actions = r.connect("10.0.0.4")
    assert closed(actions) == [Ending.BUSY] and not [a for a in actions if isinstance(a, Warn)]
    # a pair is no longer waiting: its two connections make room for two more
    r.core.received(receiver, f"bob/1 recv {sender.nameplate}\n".encode())
    assert r.core.unpaired == 1
    for ip in ("10.0.0.5", "10.0.0.6"):
        assert closed(r.connect(ip)[1]) == []
    r.turn(59.9)
    assert not [a for a in r.connect("10.0.0.7")[1] if isinstance(a, Warn)]
    r.turn(0.1)
    assert [a.text for a in r.connect("10.0.0.7")[1] if isinstance(a, Warn)] == [
        "3 connections are not yet paired, the most the open-file limit leaves room for:"
        " new ones are told busy (raise the limit, ulimit -n); most from 10.0.0.2 (1),"
        " 10.0.0.5 (1), 10.0.0.6 (1)"
    ]
    assert r.core.ended[Ending.BUSY] == 4


def test_waiting_senders_per_address_and_in_all() -> None:
    r = Relay()
    for _ in range(3):
        r.line("bob/1 send", "10.0.0.1")
    _, actions = r.line("bob/1 send", "10.0.0.1")
    assert written(actions) == ["error too many senders waiting from 10.0.0.1\n"]
    r.line("bob/1 send", "10.0.0.2")
    _, actions = r.line("bob/1 send 55", "10.0.0.3")
    assert written(actions) == ["busy the relay is full; try again later\n"]
    assert closed(actions) == [Ending.BUSY]


def test_stop_closes_everything() -> None:
    r = Relay()
    r.connect()
    r.line("bob/1 send", "10.0.0.3")
    r.pair("10.0.0.4", "10.0.0.5")
    actions = r.core.stop()
    assert closed(actions) == [Ending.RELAY_STOPPED] * 4
    # the two not yet paired are told why; the pair's stream is the peers' own: only cut
    assert written(actions) == ["error it is stopping (its organiser stopped it)\n"] * 2
    assert r.core.conns == set() and r.core.matcher.open_connections == 0
    assert r.core.handshakes_failed == 0


# -- what /status and /relay/transfers show ---------------------------------------------------


def test_status_section_fields() -> None:
    r = Relay()
    sender, _receiver = r.pair()
    r.core.forwarded(sender, 1000)
    r.turn(2)
    r.line("bob/1 recv 99", "10.0.0.7")
    doc = status.section(r.core)
    assert doc == {
        "up": True,
        "uptime_seconds": 2.0,
        "connections_open": 2,
        "warnings": [],
        "waiting_senders": 0,
        "transfers_active": 1,
        "pairs_limit": 256,
        "transfers_completed": 0,
        "bytes_relayed": 1000,
        "handshakes_refused": 1,
        "handshakes_failed": 0,
        "ended": {e.value: int(e is Ending.NO_SENDER) for e in Ending},
    }
    listed = status.transfers(r.core)
    assert listed == {
        "active": [
            {
                "nameplate": "1",
                "bytes": 1000,
                "started_at": "2023-11-14T22:13:20Z",
                "duration_seconds": 2.0,
                "rate_bytes_per_second": 500,
            }
        ],
        "recent": [],
    }
    r.core.lost(sender)
    assert status.transfers(r.core)["recent"][0]["ended"] == "completed"


def test_transfer_lists_are_bounded() -> None:
    r = Relay(replace(LIMITS, per_ip=1000, waiting=1000, waiting_per_ip=1000, failed_joins=1000))
    senders = [r.pair()[0] for _ in range(150)]
    for sender in senders:
        r.core.forwarded(sender, HANDSHAKE_BYTES + 1)
    for sender in senders[:110]:
        r.core.lost(sender)
    listed = status.transfers(r.core)
    assert len(listed["active"]) == 40 and len(listed["recent"]) == 100
    for _ in range(60):
        r.pair()
    assert len(status.transfers(r.core)["active"]) == 100


def test_full_relay_warns_the_organiser() -> None:
    r = Relay(replace(LIMITS, per_ip=10, waiting=10, waiting_per_ip=10))
    for ip, n in (("10.0.0.1", 1), ("10.0.0.2", 4), ("10.0.0.3", 2), ("10.0.0.4", 2)):
        for _ in range(n):
            r.line("bob/1 send", ip)
    assert status.section(r.core)["warnings"] == [
        "9 senders are waiting and the limit is 10: new senders are turned away when it is"
        " reached (raise [relay] waiting); most from 10.0.0.2 (4), 10.0.0.3 (2), 10.0.0.4 (2)"
    ]


def test_pairs_past_the_limit_are_told_busy_and_the_organiser_warned() -> None:
    """Each pair holds two sockets and two splice threads: past `pairs`, a sender is told
    `busy` (it meets its receiver on the LAN instead) and so is a receiver, before its
    join costs it a token or burns the nameplate."""
    r = Relay(replace(LIMITS, per_ip=10, waiting=10, waiting_per_ip=10, pairs=2))
    waiting, actions = r.line("bob/1 send", "10.0.0.5")
    nameplate = written(actions)[0].split()[1]
    r.pair("10.0.0.1", "10.0.0.2")
    assert status.section(r.core)["warnings"] == []
    r.pair("10.0.0.1", "10.0.0.3")
    busy = "busy the relay carries as many transfers as it may (2); try again later\n"
    for line in ("bob/1 send", f"bob/1 recv {nameplate}"):
        _, actions = r.line(line, "10.0.0.4")
        assert written(actions) == [busy]
        assert closed(actions) == [Ending.BUSY]
    assert waiting.phase is Phase.WAITING  # its nameplate was not touched
    assert status.section(r.core)["warnings"] == [
        "2 transfers are paired and the limit is 2: new ones are turned away when it is"
        " reached (raise [relay] pairs); most connections from 10.0.0.1 (2), 10.0.0.2 (1),"
        " 10.0.0.3 (1)"
    ]
    assert status.section(r.core)["ended"]["busy"] == 2


def test_an_address_whose_joins_end_offers_in_their_key_exchange_is_logged() -> None:
    """The relay cannot see a PAKE fail, but a pair that ends before the sender went past
    its key exchange failed it: one such join is a typo, three from one address in ten
    minutes are logged with the address (and again at 6, 12...), however many addresses
    the guesser spreads them over."""
    r = Relay(replace(LIMITS, per_ip=20, waiting=20, waiting_per_ip=20, failed_joins=20))
    said: list[str] = []
    for n in range(1, 7):
        sender, receiver = r.pair("10.0.0.1", "10.0.0.9")
        r.core.forwarded(sender, HANDSHAKE_BYTES)  # PAKE and CONFIRM, and no more
        actions = r.core.lost(sender)  # the sender closed: the receiver's key was wrong
        assert closed(actions) == [Ending.KEY_EXCHANGE_FAILED] * 2
        said += [a.text for a in actions if isinstance(a, Warn)]
        if n == 3:
            assert said == [
                "10.0.0.9 joined 3 waiting offers in 10 minutes whose key exchange then"
                " failed, and each ended that offer: a wrong passphrase, or someone there"
                " guessing nameplates"
            ]
    assert len(said) == 2 and said[1].startswith("10.0.0.9 joined 6 waiting offers")
    # a completed transfer from another address says nothing
    sender, receiver = r.pair("10.0.0.1", "10.0.0.8")
    r.core.forwarded(sender, HANDSHAKE_BYTES + 1)
    assert not [a for a in r.core.lost(receiver) if isinstance(a, Warn)]


def test_two_attendees_of_one_ipv6_64_are_limited_apart() -> None:
    """A LAN's SLAAC /64 is every attendee on it: one's limit is not the room's."""
    r = Relay()
    for _ in range(4):  # per_ip = 4
        r.connect("2001:db8:1:2::10")
    _conn, actions = r.connect("2001:db8:1:2::10")
    assert written(actions) == ["error too many connections from 2001:db8:1:2::10\n"]
    _conn, actions = r.connect("2001:db8:1:2::11")  # the next attendee, same /64
    assert written(actions) == []


@pytest.mark.parametrize(
    ("ip", "counted"),
    [
        ("10.0.0.9", "10.0.0.9"),
        ("::ffff:10.0.0.9", "10.0.0.9"),  # an IPv4 client of a dual-stack socket
        ("fd88::1", "fd88::1"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2:aaaa:bbbb:cccc:dddd"),
        ("fe80::1%eth0", "fe80::1"),
        ("?", "?"),
    ],
)
def test_limited_as(ip: str, counted: str) -> None:
    assert limited_as(ip) == counted
