"""Forwarding loops in process: the probe machine with a manual clock and fixed entropy,
then a resolver whose upstream sends every question back to it, as the organiser's own
resolver does when DHCP made it forward to us."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import dns.message
import dns.rcode
import pytest

from retreatkit.nameserver import wire
from retreatkit.nameserver.errors import UpstreamFailed
from retreatkit.nameserver.fakes import (
    SILENT,
    FakeTransport,
    Hold,
    ManualClock,
    UDPClient,
    Zone,
    make_query,
    resolver,
)
from retreatkit.nameserver.loops import SUFFIX, Loops, is_probe
from retreatkit.nameserver.policy import Policy
from retreatkit.nameserver.resolver import Resolver
from retreatkit.nameserver.service import Nameserver, Settings
from retreatkit.nameserver.statelog import StateLog
from retreatkit.nameserver.upstream import Upstream, UpstreamSet

ZONE = Zone("$TTL 300\n@ SOA ns.test. h.test. 1 3600 600 86400 60\nwww.example A 198.51.100.7\n")
LAPTOP, VENUE = ("127.0.0.53", 53), ("192.0.2.1", 53)
LOOPING = (
    "upstream 127.0.0.53:53 is looping: our question to it came back to us (it forwards"
    " to this nameserver); not asked until that ends, checked every 30 s"
)


def counting() -> Callable[[int], bytes]:
    """Entropy that counts: labels 0000000000000001, 0000000000000002..."""
    n = 0

    def entropy(size: int) -> bytes:
        nonlocal n
        n += 1
        return n.to_bytes(size, "big")

    return entropy


def key(name: str, rdtype: str = "TXT") -> bytes:
    query = wire.parse(make_query(name, rdtype).to_wire())
    assert query is not None
    return query.key


# -- the machine -------------------------------------------------------------------------


def test_every_upstream_is_probed_at_start_with_a_name_only_we_could_ask() -> None:
    laptop, venue, router = Upstream(*LAPTOP), Upstream(*VENUE), Upstream("192.168.1.1")
    loops = Loops([("", laptop), ("", venue), ("venue.example", router)], entropy=counting())
    probes = loops.due(1000.0)
    assert [(p.name, p.zone, p.upstream) for p in probes] == [
        (f"0000000000000001.{SUFFIX}", "", laptop),
        (f"0000000000000002.{SUFFIX}", "", venue),
        (f"0000000000000003.{SUFFIX}", "venue.example", router),
    ]
    assert probes[0].key == wire.upstream_key(key(f"0000000000000001.{SUFFIX}"))  # no DO, CD
    assert loops.due(1000.0) == []  # one at a time
    for probe in probes:
        assert not loops.answered(probe, dns.rcode.NXDOMAIN, 0.01)
    assert loops.due(5000.0) == []  # answering as they should: never again


def test_our_question_coming_back_marks_its_upstream_and_no_other() -> None:
    laptop, venue = Upstream(*LAPTOP), Upstream(*VENUE)
    loops = Loops([("", laptop), ("", venue)], entropy=counting())
    first, _ = loops.due(1000.0)
    assert loops.came_back(key(f"0000000000000009.{SUFFIX}")) is None  # not ours: no change
    assert loops.came_back(key(f"0000000000000001.{SUFFIX}", "A")) is first
    assert (laptop.state(), venue.state()) == ("looping", "unknown")
    assert laptop.last_error == (
        "our question to it came back to us (it forwards to this nameserver); not asked"
        " until that ends, checked every 30 s"
    )
    # the laptop's resolver relays our answer to the probe back: still looping
    assert not loops.answered(first, dns.rcode.NXDOMAIN, 0.01)
    assert laptop.looping


def test_a_looping_upstream_is_checked_every_recheck_until_the_loop_ends() -> None:
    laptop = Upstream(*LAPTOP)
    loops = Loops([("", laptop)], recheck=30.0, entropy=counting())
    (probe,) = loops.due(1000.0)
    loops.came_back(probe.key)
    loops.answered(probe, None, 4.0)
    assert loops.due(1029.0) == []
    (again,) = loops.due(1030.0)
    assert loops.came_back(probe.key) is None  # an old label counts no more
    assert not loops.answered(again, dns.rcode.SERVFAIL, 0.5)  # says nothing of the name
    assert laptop.looping
    (last,) = loops.due(1060.0)
    assert loops.answered(last, dns.rcode.NXDOMAIN, 0.02)  # answered, never came back
    assert (laptop.state(), laptop.latency_ms) == ("up", 20.0)


def test_a_loop_that_forms_later_is_probed_at_its_first_failure() -> None:
    clock = ManualClock()
    laptop = Upstream(*LAPTOP)
    loops = Loops([("", laptop)], recheck=30.0, entropy=counting())
    (start,) = loops.due(clock())
    loops.answered(start, dns.rcode.NXDOMAIN, 0.01)
    clock.advance(5)
    laptop.failed(clock(), "no answer in time")  # its questions go round and time out
    (probe,) = loops.due(clock())  # at once, not 30 s after the last probe
    loops.answered(probe, None, 4.0)  # inconclusive: no answer
    clock.advance(10)
    assert loops.due(clock()) == []  # still failing: one probe per recheck
    clock.advance(20)
    assert len(loops.due(clock())) == 1


def test_only_names_under_the_probe_suffix_are_probes() -> None:
    assert is_probe(key(f"0123456789abcdef.{SUFFIX}"))
    assert is_probe(key(f"x.Y.{SUFFIX.upper()}", "A"))  # keys are lowercased
    assert is_probe(key(SUFFIX))
    assert not is_probe(key(f"x{SUFFIX}"))
    assert not is_probe(key("www.example.test"))
    assert not is_probe(key(f"{SUFFIX}.example"))


# -- a resolver whose upstream forwards back to it ---------------------------------------


def forwards_to(made: list[Resolver], tasks: set[asyncio.Task[None]]) -> Callable[..., Hold]:
    """The laptop's resolver, forwarding to us: each question goes to the resolver in
    `made` as a client's query, and its answer is relayed back."""

    def script(query: dns.message.Message) -> Hold:
        hold = Hold(SILENT)

        async def relay() -> None:
            out = await made[0].resolve(query.to_wire(), "10.0.0.1", None)
            hold.reply = dns.message.from_wire(out) if out is not None else SILENT
            hold.released.set()

        task = asyncio.ensure_future(relay())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return hold

    return script


