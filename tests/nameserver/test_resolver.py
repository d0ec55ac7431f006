"""The resolver in process: scripted upstreams, a manual clock, our UDP server in memory."""

from __future__ import annotations

import asyncio
import logging

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from retreatkit.nameserver import fill, server, wire
from retreatkit.nameserver import resolver as resolver_module
from retreatkit.nameserver.blocklist import Blocklist
from retreatkit.nameserver.fakes import (
    SILENT,
    Hold,
    ManualClock,
    UDPClient,
    Zone,
    make_query,
    resolver,
)
from retreatkit.nameserver.flight import Flights
from retreatkit.nameserver.local import parse_record

UP = ("192.0.2.53", 53)
SECOND = ("192.0.2.54", 53)
ZONE = Zone(
    """
$TTL 300
@ SOA ns.test. hostmaster.test. 1 3600 600 86400 60
www.example A 198.51.100.7
www.example AAAA 2001:db8::7
short.example 5 A 198.51.100.5
cdn.example 3600 CNAME edge.example
edge.example 60 A 198.51.100.8
cloaked.example CNAME tracker.ads.example
tracker.ads.example A 198.51.100.66
sneaky.example A 10.9.9.9
gone.example 3600 CNAME missing.example
*.wild.example A 198.51.100.9
""",
)


def blocklist(*names: str) -> Blocklist:
    part = Blocklist()
    part.add_lines("test", names)
    return part.seal()


def addresses(answer: dns.message.Message) -> list[str]:
    return sorted(r.to_text() for rrset in answer.answer for r in rrset)


async def test_forwards_caches_and_counts_every_path() -> None:
    r, upstream, clock = resolver({UP: ZONE.answer})
    lan = UDPClient(r)
    assert addresses(await lan.ask("www.example.test")) == ["198.51.100.7"]
    for _ in range(5):
        assert addresses(await lan.ask("WWW.example.test")) == ["198.51.100.7"]
    assert upstream.asked() == 1
    counts = r.stats.counts
    assert (counts[0], counts[1]) == (5, 1)  # cached, forwarded
    r.set_policy(r.policy.with_blocklist(blocklist("www.example.test")))
    for _ in range(3):
        assert addresses(await lan.ask("www.example.test")) == ["0.0.0.0"]
    r.tick(clock())
    assert r.stats.counts[2] == 3  # every block counts, cached or not
    assert r.stats.top("blocked") == [("www.example.test", 3)]
    assert r.stats.top("domains") == [("www.example.test", 9)]


async def test_a_policy_change_reaches_cached_answers_at_once() -> None:
    r, _, _ = resolver({UP: ZONE.answer})
    lan = UDPClient(r)
    await lan.ask("www.example.test")
    await lan.ask("www.example.test")  # now in the exact-bytes table too
    r.set_policy(r.policy.with_blocklist(blocklist("example.test")))
    assert addresses(await lan.ask("www.example.test")) == ["0.0.0.0"]
    r.pause(300)
    assert addresses(await lan.ask("www.example.test")) == ["198.51.100.7"]
    r.pause(0)
    assert addresses(await lan.ask("www.example.test")) == ["0.0.0.0"]


async def test_a_pause_ends_on_its_own_for_the_next_query() -> None:
    r, _, clock = resolver({UP: ZONE.answer})
    lan = UDPClient(r)
    r.set_policy(r.policy.with_blocklist(blocklist("www.example.test")))
    r.pause(60)
    assert addresses(await lan.ask("www.example.test")) == ["198.51.100.7"]
    clock.advance(61)
    assert addresses(await lan.ask("www.example.test")) == ["0.0.0.0"]
    assert r.paused_until == 0


async def test_cname_cloaking_is_blocked_then_and_later() -> None:
    r, _, _ = resolver({UP: ZONE.answer})
    lan = UDPClient(r)
    assert addresses(await lan.ask("cdn.example.test")) == ["198.51.100.8", "edge.example.test."]
    r.set_policy(r.policy.with_blocklist(blocklist("ads.example.test", "edge.example.test")))
    assert addresses(await lan.ask("cloaked.example.test")) == ["0.0.0.0"]  # fresh
    assert addresses(await lan.ask("cdn.example.test")) == ["0.0.0.0"]  # cached before
    assert r.stats.cname_blocked == 2


