"""A silent zone told from a silent upstream: the rule on explicit times, the check
question, then upstreams on a manual clock: ones whose own uplink is gone (they answer
NS . from their cache and drop the rest) and working ones asked only dead zones."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from retreatkit.nameserver import wire
from retreatkit.nameserver.errors import UpstreamFailed
from retreatkit.nameserver.fakes import SILENT, FakeTransport, Hold, ManualClock, Zone, make_query
from retreatkit.nameserver.silence import Silence, check_key, check_parent, random_label
from retreatkit.nameserver.upstream import RETRY_AFTER, Upstream, UpstreamSet

ZONE = Zone("$TTL 60\n@ SOA ns.test. h.test. 1 3600 600 86400 60\n*.test A 198.51.100.7\n")
A, B = ("192.0.2.1", 53), ("192.0.2.2", 53)
DEAD = ("www.tracker1.example", "cdn.tracker2.example", "px.tracker3.example")  # three sites


def key(name: str, rdtype: str = "A") -> bytes:
    query = wire.parse(make_query(name, rdtype).to_wire())
    assert query is not None
    return query.key


def test_a_question_counts_nothing_once_the_upstream_answered_after_it() -> None:
    s = Silence()
    assert not s.spares(5.0)  # never heard
    s.heard(10.0)
    assert s.spares(5.0)
    assert not s.spares(10.0)  # asked when it answered: not after
    s.heard(7.0)  # an answer that arrived late says nothing newer
    assert s.heard_at == 10.0


def test_the_check_is_a_fresh_name_under_the_forwarded_zone_or_com() -> None:
    """Under com whatever the question: not right under the root (dnsmasq with
    `domain-needed`, OpenWrt's default, answers a name of one label NXDOMAIN itself, its
    uplink gone or not), nor under arpa for a reverse lookup (a validating resolver
    answers any name there from its cached NSEC records)."""
    assert check_parent("") == b"\3com\0"
    assert check_parent("Lab.Corp.") == b"\3lab\4corp\0"
    assert wire.key_name(check_key(b"\3com\0", "k7q2m4x9w3j5h6td")) == "k7q2m4x9w3j5h6td.com"
    assert wire.key_name(check_key(b"\3lab\4corp\0", "abc")) == "abc.lab.corp"
    assert check_key(b"\0", "abc").endswith(b"\0\0\1\0\1\0")  # A IN, no DO, no CD
    labels = {random_label() for _ in range(100)}
    assert len(labels) == 100
    assert all(len(label) == 16 and label.isalnum() and label.islower() for label in labels)


def uplink_gone(hold: Hold, clock: ManualClock) -> object:
    """A resolver whose own uplink is gone: NS . from its cache, every other question
    (the check's random name too) held, then dropped, an attempt's time passing on the
    clock as each goes out."""

    def script(query: dns.message.Message) -> dns.message.Message | Hold:
        question = query.question[0]
        if question.name == dns.name.root and question.rdtype == dns.rdatatype.NS:
            return dns.message.make_response(query)
        clock.advance(1.5)
        return hold

    return script


def dead_zones(hold: Hold, clock: ManualClock, dead: tuple[str, ...] = DEAD) -> object:
    """A working resolver whose answers for `dead` never come (their zones' servers are
    silent): everything else answered, the check's random name with NXDOMAIN."""
    names = {dns.name.from_text(name) for name in dead}

    def script(query: dns.message.Message) -> dns.message.Message | Hold:
        if query.question[0].name in names:
            clock.advance(0.5)
            return hold
        return ZONE.answer(query)

    return script


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.005)


async def asked_at_once(
    group: UpstreamSet,
    transport: FakeTransport,
    hold: Hold,
    names: tuple[str, ...],
    out: int,
    rdtype: str = "A",
) -> list[object]:
    """`names` asked at once, then let go unanswered once `out` questions (the checks
    among them) went out."""
    asking = [asyncio.ensure_future(group.ask(key(name, rdtype))) for name in names]
    await until(lambda: transport.asked() == out)
    await asyncio.sleep(0)  # the checks' answers, if any, taken
    hold.released.set()
    return await asyncio.gather(*asking, return_exceptions=True)