async def test_the_looping_upstream_is_named_once_and_passed_by() -> None:
    tasks: set[asyncio.Task[None]] = set()
    made: list[Resolver] = []
    lines: list[tuple[int, str]] = []
    clock = ManualClock()
    transport = FakeTransport({LAPTOP: forwards_to(made, tasks), VENUE: ZONE.answer})
    states = StateLog(lambda level, line: lines.append((level, line)))
    servers = [Upstream(*LAPTOP), Upstream(*VENUE)]
    group = UpstreamSet(servers, transport, clock, note=states.note)
    r = Resolver(Policy.build([]), {"": group}, clock=clock, loops=Loops(
        [("", u) for u in servers], entropy=counting()))  # fmt: skip
    made.append(r)
    await asyncio.gather(*(r.check_loop(probe) for probe in r.loops.due(clock())))
    assert lines == [(logging.WARNING, LOOPING)]
    assert [u.state() for u in servers] == ["looping", "unknown"]
    # the probe came back once, was answered here, and never went on to the venue
    asked = [(where, m.question[0].name.to_text()) for where, m in transport.sent]
    assert sorted(asked) == [
        (LAPTOP, f"0000000000000001.{SUFFIX}."),
        (VENUE, f"0000000000000002.{SUFFIX}."),
    ]
    lan = UDPClient(r)
    answer = await lan.ask("www.example.test")
    assert [rrset.to_text() for rrset in answer.answer] == [
        "www.example.test. 300 IN A 198.51.100.7"
    ]
    assert transport.asked(LAPTOP) == 1  # the looping upstream is asked nothing
    answer = await lan.ask(f"0000000000000002.{SUFFIX}", "TXT")  # a probe's name: never forwarded
    assert answer.rcode() == dns.rcode.NXDOMAIN and transport.asked() == 3
    assert [u.state() for u in servers] == ["looping", "up"]  # a label answered is forgotten


async def test_with_every_upstream_looping_questions_fail_at_once() -> None:
    r, transport, clock = resolver({LAPTOP: ZONE.answer})
    (laptop,) = r.upstreams[""].servers
    (probe,) = r.loops.due(clock())
    r.loops.came_back(probe.key)
    with pytest.raises(UpstreamFailed, match=r"^every upstream sends our questions back to us"):
        await r.upstreams[""].ask(key("www.example.test", "A"))
    answer = await UDPClient(r).ask("www.example.test")
    assert answer.rcode() == dns.rcode.SERVFAIL and transport.asked() == 0
    assert laptop.state() == "looping"


def test_status_warns_of_a_looping_upstream() -> None:
    clock = ManualClock()
    settings = Settings(listen=("127.0.0.1", 0), upstreams=[LAPTOP])
    ns = Nameserver(settings, clock=clock, transport=FakeTransport({LAPTOP: ZONE.answer}))
    (probe,) = ns.resolver.loops.due(clock())
    ns.resolver.loops.came_back(probe.key)
    status = ns.status()
    assert status["warnings"] == [
        "every upstream is looping: answering from cache (stale) or SERVFAIL",
        "upstream 127.0.0.53:53 sends our questions back to this nameserver (a loop): point"
        " its resolver elsewhere, or name the venue's resolvers",
    ]
    assert status["upstreams"][0]["state"] == "looping"


def test_a_forward_rules_server_is_not_probed() -> None:
    """`forward lan -> the router`: the router's dnsmasq answers `lan` itself and sends
    the rest of the world to us. A probe outside its zone comes back, and it would be
    marked looping for a zone that loops nowhere."""
    clock = ManualClock()
    transport = FakeTransport({LAPTOP: ZONE.answer, VENUE: ZONE.answer})
    upstreams = {
        "": UpstreamSet([Upstream(*LAPTOP)], transport, clock),
        "lan": UpstreamSet([Upstream(*VENUE)], transport, clock),
    }
    r = Resolver(Policy.build([]), upstreams, clock=clock)
    assert [(p.zone, p.upstream.address) for p in r.loops.due(clock())] == [
        ("", upstreams[""].servers[0].address)
    ]