async def test_each_rrset_keeps_its_own_ttl() -> None:
    r, _, clock = resolver({UP: ZONE.answer})
    lan = UDPClient(r)
    first = await lan.ask("cdn.example.test")
    assert [(x.rdtype, x.ttl) for x in first.answer] == [(dns.rdatatype.CNAME, 3600), (1, 60)]
    clock.advance(10)
    later = await lan.ask("cdn.example.test")
    assert [x.ttl for x in later.answer] == [3590, 50]


async def test_stale_answer_then_the_late_refresh_is_kept() -> None:
    slow = Hold(ZONE.answer(make_query("short.example.test")))
    replies: list[object] = [ZONE.answer, lambda q: slow]

    def script(query: dns.message.Message) -> object:
        handler = replies.pop(0) if replies else ZONE.answer
        return handler(query)  # type: ignore[operator]

    r, upstream, clock = resolver({UP: script})  # type: ignore[dict-item]
    lan = UDPClient(r)
    assert (await lan.ask("short.example.test")).answer[0].ttl == 5
    clock.advance(6)  # expired: the next ask refreshes, and gets stale meanwhile
    lan.send(make_query("short.example.test"))
    while not lan.transport.sent[1:]:  # the stale answer, while the refresh waits
        await asyncio.sleep(0)
    stale = dns.message.from_wire(lan.transport.sent[1][0])
    assert stale.answer[0].ttl == 30  # RFC 8767
    slow.released.set()
    await lan.settle()
    fresh = await lan.ask("short.example.test")
    assert fresh.answer[0].ttl == 5
    assert upstream.asked() == 2


async def test_the_query_log_says_how_long_a_stale_answer_took() -> None:
    clock = ManualClock()
    gone: list[bool] = []

    def uplink(query: dns.message.Message) -> dns.message.Message | str:
        if not gone:
            return ZONE.answer(query)
        clock.advance(1.5)  # the attempt's timeout passes unanswered
        return SILENT

    r, _, _ = resolver({UP: uplink}, clock=clock)
    lan = UDPClient(r)
    await lan.ask("short.example.test")
    gone.append(True)
    clock.advance(6)  # expired: the refresh is asked for and goes unanswered
    assert (await lan.ask("short.example.test")).answer[0].ttl == 30
    _, items = r.stats.since(1, 10, str)
    assert [(q["answer"], q["ms"]) for q in items] == [("stale", 1500.0)]


async def test_silent_upstream_fails_fast_once_known_down() -> None:
    r, upstream, clock = resolver({UP: lambda q: SILENT})
    lan = UDPClient(r)
    for i in range(3):
        assert (await lan.ask(f"n{i}.example.test")).rcode() == dns.rcode.SERVFAIL
    assert upstream.asked() == 3
    for i in range(20):  # known down: SERVFAIL at once, nothing sent
        assert (await lan.ask(f"m{i}.example.test")).rcode() == dns.rcode.SERVFAIL
    assert upstream.asked() == 3
    clock.advance(30)  # the recheck is due: the check question, no attendee's question
    (down,) = r.upstreams[""].servers
    assert not await r.upstreams[""].check_again(down)
    assert (await lan.ask("after.example.test")).rcode() == dns.rcode.SERVFAIL
    assert upstream.asked() == 4


async def test_dnssec_bits_pass_through() -> None:
    secure = Zone(ZONE.zone.to_text(), secure=True)
    r, _, _ = resolver({UP: secure.answer})
    lan = UDPClient(r)
    with_do = await lan.ask("www.example.test", want_dnssec=True)
    assert with_do.flags & dns.flags.AD and with_do.ednsflags & dns.flags.DO
    plain = await lan.ask("www.example.test")
    assert not plain.flags & dns.flags.AD and not plain.ednsflags & dns.flags.DO
    cd = make_query("www.example.test")
    cd.flags |= dns.flags.CD
    lan.send(cd)
    await lan.settle()
    assert dns.message.from_wire(lan.transport.sent[-1][0]).flags & dns.flags.CD