async def test_a_sole_upstream_whose_uplink_is_gone_is_down_after_three() -> None:
    """Three names asked at once: the check goes out, a name no cache holds, and the
    resolver drops it as it drops the rest, so the upstream is down (with NS . as the
    check, it answered from its cache and stayed up for good: every miss waited 4 s)."""
    hold = Hold(SILENT)
    clock = ManualClock()
    transport = FakeTransport({A: uplink_gone(hold, clock)})  # type: ignore[dict-item]
    group = UpstreamSet([Upstream(*A)], transport, clock, timeout=0.01)
    (up,) = group.servers
    failed = await asked_at_once(group, transport, hold, DEAD, 4)
    check = transport.sent[3][1].question[0]
    assert (check.name.parent().to_text(), check.rdtype) == ("com.", dns.rdatatype.A)
    assert all(isinstance(f, UpstreamFailed) for f in failed)
    assert (up.state(), up.down_until) == ("down", clock() + RETRY_AFTER)
    with pytest.raises(UpstreamFailed, match="every upstream is down; the next check is in 30 s"):
        await group.ask(key("www.site3.test"))  # at once: stale answers or SERVFAIL
    assert transport.asked() == 4


async def test_with_a_second_upstream_the_silent_one_is_passed_by_after_three() -> None:
    """Misses each answered by the second upstream after the first had an attempt's time
    (the third with the first's check out and dropped): the first is down, and the next
    misses go straight to the second (before: 1.5 s each, for good)."""
    clock = ManualClock()
    transport = FakeTransport({A: uplink_gone(Hold(SILENT), clock)})  # type: ignore[dict-item]
    group = UpstreamSet([Upstream(*A), Upstream(*B)], transport, clock, timeout=0.01)
    first, second = group.servers
    for n in range(3):
        later = Hold(ZONE.answer(make_query(f"www.site{n}.test")))
        transport.scripts[B] = lambda q, later=later: later  # type: ignore[misc]
        asking = asyncio.ensure_future(group.ask(key(f"www.site{n}.test")))
        await until(lambda n=n: transport.asked(B) == n + 1)  # type: ignore[misc]
        if n == 2:  # this miss would take it down: the check goes out
            await until(lambda: transport.asked(A) == 4)
        later.released.set()
        assert (await asking).upstream is second
    assert (first.state(), second.state(), group.plan(clock())) == ("down", "up", [second])
    transport.scripts[B] = ZONE.answer
    assert (await group.ask(key("www.site3.test"))).upstream is second
    assert transport.asked(A) == 4  # three questions and one check


async def test_a_router_that_answers_one_label_names_itself_is_down_when_its_uplink_goes() -> None:
    """dnsmasq with `domain-needed` (OpenWrt's default) answers a name of one label
    NXDOMAIN without asking anyone: a check right under the root passed, and a venue
    router whose uplink was gone stayed up, every miss waiting 4 s."""
    hold = Hold(SILENT)
    clock = ManualClock()
    gone = uplink_gone(hold, clock)

    def domain_needed(query: dns.message.Message) -> dns.message.Message | Hold:
        if len(query.question[0].name.labels) == 2:  # one label and the root
            answer = dns.message.make_response(query)
            answer.set_rcode(dns.rcode.NXDOMAIN)
            return answer
        return gone(query)  # type: ignore[operator, no-any-return]

    transport = FakeTransport({A: domain_needed})  # type: ignore[dict-item]
    group = UpstreamSet([Upstream(*A)], transport, clock, timeout=0.01)
    (up,) = group.servers
    await asked_at_once(group, transport, hold, DEAD, 4)
    assert up.state() == "down"


