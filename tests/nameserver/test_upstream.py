"""Upstream health with a manual clock: down after three failures, one probe when due."""

from __future__ import annotations

import asyncio

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from retreatkit.nameserver import wire
from retreatkit.nameserver.errors import UpstreamFailed
from retreatkit.nameserver.fakes import SILENT, FakeTransport, Hold, ManualClock, Zone, make_query
from retreatkit.nameserver.upstream import RETRY_AFTER, Upstream, UpstreamSet

ZONE = Zone("$TTL 60\n@ SOA ns.test. h.test. 1 3600 600 86400 60\nwww A 198.51.100.7\n")
A, B = ("192.0.2.1", 53), ("192.0.2.2", 53)


def key(name: str = "www.test") -> bytes:
    query = wire.parse(make_query(name).to_wire())
    assert query is not None
    return query.key


def servfail(query: dns.message.Message) -> dns.message.Message:
    answer = dns.message.make_response(query)
    answer.set_rcode(dns.rcode.SERVFAIL)
    return answer


def upstreams(*scripts: object) -> tuple[UpstreamSet, FakeTransport, ManualClock]:
    clock = ManualClock()
    transport = FakeTransport(dict(zip((A, B), scripts, strict=False)))  # type: ignore[arg-type]
    servers = [Upstream(h, p) for h, p in (A, B)[: len(scripts)]]
    return UpstreamSet(servers, transport, clock), transport, clock


async def test_three_failures_mark_it_down_then_one_check_when_due() -> None:
    group, transport, clock = upstreams(lambda q: SILENT)
    (up,) = group.servers
    for state in ("failing", "failing", "down"):  # its last query failed: never "up"
        with pytest.raises(UpstreamFailed, match="no answer in time"):
            await group.ask(key())
        assert up.state() == state
    assert up.last_error == "no answer in time"
    with pytest.raises(UpstreamFailed, match="every upstream is down; the next check is in 30 s"):
        await group.ask(key())
    assert (transport.asked(), group.due(clock())) == (3, [])
    clock.advance(RETRY_AFTER)
    hold = Hold(ZONE.answer(make_query("x.com")))
    transport.scripts[A] = lambda q: hold
    assert group.due(clock()) == [up]
    check = asyncio.ensure_future(group.check_again(up))
    async with asyncio.timeout(10):
        while transport.asked() != 4:
            await asyncio.sleep(0)
    assert up.checking and group.due(clock()) == []  # one check at a time
    with pytest.raises(UpstreamFailed, match="every upstream is down; the next check is in 0 s"):
        await group.ask(key())  # an attendee's question is never the probe
    assert transport.asked() == 4
    hold.released.set()
    assert await check
    sent = transport.sent[3][1].question[0]
    assert (sent.name.parent().to_text(), sent.rdtype) == ("com.", dns.rdatatype.A)
    assert up.state() == "up" and not up.checking and up.failures == 0


async def test_servfail_fails_over_and_counts_against_the_upstream() -> None:
    group, transport, _ = upstreams(servfail, ZONE.answer)
    answer = await group.ask(key())
    assert answer.upstream.address == "192.0.2.2:53"
    first, second = group.servers
    assert (first.errors, first.last_error, second.errors) == (1, "SERVFAIL", 0)
    assert transport.asked(A) == 1 and transport.asked(B) == 1


async def test_a_truncated_reply_is_asked_again_over_tcp() -> None:
    big = Zone(
        "$TTL 60\n@ SOA ns.test. h.test. 1 3600 600 86400 60\n"
        + "".join(f"www A 198.51.100.{i}\n" for i in range(1, 120))
    )
    group, transport, _ = upstreams(big.answer)
    answer = await group.ask(key())
    assert answer.reply is not None and answer.reply.an == 119
    assert transport.asked() == 2  # UDP (truncated), then TCP


async def test_ids_come_from_the_random_source() -> None:
    group, transport, _ = upstreams(ZONE.answer)
    ids = iter([4711, 815])
    group.random_id = lambda: next(ids)
    await group.ask(key())
    await group.ask(key())
    assert [m.id for _, m in transport.sent] == [4711, 815]


def test_no_upstream_configured() -> None:
    group = UpstreamSet([], FakeTransport({}), ManualClock())
    with pytest.raises(UpstreamFailed, match="no upstream configured"):
        asyncio.run(group.ask(key()))


async def test_a_slow_upstream_is_joined_by_the_next_and_loses_to_it() -> None:
    slow = Hold(ZONE.answer(make_query("www.test")))
    group, transport, _ = upstreams(lambda q: slow, ZONE.answer)
    group.timeout = 0.01  # one attempt's time, then the next upstream is asked as well
    answer = await asyncio.wait_for(group.ask(key()), 10)
    assert answer.upstream.address == "192.0.2.2:53"
    first, second = group.servers
    # silent for a whole attempt and overtaken: a failure, as a silent upstream always was
    assert (first.state(), first.last_error, second.state()) == (
        "failing",
        "no answer in time",
        "up",
    )
    assert transport.asked(A) == 1 and transport.asked(B) == 1