async def test_local_wildcard_chain_and_apex() -> None:
    records = [
        parse_record("laptop.retreat.lan=10.0.0.7"),
        parse_record("docs.retreat.lan=cname:laptop.retreat.lan"),
        parse_record("*.dev.retreat.lan=10.0.0.8"),
    ]
    r, upstream, _ = resolver({UP: ZONE.answer}, records=records)
    lan = UDPClient(r)
    assert addresses(await lan.ask("docs.retreat.lan")) == ["10.0.0.7", "laptop.retreat.lan."]
    assert addresses(await lan.ask("x.dev.retreat.lan")) == ["10.0.0.8"]
    ent = await lan.ask("retreat.lan")
    assert ent.rcode() == dns.rcode.NOERROR and not ent.answer
    missing = await lan.ask("nope.retreat.lan")
    assert missing.rcode() == dns.rcode.NXDOMAIN
    assert missing.authority[0].name.to_text() == "retreat.lan."
    ptr = await lan.ask("1.0.0.127.in-addr.arpa", "PTR")
    assert addresses(ptr) == ["localhost."]
    nodata = await lan.ask("7.0.0.10.in-addr.arpa", "TXT")  # its PTR is there: NODATA
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert nodata.authority[0].name.to_text() == "10.in-addr.arpa."
    assert nodata.flags & dns.flags.AA
    assert upstream.asked() == 0


async def test_a_cname_to_a_name_that_does_not_exist_is_kept_as_long_as_its_soa_says() -> None:
    # RFC 2308 5: the NXDOMAIN at the end of the chain lasts min(SOA TTL, MINIMUM), 60 s
    # here, however long the CNAME before it may be kept (an hour): that hour hid the
    # name for an hour once it was made
    r, upstream, clock = resolver({UP: ZONE.answer})
    lan = UDPClient(r)
    gone = await lan.ask("gone.example.test")
    assert gone.rcode() == dns.rcode.NXDOMAIN and gone.answer[0].ttl == 3600
    clock.advance(59)
    await lan.ask("gone.example.test")
    assert upstream.asked() == 1
    clock.advance(2)
    await lan.ask("gone.example.test")
    assert upstream.asked() == 2
    # the same for a reply in a layout dnspython reads, and for a CNAME then NODATA
    assert fill.cache_ttl(gone) == 60
    nodata = ZONE.answer(make_query("cdn.example.test", "TXT"))
    assert nodata.answer and fill.cache_ttl(nodata) == 60


async def test_a_local_cname_to_a_listed_name_is_blocked() -> None:
    # a chain that reaches a listed name blocks the name asked for, local chains too
    records = [
        parse_record("ads.retreat.lan=cname:tracker.ads.example.test"),
        parse_record("alias.retreat.lan=cname:cloaked.example.test"),
        parse_record("out.retreat.lan=cname:www.example.test"),
    ]
    r, _, _ = resolver({UP: ZONE.answer}, records=records)
    r.set_policy(r.policy.with_blocklist(blocklist("ads.example.test")))
    lan = UDPClient(r)
    listed = await lan.ask("ads.retreat.lan")
    assert addresses(listed) == ["0.0.0.0"]
    assert [o.code for o in listed.options] == [15]  # RFC 8914: Blocked
    assert addresses(await lan.ask("alias.retreat.lan")) == ["0.0.0.0"]
    assert addresses(await lan.ask("out.retreat.lan")) == ["198.51.100.7", "www.example.test."]
    assert r.stats.cname_blocked == 2


async def test_a_local_cname_to_a_name_outside_is_answered_as_that_name_would_be() -> None:
    # the cache, serve-stale and SERVFAIL, as for a client asking for the target itself
    gone: list[bool] = []

    def uplink(query: dns.message.Message) -> dns.message.Message | str:
        return SILENT if gone else ZONE.answer(query)

    records = [
        parse_record("out.retreat.lan=cname:short.example.test"),
        parse_record("never.retreat.lan=cname:www.example.test"),
    ]
    r, upstream, clock = resolver({UP: uplink}, records=records)
    lan = UDPClient(r)
    for _ in range(3):
        answer = await lan.ask("out.retreat.lan")
        assert addresses(answer) == ["198.51.100.5", "short.example.test."]
    assert upstream.asked() == 1
    gone.append(True)
    clock.advance(6)  # expired, and the upstream is silent: the stale answer
    stale = await lan.ask("out.retreat.lan")
    assert addresses(stale) == ["198.51.100.5", "short.example.test."]
    assert stale.answer[1].ttl == 30  # RFC 8767
    failed = await lan.ask("never.retreat.lan")
    assert failed.rcode() == dns.rcode.SERVFAIL and not failed.answer
    # a client asking with DO: the others' answer, stale, as for the target itself
    signed = await lan.ask("out.retreat.lan", want_dnssec=True)
    assert addresses(signed) == ["198.51.100.5", "short.example.test."]
    assert signed.answer[1].ttl == 30 and not signed.flags & dns.flags.AD