async def test_a_resolver_answering_arpa_from_cached_nsec_is_down_when_its_uplink_goes() -> None:
    """A validating resolver with `aggressive-nsec` (unbound's default) holds the few NSEC
    records of arpa after a few checks, and answers any name under it from them; its
    uplink gone, the reverse lookups of three public addresses go unanswered. Before, the
    check went under arpa, was answered, and the upstream stayed up: every miss waited 4 s."""
    hold = Hold(SILENT)
    clock = ManualClock()
    gone = uplink_gone(hold, clock)
    arpa, reverse = dns.name.from_text("arpa"), dns.name.from_text("in-addr.arpa")

    def nsec_cached(query: dns.message.Message) -> dns.message.Message | Hold:
        name = query.question[0].name
        if name.is_subdomain(arpa) and not name.is_subdomain(reverse):
            answer = dns.message.make_response(query)
            answer.set_rcode(dns.rcode.NXDOMAIN)  # synthesised from cached NSEC (RFC 8198)
            return answer
        return gone(query)  # type: ignore[operator, no-any-return]

    transport = FakeTransport({A: nsec_cached})  # type: ignore[dict-item]
    group = UpstreamSet([Upstream(*A)], transport, clock, timeout=0.01)
    (up,) = group.servers
    names = tuple(f"9.{n}.0.203.in-addr.arpa" for n in range(3))
    failed = await asked_at_once(group, transport, hold, names, 4, "PTR")
    assert all(isinstance(f, UpstreamFailed) for f in failed)
    assert up.state() == "down"
    check = transport.sent[3][1].question[0]
    assert (check.name.parent().to_text(), check.rdtype) == ("com.", dns.rdatatype.A)


@pytest.mark.parametrize(
    ("zone", "dead"),
    [("", DEAD), ("lab.corp", ("h1.lab.corp", "h2.lab.corp", "h3.lab.corp"))],
)
async def test_a_working_upstream_asked_only_dead_zones_stays_up(
    zone: str, dead: tuple[str, ...]
) -> None:
    """A quiet LAN asks one name in each of three dead zones at once (or three hosts of
    a forwarded zone, whose server does not know them): the check's name is answered,
    so the upstream is up and the LAN's next name is asked of it (before: down for 30 s,
    SERVFAIL for every uncached name)."""
    hold = Hold(SILENT)
    clock = ManualClock()
    transport = FakeTransport({A: dead_zones(hold, clock, dead)})  # type: ignore[dict-item]
    group = UpstreamSet([Upstream(*A)], transport, clock, timeout=0.01, zone=zone)
    group.check_label = lambda: "k7q2m4x9w3j5h6td"
    (up,) = group.servers
    failed = await asked_at_once(group, transport, hold, dead, 4)
    assert all(isinstance(f, UpstreamFailed) for f in failed)
    check = transport.sent[3][1].question[0]
    assert check.name == dns.name.from_text(f"k7q2m4x9w3j5h6td.{zone or 'com'}")
    assert (up.state(), up.failures, up.last_error) == ("up", 0, "no answer in time")
    assert (await group.ask(key("www.next.test"))).upstream is up


async def test_a_second_upstream_asked_only_dead_zones_is_there_when_the_first_goes() -> None:
    """Both asked the dead zones' names (the second after the first's attempt time):
    both answer their checks and stay up, so when the first upstream's uplink goes the
    second answers the LAN (before: the second was down, and the LAN got SERVFAIL)."""
    hold = Hold(SILENT)
    clock = ManualClock()
    transport = FakeTransport(
        {A: dead_zones(hold, clock), B: dead_zones(hold, clock)}  # type: ignore[dict-item]
    )
    group = UpstreamSet([Upstream(*A), Upstream(*B)], transport, clock, timeout=0.01)
    first, second = group.servers
    await asked_at_once(group, transport, hold, DEAD, 8)  # three each, and a check each
    assert (first.state(), second.state()) == ("up", "up")
    transport.scripts[A] = lambda q: SILENT  # the first's uplink is gone
    assert (await group.ask(key("www.next.test"))).upstream is second