async def test_the_first_upstream_still_answers_after_the_next_is_asked() -> None:
    slow = Hold(ZONE.answer(make_query("www.test")))
    group, transport, _ = upstreams(lambda q: slow, lambda q: SILENT)
    group.timeout = 0.01
    asking = asyncio.ensure_future(group.ask(key()))
    async with asyncio.timeout(10):
        while not transport.asked(B):
            await asyncio.sleep(0.01)
    slow.released.set()  # its answer comes after the second upstream has failed
    answer = await asking
    assert answer.upstream.address == "192.0.2.1:53"
    assert [u.state() for u in group.servers] == ["up", "failing"]


async def test_an_upstream_that_answers_servfail_is_failing_never_down() -> None:
    group, transport, _ = upstreams(servfail)
    (up,) = group.servers
    for _ in range(5):  # one broken name after another: the upstream still answers
        with pytest.raises(UpstreamFailed, match=r"192\.0\.2\.1:53: SERVFAIL"):
            await group.ask(key())
    assert (up.state(), up.errors, group.plan(0.0)) == ("failing", 5, [up])
    assert transport.asked() == 5  # every question is still asked


async def test_a_looping_upstream_is_never_asked() -> None:
    group, transport, clock = upstreams(lambda q: SILENT, ZONE.answer)
    loop, other = group.servers
    loop.looping = True  # loops.py found our question coming back through it
    assert group.plan(clock()) == [other]
    assert (await group.ask(key())).upstream is other
    for _ in range(3):
        transport.scripts[B] = lambda q: SILENT
        with pytest.raises(UpstreamFailed, match=r"192\.0\.2\.2:53: no answer in time"):
            await group.ask(key())
    with pytest.raises(
        UpstreamFailed, match=r"^every upstream is down or looping; the next check is in 30 s$"
    ):
        await group.ask(key())
    assert transport.asked(A) == 0


def dead_zone(hold: Hold) -> object:
    """An upstream that answers, but not for names under dead.test: their servers are
    silent (each such query is held, then times out)."""

    def script(query: dns.message.Message) -> dns.message.Message | Hold:
        if query.question[0].name.is_subdomain(dns.name.from_text("dead.test")):
            return hold
        return ZONE.answer(query)

    return script


async def three_at_once(group: UpstreamSet, transport: FakeTransport, clock: ManualClock) -> None:
    """Three names under dead.test asked at once: a whole attempt's time passes (a check
    question goes out, and is answered or not), then their patience, unanswered."""
    group.timeout = 0.01  # an attempt's time, in the loop's clock
    asking = [asyncio.ensure_future(group.ask(key(f"{n}.dead.test"))) for n in range(3)]
    async with asyncio.timeout(10):
        while transport.asked() < 3:
            await asyncio.sleep(0)
    clock.advance(1.5)
    for _ in range(500):  # until the check question is out (before: none, ever)
        if transport.asked() == 4:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0)  # its answer, if any, taken
    clock.advance(2.5)
    for script in transport.scripts.values():
        hold = script(make_query("x.dead.test"))
        assert isinstance(hold, Hold)
        hold.released.set()
    failed = await asyncio.gather(*asking, return_exceptions=True)
    assert all(isinstance(f, UpstreamFailed) for f in failed)


async def test_names_whose_servers_are_silent_never_take_a_working_upstream_down() -> None:
    """Three names in a dead zone asked at once, nothing else asked meanwhile: before,
    they timed out back to back, three failures in a row, and the upstream was down
    (SERVFAIL for every uncached name of the LAN, 30 s). Unanswered for an attempt's
    time, they had the upstream asked a check question (a random name under the zone it
    serves, or under the root), one for the three: it answered, so their timeouts count
    nothing."""
    group, transport, clock = upstreams(dead_zone(Hold(SILENT)))
    group.zone = "venue.example"
    group.check_label = lambda: "k7q2m4x9w3j5h6td"
    (up,) = group.servers
    await three_at_once(group, transport, clock)
    assert (up.state(), up.failures, up.last_error, group.plan(clock())) == (
        "up",
        0,
        "no answer in time",
        [up],
    )
    check = transport.sent[3][1].question[0]
    assert (transport.asked(), check.name.to_text(), check.rdtype) == (
        4,
        "k7q2m4x9w3j5h6td.venue.example.",
        dns.rdatatype.A,
    )
    assert (await group.ask(key())).upstream is up


async def test_no_answer_counts_nothing_if_the_upstream_answered_since() -> None:
    """A dead zone's questions, sent before another question the upstream answered
    (sooner than an attempt's time: no check question): it is there, nothing counted."""
    hold = Hold(SILENT)
    group, transport, clock = upstreams(dead_zone(hold))
    (up,) = group.servers
    asking = [asyncio.ensure_future(group.ask(key(f"{n}.dead.test"))) for n in range(5)]
    await asyncio.sleep(0)
    clock.advance(1)
    await group.ask(key())  # answered, while the others wait
    clock.advance(3)
    hold.released.set()
    await asyncio.gather(*asking, return_exceptions=True)
    assert (up.state(), up.failures, up.errors, transport.asked()) == ("up", 0, 5, 6)


async def test_an_upstream_silent_to_the_check_too_is_down() -> None:
    hold = Hold(SILENT)
    group, transport, clock = upstreams(lambda q: hold)
    (up,) = group.servers
    await three_at_once(group, transport, clock)
    check = transport.sent[3][1].question[0]
    assert (check.name.parent().to_text(), check.rdtype) == ("com.", dns.rdatatype.A)
    assert (up.state(), up.failures, up.down_until) == ("down", 3, clock() + RETRY_AFTER)
