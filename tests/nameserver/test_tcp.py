"""TCP fairness with a manual clock: framing, deadlines only answered queries move, caps,
REFUSED outside the LAN."""

from __future__ import annotations

import asyncio
import logging
import struct

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from retreatkit.nameserver.fakes import Hold, ManualClock, UDPClient, Zone, make_query, resolver
from retreatkit.nameserver.gate import LAN, LOG_AGAIN, Gate
from retreatkit.nameserver.local import parse_record
from retreatkit.nameserver.stats import FORMERR, FORWARDED, REFUSED, SERVFAIL
from retreatkit.nameserver.tcp import (
    MAX_OUTSIDERS,
    MAX_PENDING,
    MAX_UNSENT,
    Connections,
    Framer,
    TCPServer,
)

ZONE = Zone("$TTL 60\n@ SOA ns.test. h.test. 1 3600 600 86400 60\nwww A 198.51.100.7\n")
UP = ("192.0.2.53", 53)


class Stream:
    """A stream transport in memory, with asyncio's flow control: past the high-water
    mark of bytes the client has not read, the protocol is told to pause writing."""

    def __init__(self, ip: str, protocol: TCPServer | None = None) -> None:
        self.ip = ip
        self.protocol = protocol  # told of its writes' flow control when set
        self.written = b""
        self.closed = False
        self.aborted = False
        self.high = 65536
        self.unread = 0  # bytes written that the client has not read
        self.most_unread = 0

    def get_extra_info(self, name: str) -> object:
        return (self.ip, 40000) if name == "peername" else None

    def set_write_buffer_limits(self, high: int) -> None:
        self.high = high

    def write(self, data: bytes) -> None:
        self.written += data
        self.unread += len(data)
        self.most_unread = max(self.most_unread, self.unread)
        if self.protocol is not None and self.unread > self.high and not self.protocol.blocked:
            self.protocol.pause_writing()

    def read(self) -> None:
        """The client reads what waits for it."""
        self.unread = 0
        if self.protocol is not None and self.protocol.blocked:
            self.protocol.resume_writing()

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    paused = False  # reading

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def framed(name: str) -> bytes:
    wire = make_query(name).to_wire()
    return struct.pack(">H", len(wire)) + wire


def test_framer_pipelining_and_a_deadline_only_answered_queries_move() -> None:
    framer = Framer(now=0.0, idle=10.0)
    two = framed("a.test") + framed("b.test")
    assert len(framer.feed(two[:5], 1.0)) == 0
    assert len(framer.feed(two[5:], 2.0)) == 2  # pipelined: both at once
    assert framer.deadline == 10.0  # a message is no answered query yet
    framer.answered(2.0)
    assert framer.deadline == 12.0
    trickle = framed("c.test")
    for i, byte in enumerate(trickle[:-1]):  # a byte every 8 s: never a whole message
        assert framer.feed(bytes([byte]), 3.0 + 8 * i) == []
    assert framer.expired(12.0)


async def test_connections_capped_per_address_and_swept_at_their_deadline() -> None:
    r, _, _ = resolver({UP: ZONE.answer})
    clock = ManualClock(0.0)
    conns = Connections(clock, idle=10.0, limit=5, per_address=2)
    gate = Gate(list(LAN), 0)

    def connect(ip: str) -> tuple[TCPServer, Stream]:
        server, stream = TCPServer(r, gate, conns), Stream(ip)
        server.connection_made(stream)  # type: ignore[arg-type]
        return server, stream

    a1, _ = connect("10.0.0.1")
    connect("10.0.0.1")
    _, refused = connect("10.0.0.1")
    assert refused.aborted and conns.refused == 1  # one host holds at most two
    b, b_stream = connect("10.0.0.2")
    assert not b_stream.aborted
    b.data_received(framed("www.test"))
    await asyncio.gather(*b.tasks)
    (length,) = struct.unpack_from(">H", b_stream.written)
    assert dns.message.from_wire(b_stream.written[2 : 2 + length]).answer
    clock.advance(5)
    a1.data_received(framed("www.test")[:4])  # a partial message buys no time
    clock.advance(6)
    assert conns.sweep(clock()) == 3  # a1, a2 and b: past their deadlines
    assert len(conns.open) == 0 and not conns.by_address


async def test_servers_never_share_connection_counts() -> None:
    clock = ManualClock(0.0)
    one, two = Connections(clock, per_address=1), Connections(clock, per_address=1)
    r, _, _ = resolver({UP: ZONE.answer})
    gate = Gate(list(LAN), 0)
    for conns in (one, two):
        server = TCPServer(r, gate, conns)
        stream = Stream("10.0.0.1")
        server.connection_made(stream)  # type: ignore[arg-type]
        assert not stream.aborted  # the first connection of each server


