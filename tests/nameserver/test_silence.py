"""A silent zone told from a silent upstream: the rule on explicit times, then upstreams
that answer only the check question (their own uplink gone), on a manual clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import dns.message
import dns.name
import dns.rdatatype
import pytest

from retreatkit.nameserver import wire
from retreatkit.nameserver.errors import UpstreamFailed
from retreatkit.nameserver.fakes import SILENT, FakeTransport, Hold, ManualClock, Zone, make_query
from retreatkit.nameserver.silence import Silence, Verdict, site_of, zone_wire
from retreatkit.nameserver.upstream import RETRY_AFTER, Upstream, UpstreamSet

ZONE = Zone("$TTL 60\n@ SOA ns.test. h.test. 1 3600 600 86400 60\n*.test A 198.51.100.7\n")
A, B = ("192.0.2.1", 53), ("192.0.2.2", 53)


def key(name: str) -> bytes:
    query = wire.parse(make_query(name).to_wire())
    assert query is not None
    return query.key


@pytest.mark.parametrize(
    ("name", "zone", "site"),
    [
        ("www.Tracker.Example", "", "tracker.example"),
        ("a.b.c.tracker.example", "", "tracker.example"),
        ("example", "", "example"),
        ("a.b.printer.venue.example", "Venue.Example", "b.printer.venue.example"),
        ("printer.venue.example", "venue.example", "printer.venue.example"),
        ("x.y.elsewhere.test", "venue.example", "elsewhere.test"),
        ("xvenue.example", "venue.example", "xvenue.example"),
    ],
)
def test_a_site_is_two_labels_below_the_zone(name: str, zone: str, site: str) -> None:
    assert wire.key_name(site_of(key(name), zone_wire(zone)) + b"\0\1\0\1\0") == site


def test_a_reply_to_another_question_since_spares_any_number_of_sites() -> None:
    s = Silence()
    s.replied(10.0)
    assert [s.unanswered(5.0, site) for site in (b"a", b"b", b"c", b"d")] == [Verdict.SPARED] * 4


def test_the_check_spares_one_silent_zone_however_often_it_is_asked() -> None:
    s = Silence()
    s.replied(1.0)
    s.heard(20.0)  # the check question, answered
    assert {s.unanswered(10.0, b"\4dead\4test\0") for _ in range(10)} == {Verdict.SPARED}


def test_the_check_spares_two_sites_but_not_three() -> None:
    """An upstream that answers NS . from its cache and drops everything else."""
    s = Silence()
    s.heard(20.0)
    assert [s.unanswered(10.0, site) for site in (b"a", b"b", b"a", b"c")] == [
        Verdict.SPARED,
        Verdict.SPARED,
        Verdict.SPARED,
        Verdict.DOWN,
    ]
    assert s.unanswered(30.0, b"d") is Verdict.DOWN  # still nothing answered
    s.replied(40.0)  # it answers questions again: the slate is clean
    s.heard(60.0)
    assert s.unanswered(50.0, b"e") is Verdict.SPARED


def test_without_the_check_each_is_a_failure_and_three_sites_down() -> None:
    s = Silence()
    assert [s.unanswered(10.0, site) for site in (b"a", b"a", b"b", b"c")] == [
        Verdict.FAILED,
        Verdict.FAILED,
        Verdict.FAILED,
        Verdict.DOWN,
    ]


def uplink_gone(hold: Hold, clock: ManualClock) -> object:
    """A resolver whose own uplink is gone: NS . from its cache, every other question
    held (then dropped), an attempt's time passing on the clock as each goes out."""

    def script(query: dns.message.Message) -> dns.message.Message | Hold:
        question = query.question[0]
        if question.name == dns.name.root and question.rdtype == dns.rdatatype.NS:
            return dns.message.make_response(query)
        clock.advance(1.5)
        return hold

    return script


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.005)


async def test_a_sole_upstream_answering_only_the_check_is_down_after_three_sites() -> None:
    """Three names on three sites asked at once: the check question goes out and is
    answered, yet the upstream is down (before: up for good, every miss waited 4 s)."""
    hold = Hold(SILENT)
    clock = ManualClock()
    transport = FakeTransport({A: uplink_gone(hold, clock)})  # type: ignore[dict-item]
    group = UpstreamSet([Upstream(*A)], transport, clock, timeout=0.01)
    (up,) = group.servers
    asking = [asyncio.ensure_future(group.ask(key(f"www.site{n}.test"))) for n in range(3)]
    await until(lambda: transport.asked() == 4)  # the three, and the check question
    check = transport.sent[3][1].question[0]
    assert (check.name, check.rdtype) == (dns.name.root, dns.rdatatype.NS)
    await until(lambda: up.heard_at == clock())  # answered
    hold.released.set()
    failed = await asyncio.gather(*asking, return_exceptions=True)
    assert all(isinstance(f, UpstreamFailed) for f in failed)
    assert (up.state(), up.down_until) == ("down", clock() + RETRY_AFTER)
    with pytest.raises(UpstreamFailed, match="every upstream is down; the next check is in 30 s"):
        await group.ask(key("www.site3.test"))  # at once: stale answers or SERVFAIL
    assert transport.asked() == 4


async def test_with_a_second_upstream_the_silent_one_is_passed_by_after_three_sites() -> None:
    """Misses on three sites, each answered by the second upstream after the first had
    an attempt's time (the third with the check answered first): the first is down, and
    the next misses go straight to the second (before: 1.5 s each, for good)."""
    clock = ManualClock()
    transport = FakeTransport({A: uplink_gone(Hold(SILENT), clock)})  # type: ignore[dict-item]
    group = UpstreamSet([Upstream(*A), Upstream(*B)], transport, clock, timeout=0.01)
    first, second = group.servers
    for n in range(3):
        later = Hold(ZONE.answer(make_query(f"www.site{n}.test")))
        transport.scripts[B] = lambda q, later=later: later  # type: ignore[misc]
        asking = asyncio.ensure_future(group.ask(key(f"www.site{n}.test")))
        await until(lambda n=n: transport.asked(B) == n + 1)  # type: ignore[misc]
        if n == 2:  # this miss would take it down: the check goes out, and is answered
            await until(lambda: first.heard_at == clock())
        later.released.set()
        assert (await asking).upstream is second
    assert transport.asked(A) == 4  # three questions and one check
    assert (first.state(), second.state(), group.plan(clock())) == ("down", "up", [second])
    transport.scripts[B] = ZONE.answer
    assert (await group.ask(key("www.site3.test"))).upstream is second
    assert transport.asked(A) == 4