async def test_a_local_cname_to_a_public_name_with_a_private_address_drops_it_at_once() -> None:
    # DNS rebinding: the first answer, fresh from the upstream, as every later one (cached)
    records = [parse_record("out.retreat.lan=cname:sneaky.example.test")]
    r, upstream, _ = resolver({UP: ZONE.answer}, records=records)
    lan = UDPClient(r)
    for _ in range(2):
        assert addresses(await lan.ask("out.retreat.lan")) == ["sneaky.example.test."]
    assert upstream.asked() == 1 and r.stats.rebinding_dropped == 1


async def test_a_public_name_aliased_to_a_lan_name_is_answered_as_blocked() -> None:
    """DNS rebinding through a CNAME: the upstream's answer held no private address to
    drop, and a stub that follows CNAMEs itself (systemd-resolved) asked for the LAN's
    name next (ours, an mDNS one, a bare one) and handed the page its address. Public
    names may still point at a local override of a public name (a cache's), and at a
    forwarded zone; the venue's names at the LAN's."""
    venue = ("192.168.1.1", 53)
    router = Zone(
        "$TTL 60\n@ SOA ns hostmaster 1 3600 600 86400 60\nwiki CNAME wiki.retreat.lan.\n",
        origin="venue.example.",
    )
    public = Zone(
        "$TTL 60\n@ SOA ns.test. h.test. 1 3600 600 86400 60\n"
        "alias.example CNAME wiki.retreat.lan.\nloop.example CNAME localhost.\n"
        "mdns.example CNAME printer.local.\nbare.example CNAME nas.\n"
        "nas.example CNAME nas.venue.example.\ngame.example CNAME cdn.steamcontent.com.\n"
    )
    records = [
        parse_record("wiki.retreat.lan=10.0.0.9"),
        parse_record("*.steamcontent.com=10.0.0.5"),
    ]
    r, _, _ = resolver(
        {UP: public.answer, venue: router.answer},
        records=records,
        forward={"venue.example": (venue,)},
    )
    lan = UDPClient(r)
    for name in ("alias", "loop", "mdns", "bare"):
        assert addresses(await lan.ask(f"{name}.example.test")) == ["0.0.0.0"], name
    assert r.stats.cname_blocked == 4
    assert addresses(await lan.ask("nas.example.test")) == ["nas.venue.example."]
    assert addresses(await lan.ask("game.example.test")) == ["cdn.steamcontent.com."]
    assert addresses(await lan.ask("wiki.venue.example")) == ["wiki.retreat.lan."]
    assert r.stats.cname_blocked == 4


async def test_a_local_cname_into_a_forwarded_zone_asks_that_zones_servers() -> None:
    venue = ("192.168.1.1", 53)
    router = Zone("$TTL 60\n@ SOA ns hostmaster 1 3600 600 86400 60\nnas A 192.168.1.20\n",
                  origin="venue.example.")  # fmt: skip
    records = [parse_record("nas.retreat.lan=cname:nas.venue.example")]
    r, upstream, _ = resolver({UP: lambda q: SILENT, venue: router.answer}, records=records,
                              forward={"venue.example": (venue,)})  # fmt: skip
    answer = await UDPClient(r).ask("nas.retreat.lan")
    assert addresses(answer) == ["192.168.1.20", "nas.venue.example."]  # private: forwarded
    assert upstream.asked(UP) == 0


async def test_a_local_cname_loop_is_servfail_never_followed() -> None:
    # records are checked for loops when set; should one slip in, it is not answered
    loop = ["a.retreat.lan=cname:b.retreat.lan", "b.retreat.lan=cname:a.retreat.lan"]
    r, upstream, _ = resolver({UP: ZONE.answer}, records=[parse_record(x) for x in loop])
    answer = await UDPClient(r).ask("a.retreat.lan")
    assert answer.rcode() == dns.rcode.SERVFAIL and not answer.answer
    assert upstream.asked() == 0


async def test_failover_to_a_healthy_upstream() -> None:
    r, upstream, _ = resolver({UP: lambda q: SILENT, SECOND: ZONE.answer})
    lan = UDPClient(r)
    for name in ("www", "short", "edge", "cdn"):
        assert (await lan.ask(f"{name}.example.test")).answer
    first, second = r.upstreams[""].servers
    assert first.state() == "down" and second.state() == "up"
    assert upstream.asked(UP) == 3 and upstream.asked(SECOND) == 4