async def test_outside_the_lan_one_refused_then_closed_and_never_the_lans_room() -> None:
    r, transport, _ = resolver({UP: ZONE.answer})
    clock = ManualClock(0.0)
    conns = Connections(clock, idle=10.0, limit=2, per_address=16)
    gate = Gate(["10.0.0.0/8"], 0)

    def connect(ip: str) -> tuple[TCPServer, Stream]:
        server, stream = TCPServer(r, gate, conns), Stream(ip)
        server.connection_made(stream)  # type: ignore[arg-type]
        return server, stream

    outsider, stream = connect("203.0.113.9")
    assert not stream.aborted and not conns.open  # held apart from the LAN's connections
    asked = make_query("www.test", flags=dns.flags.RD | dns.flags.AD).to_wire()  # as dig asks
    two = (struct.pack(">H", len(asked)) + asked) * 2
    outsider.data_received(two[:3])
    assert stream.written == b"" and not stream.closed  # no whole query yet
    outsider.data_received(two[3:])  # two pipelined: one answer, then the door closes
    (length,) = struct.unpack_from(">H", stream.written)
    answer = dns.message.from_wire(stream.written[2 : 2 + length])
    assert len(stream.written) == 2 + length and stream.closed
    assert answer.rcode() == dns.rcode.REFUSED and answer.flags & dns.flags.AD == 0
    assert answer.question == make_query("www.test").question
    assert transport.asked() == 0 and r.stats.counts[REFUSED] == 1
    assert not conns.outsiders and not conns.by_address
    for _ in range(MAX_OUTSIDERS):
        connect(f"203.0.113.{len(conns.outsiders) % 200 + 1}")
    assert connect("198.51.100.1")[1].aborted  # outsiders full: reset, as before
    assert not connect("10.0.0.1")[1].aborted  # the LAN's room is untouched
    clock.advance(10)
    assert conns.sweep(clock()) == MAX_OUTSIDERS + 1  # silent outsiders go at the deadline


async def test_a_full_server_is_one_line_per_address_and_one_for_the_cap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    r, _, _ = resolver({UP: ZONE.answer})
    clock = ManualClock(0.0)
    conns = Connections(clock, limit=3, per_address=2)
    gate = Gate(list(LAN), 0)

    def connect(ip: str) -> Stream:
        stream = Stream(ip)
        TCPServer(r, gate, conns).connection_made(stream)  # type: ignore[arg-type]
        return stream

    with caplog.at_level(logging.WARNING, logger="retreatkit.nameserver"):
        for ip in ("10.0.0.1",) * 5 + ("10.0.0.2",) * 4:
            connect(ip)
        clock.advance(LOG_AGAIN)
        assert connect("10.0.0.1").aborted  # still full, a while later: said again
    assert conns.refused == 7
    assert [r.getMessage() for r in caplog.records] == [
        "10.0.0.1 holds 2 TCP connections, the most one address may: its next ones are"
        " closed at once",
        "3 TCP connections are open, the most at once: new ones are closed at once"
        " (10.0.0.2 was the first turned away)",
        "10.0.0.1 holds 2 TCP connections, the most one address may: its next ones are"
        " closed at once",
    ]


async def test_a_full_server_closes_the_idlest_of_the_biggest_holder_for_a_new_host(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two addresses (one laptop's, say) hold every connection there is, asking now and
    then: a host that comes later was turned away for as long as they kept at it."""
    r, _, _ = resolver({UP: ZONE.answer})
    clock = ManualClock(0.0)
    conns = Connections(clock, idle=10.0, limit=6, per_address=3)
    gate = Gate(list(LAN), 0)

    def connect(ip: str) -> tuple[TCPServer, Stream]:
        server, stream = TCPServer(r, gate, conns), Stream(ip)
        server.connection_made(stream)  # type: ignore[arg-type]
        return server, stream

    held = [connect("10.0.0.1") for _ in range(3)]
    clock.advance(1)
    held += [connect("10.0.0.2") for _ in range(3)]
    clock.advance(4)
    for server, _ in held[:2] + held[3:5]:  # all but one of each keep asking
        server.data_received(framed("www.test"))
        await asyncio.gather(*server.tasks)
    with caplog.at_level(logging.WARNING, logger="retreatkit.nameserver"):
        _, newcomer = connect("10.0.0.9")
        assert not newcomer.aborted
        assert [s.aborted for _, s in held] == [False, False, True, False, False, False]
        _, third = connect("10.0.0.3")  # the other one holds the most now
        assert not third.aborted
        assert [s.aborted for _, s in held] == [False, False, True, False, False, True]
        _, again = connect("10.0.0.1")  # holds 2 of 6 now: no fairer to let it in
        assert again.aborted
    assert sorted(conns.by_address.values()) == [1, 1, 2, 2]
    assert [rec.getMessage() for rec in caplog.records][:1] == [
        "6 TCP connections are open, the most at once, 3 of them 10.0.0.1's: its idlest"
        " ones are closed for other hosts (10.0.0.9 was the first)"
    ]


async def test_queries_wait_while_their_answers_wait_on_the_client() -> None:
    """However many queries one read brings, MAX_PENDING are worked on; while the client
    reads no answers (asyncio's pause_writing), no more are taken, those taken are not
    answered but wait again, and reading stays off."""
    r, _, _ = resolver({UP: ZONE.answer}, records=[parse_record("wiki.retreat.lan=10.0.0.9")])
    server, stream = (
        TCPServer(r, Gate(list(LAN), 0), Connections(ManualClock(0.0))),
        Stream("10.0.0.1"),
    )
    server.connection_made(stream)  # type: ignore[arg-type]
    server.data_received(framed("wiki.retreat.lan") * 100)
    assert server.pending == MAX_PENDING and stream.paused
    server.pause_writing()
    await asyncio.gather(*server.tasks)
    answered = stream.written.count(b"\x04wiki")
    assert (answered, server.pending, len(server.again), stream.paused) == (0, 0, MAX_PENDING, True)
    server.resume_writing()  # the client reads again: the next queries are taken
    assert server.pending == MAX_PENDING
    while server.pending:
        await asyncio.gather(*server.tasks)
    assert stream.written.count(b"\x04wiki") == 100 and not stream.paused


async def test_an_answer_that_went_back_in_line_is_counted_once() -> None:
    """Queries whose answers came from upstream after the client had stopped reading go
    back in line and are answered once it reads: each counted once, in /status and the
    query log (before: again when answered, 20031 answers for 20000 questions). One name
    is a cache hit when taken again, the other (SERVFAIL) is resolved again."""
    uplink = asyncio.Event()

    def script(query: dns.message.Message) -> Hold:
        if query.question[0].name.to_text() == "www.test.":
            return Hold(ZONE.answer(query), uplink)
        failed = dns.message.make_response(query)
        failed.set_rcode(dns.rcode.SERVFAIL)
        return Hold(failed, uplink)

    r, transport, _ = resolver({UP: script})
    server, stream = (
        TCPServer(r, Gate(list(LAN), 0), Connections(ManualClock(0.0))),
        Stream("10.0.0.1"),
    )
    server.connection_made(stream)  # type: ignore[arg-type]
    server.data_received((framed("www.test") + framed("bad.test")) * 3)
    async with asyncio.timeout(10):
        while transport.asked() < 2:  # all six wait on the upstream (two questions)
            await asyncio.sleep(0)
    server.pause_writing()  # the client stops reading
    uplink.set()
    await asyncio.gather(*server.tasks)
    assert (stream.written, len(server.again), r.stats.queries) == (b"", 6, 6)
    server.resume_writing()
    while server.pending:
        await asyncio.gather(*server.tasks)
    assert stream.written.count(b"\x03www") + stream.written.count(b"\x03bad") == 6
    _, logged = r.stats.since(-1, 100, str)
    assert (r.stats.queries, r.stats.counts[FORWARDED], r.stats.counts[SERVFAIL]) == (6, 3, 3)
    assert sorted((q["name"], q["answer"]) for q in logged) == [
        *[("bad.test", "servfail")] * 3,
        *[("www.test", "forwarded")] * 3,
    ]


def huge(query: dns.message.Message) -> dns.message.Message:
    """A reply of exactly 65535 bytes and no OPT: the most a length prefix can carry."""
    reply = dns.message.make_response(query)
    reply.use_edns(False)
    name = query.question[0].name
    fixed = len(reply.to_wire())
    left = 65535 - fixed
    sizes = []  # each record: a pointer, 10 bytes of type to length, a length byte, text
    while left > 2 * 268:
        sizes.append(255)
        left -= 268
    sizes += [(left - 26) // 2, left - 26 - (left - 26) // 2]
    texts = [f"{i:05d}".ljust(k, "x") for i, k in enumerate(sizes)]
    reply.answer.append(dns.rrset.from_text_list(name, 60, "IN", "TXT", [f'"{t}"' for t in texts]))
    assert len(reply.to_wire(max_size=65535)) == 65535
    return reply


async def test_an_answer_over_65535_bytes_is_servfail_not_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 65535-byte upstream reply without OPT, asked with EDNS: our OPT would make it
    65546 bytes, which no TCP length prefix carries; a local CNAME to it, over 65535
    bytes over UDP and TCP alike. SERVFAIL, the client's OPT kept, nothing logged."""
    r, _, _ = resolver({UP: huge}, records=[parse_record("big.retreat.lan=cname:huge.test")])
    conns = Connections(ManualClock(0.0))
    gate = Gate(list(LAN), 0)
    lan = UDPClient(r)
    with caplog.at_level(logging.DEBUG):
        for name in ("huge.test", "big.retreat.lan"):
            server, stream = TCPServer(r, gate, conns), Stream("10.0.0.1")
            server.connection_made(stream)  # type: ignore[arg-type]
            query = make_query(name, "TXT")
            wire = query.to_wire()
            server.data_received(struct.pack(">H", len(wire)) + wire)
            await asyncio.gather(*server.tasks)
            (length,) = struct.unpack_from(">H", stream.written)
            assert len(stream.written) == 2 + length
            answer = dns.message.from_wire(stream.written[2:])
            assert (answer.id, answer.rcode(), answer.edns) == (query.id, dns.rcode.SERVFAIL, 0)
            assert answer.question == query.question and not answer.answer
        over_udp = await lan.ask("big.retreat.lan", "TXT", payload=4096)
        assert (over_udp.rcode(), over_udp.answer) == (dns.rcode.SERVFAIL, [])
        truncated = await lan.ask("huge.test", "TXT", payload=4096)  # fits TCP without OPT
        assert truncated.flags & dns.flags.TC
    assert [record.getMessage() for record in caplog.records if record.exc_info] == []


async def test_empty_messages_are_malformed_and_buy_no_time() -> None:
    """Two-byte messages of length 0 (or other bytes that are no query) are counted as
    malformed, answer nothing and never move the deadline: the connection is closed like
    an idle one, so one host cannot hold its connections open with them."""
    r, _, _ = resolver({UP: ZONE.answer})
    clock = ManualClock(0.0)
    conns = Connections(clock, idle=10.0)
    server, stream = TCPServer(r, Gate(list(LAN), 0), conns), Stream("10.0.0.1")
    server.connection_made(stream)  # type: ignore[arg-type]
    server.data_received(framed("www.test"))
    await asyncio.gather(*server.tasks)
    answered = stream.written
    assert answered and server.framer.deadline == 10.0
    for _ in range(6):  # until 9 s: whole messages, each one no query
        clock.advance(1.5)
        server.data_received(b"\0\0" * 3 + b"\0\5hello")
        await asyncio.gather(*server.tasks)
        assert conns.sweep(clock()) == 0
    assert stream.written == answered and r.stats.counts[FORMERR] == 24
    clock.advance(1.0)
    assert conns.sweep(clock()) == 1  # 10 s after its query was answered
    assert stream.aborted and not conns.open


async def test_a_client_that_reads_no_answers_holds_one_answer_past_the_limit() -> None:
    """Pipelined queries for 60 KB answers, never read: the answers being worked on when
    the client's unread bytes pass MAX_UNSENT are not written, their queries wait; at its
    deadline the connection is aborted, never closed (closing waits to send what nobody
    reads). A client that reads gets every answer."""

    def big(query: dns.message.Message) -> dns.message.Message:  # 60 KB
        reply = dns.message.make_response(query)
        texts = [f'"{i:05d}{"x" * 250}"' for i in range(224)]
        reply.answer.append(
            dns.rrset.from_text_list(query.question[0].name, 60, "IN", "TXT", texts)
        )
        return reply

    r, _, _ = resolver({UP: big})
    clock = ManualClock(0.0)
    conns = Connections(clock, idle=10.0)
    gate = Gate(list(LAN), 0)
    query = make_query("big.test", "TXT").to_wire()
    for reads in (False, True):
        server = TCPServer(r, gate, conns)
        stream = Stream("10.0.0.1", server)
        server.connection_made(stream)  # type: ignore[arg-type]
        server.data_received((struct.pack(">H", len(query)) + query) * 64)
        while server.pending:
            await asyncio.gather(*server.tasks)
            if reads:
                stream.read()  # then the queries that waited are taken
        assert stream.most_unread <= MAX_UNSENT + 2 + 65535  # before: 32 answers, 2 MB
        if reads:
            assert stream.written.count(b"\x03big\x04test\x00") == 64 and not stream.aborted
            continue
        assert stream.paused and stream.written.count(b"\x03big\x04test\x00") < 3
        clock.advance(10)
        assert conns.sweep(clock()) == 1 and stream.aborted and not stream.closed
        assert not conns.open