async def test_badvers() -> None:
    r, _, _ = resolver({UP: ZONE.answer})
    lan = UDPClient(r)
    answer = await lan.ask("www.example.test", use_edns=1)
    assert answer.rcode() == dns.rcode.BADVERS and answer.edns == 0


SIGNED = Zone(
    ZONE.zone.to_text()
    + f"www.example RRSIG A 8 3 300 20300101000000 20200101000000 4711 test. {'c' * 88}\n",
    secure=True,
)


def rdtypes(answer: dns.message.Message) -> list[str]:
    return [dns.rdatatype.to_text(rrset.rdtype) for rrset in answer.answer]


async def test_an_answer_cached_for_one_kind_of_client_serves_the_others() -> None:
    """A glibc stub asks without EDNS, macOS and dig with it, a validator with DO: one
    upstream answer serves them all, fresh and, with the uplink gone, stale."""
    r, upstream, clock = resolver({UP: SIGNED.answer})
    lan = UDPClient(r)
    signed = await lan.ask("www.example.test", want_dnssec=True)
    assert rdtypes(signed) == ["A", "RRSIG"] and signed.flags & dns.flags.AD
    glibc = await lan.ask("www.example.test", use_edns=False)
    # no OPT, no AD, no signatures for a client that did not ask for them (RFC 4035 3.2.1)
    assert (glibc.edns, glibc.flags & dns.flags.AD, rdtypes(glibc)) == (-1, 0, ["A"])
    assert addresses(glibc) == ["198.51.100.7"] and glibc.answer[0].ttl == 300
    dig = await lan.ask("www.example.test", flags=dns.flags.RD | dns.flags.AD)
    assert dig.flags & dns.flags.AD and rdtypes(dig) == ["A"]  # from the DO answer: AD kept
    assert upstream.asked() == 1
    # never the other way: an answer without signatures is no answer for a validator
    await lan.ask("short.example.test", use_edns=False)
    assert rdtypes(await lan.ask("short.example.test", want_dnssec=True)) == ["A"]
    assert upstream.asked() == 3
    upstream.scripts[UP] = lambda q: SILENT  # the uplink is gone, and the answer old
    clock.advance(400)
    stale = await lan.ask("www.example.test", use_edns=False, flags=dns.flags.RD | dns.flags.CD)
    assert addresses(stale) == ["198.51.100.7"] and stale.answer[0].ttl == 30
    assert stale.flags & dns.flags.CD and rdtypes(stale) == ["A"]


async def test_with_the_upstream_gone_a_do_client_gets_what_the_others_get() -> None:
    """A name cached only for clients without DO (glibc stubs): while the upstream answers,
    a client asking with DO gets its own signed answer; with the upstream gone, the others'
    answer stale, without AD, rather than SERVFAIL; and once it is back, signatures again."""
    gone: list[bool] = []
    r, upstream, clock = resolver({UP: lambda q: SILENT if gone else SIGNED.answer(q)})
    lan = UDPClient(r)
    await lan.ask("www.example.test", use_edns=False)
    gone.append(True)
    clock.advance(400)  # past its TTL, inside the stale window
    stale = await lan.ask("www.example.test", want_dnssec=True)
    assert stale.rcode() == dns.rcode.NOERROR and addresses(stale) == ["198.51.100.7"]
    assert stale.answer[0].ttl == 30 and rdtypes(stale) == ["A"]  # RFC 8767
    assert stale.ednsflags & dns.flags.DO and not stale.flags & dns.flags.AD
    _, items = r.stats.since(1, 10, str)
    assert items[-1]["answer"] == "stale"
    asked_with_do = wire.parse(make_query("www.example.test", want_dnssec=True).to_wire())
    assert asked_with_do is not None and r.cache.get(asked_with_do.key) is None  # not kept
    # nothing held for any client: SERVFAIL, as before
    assert (await lan.ask("edge.example.test", want_dnssec=True)).rcode() == dns.rcode.SERVFAIL
    gone.clear()
    clock.advance(30)  # the upstream's recheck is due
    asked = upstream.asked()
    back = await lan.ask("www.example.test", want_dnssec=True)
    assert rdtypes(back) == ["A", "RRSIG"] and back.flags & dns.flags.AD
    assert upstream.asked() == asked + 1


async def test_a_do_clients_last_resort_is_blocked_if_its_chain_is_listed_now() -> None:
    gone: list[bool] = []
    r, _, clock = resolver({UP: lambda q: SILENT if gone else ZONE.answer(q)})
    lan = UDPClient(r)
    assert addresses(await lan.ask("cdn.example.test", use_edns=False))[0] == "198.51.100.8"
    gone.append(True)
    r.set_policy(r.policy.with_blocklist(blocklist("edge.example.test")))
    clock.advance(4000)  # past the CNAME's hour, inside the stale window
    assert addresses(await lan.ask("cdn.example.test", want_dnssec=True)) == ["0.0.0.0"]
    assert r.stats.cname_blocked == 1


async def test_questions_past_the_flights_cap_are_one_line_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A slow uplink or a flood of names fills the questions in flight: the SERVFAILs that
    follow are explained, once, not left to guess at."""
    hold = Hold(ZONE.answer(make_query("www.example.test")))
    r, _, _ = resolver({UP: lambda q: hold})
    r.flights = Flights(limit=1)
    lan = UDPClient(r)
    lan.send(make_query("www.example.test"))  # waits on the upstream
    with caplog.at_level(logging.WARNING, logger="retreatkit.nameserver"):
        for name in ("a.example.test", "b.example.test"):
            lan.send(make_query(name))
            await asyncio.sleep(0)
        hold.released.set()
        await lan.settle()
    rcodes = [dns.message.from_wire(out).rcode() for out, _ in lan.transport.sent]
    assert sorted(rcodes) == [dns.rcode.NOERROR, dns.rcode.SERVFAIL, dns.rcode.SERVFAIL]
    assert [r.getMessage() for r in caplog.records] == [
        "1 questions already wait on the upstreams (a slow uplink, or a flood of names): new"
        " questions get a stale answer or SERVFAIL until some are answered"
    ]


async def test_one_address_cannot_take_every_question_in_flight(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An attendee asking random names faster than a slow uplink answers held every
    question in flight and every slow-path slot: the rest of the LAN got SERVFAIL, or
    nothing, for any name not cached. Its share is bounded; the others keep theirs."""
    held = asyncio.Event()
    r, _, _ = resolver({UP: lambda q: Hold(ZONE.answer(q), held)})
    lan = UDPClient(r)
    with caplog.at_level(logging.WARNING, logger="retreatkit.nameserver"):
        for i in range(server.MAX_SLOW):
            lan.send(make_query(f"n{i}.flood.test"), client="10.0.0.66")
            await asyncio.sleep(0)
        lan.send(make_query("www.example.test"))  # another attendee, a name not cached
        await asyncio.sleep(0)
        held.set()
        await lan.settle()
    mine = [dns.message.from_wire(out) for out, (ip, _) in lan.transport.sent
            if ip == "10.0.0.5"]  # fmt: skip
    assert [m.rcode() for m in mine] == [dns.rcode.NOERROR] and addresses(mine[0])
    flooder = [dns.message.from_wire(out).rcode() for out, (ip, _) in lan.transport.sent
               if ip == "10.0.0.66"]  # fmt: skip
    assert flooder.count(dns.rcode.SERVFAIL) == server.MAX_SLOW - resolver_module.PER_CLIENT
    assert [r.getMessage() for r in caplog.records] == [
        "10.0.0.66 has 256 questions waiting on the upstreams, the most one address may"
        " (a slow uplink, or a flood of names): its new questions get a stale answer or"
        " SERVFAIL until some are answered"
    ]


async def test_queries_past_the_servers_cap_are_dropped_with_one_line(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "MAX_SLOW", 1)
    hold = Hold(ZONE.answer(make_query("www.example.test")))
    r, _, _ = resolver({UP: lambda q: hold})
    lan = UDPClient(r)
    with caplog.at_level(logging.WARNING, logger="retreatkit.nameserver"):
        for name in ("www.example.test", "a.example.test", "b.example.test"):
            lan.send(make_query(name))
        hold.released.set()
        await lan.settle()
    assert len(lan.transport.sent) == 1  # the two past the cap: dropped, the client asks again
    assert [r.getMessage() for r in caplog.records] == [
        "1 queries are in progress: new ones are dropped until some are answered (a slow"
        " uplink, or a flood)"
    ]
