"""A down upstream asked again, on a manual clock: only the check question (a name no
cache holds) brings it back, never a name it answers from its cache."""

from __future__ import annotations

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from retreatkit.nameserver.fakes import SILENT, UDPClient, Zone, resolver
from retreatkit.nameserver.upstream import RETRY_AFTER

VENUE = ("192.0.2.53", 53)
ZONE = Zone("$TTL 3600\n@ SOA ns.test. h.test. 1 3600 600 86400 60\n*.example A 198.51.100.7\n")
HELD = dns.name.from_text("www.held.example.test")  # in the venue resolver's cache
COM = dns.name.from_text("com")


class VenueResolver:
    """A venue's resolver: with its uplink, it answers everything; without, only the
    names its cache holds (others at the venue asked them), and it drops the rest."""

    def __init__(self) -> None:
        self.uplink = True
        self.asked: list[dns.message.Message] = []

    def __call__(self, query: dns.message.Message) -> dns.message.Message | str:
        self.asked.append(query)
        if self.uplink or query.question[0].name == HELD:
            return ZONE.answer(query)
        return SILENT

    def checks(self) -> list[str]:
        """The check questions it was asked: A of a random 16-character name under com."""
        return [
            q.question[0].name.to_text()
            for q in self.asked
            if q.question[0].name.parent() == COM and q.question[0].rdtype == dns.rdatatype.A
        ]


async def test_a_down_upstream_answering_from_its_cache_stays_down() -> None:
    """Its recheck due, an attendee's question went to the down upstream as the probe; a
    name in its cache was answered, and it was up: every new name after waited on it
    again (4 s each, until three took it down again). Now the attendee's question never
    goes to it: the check does, which it drops, so it stays down."""
    venue = VenueResolver()
    r, _, clock = resolver({VENUE: venue})
    lan = UDPClient(r)
    group = r.upstreams[""]
    (up,) = group.servers
    venue.uplink = False
    for n in range(3):
        assert (await lan.ask(f"www.site{n}.example.test")).rcode() == dns.rcode.SERVFAIL
    assert up.state() == "down"
    asked = len(venue.asked)
    clock.advance(RETRY_AFTER)  # its recheck is due
    held = await lan.ask("www.held.example.test")
    assert held.rcode() == dns.rcode.SERVFAIL  # before: its cached answer, and it was up
    assert (up.state(), len(venue.asked)) == ("down", asked)
    assert group.due(clock()) == [up]
    assert not await group.check_again(up)
    assert len(venue.checks()) == 1 and len(venue.asked) == asked + 1
    assert (up.state(), up.last_error, up.down_until) == (
        "down",
        "no answer in time",
        clock() + RETRY_AFTER,
    )
    assert group.due(clock()) == []
    # its uplink back: the next recheck passes, and the attendees' names are asked again
    venue.uplink = True
    clock.advance(RETRY_AFTER)
    assert await group.check_again(up)
    assert (up.state(), up.failures, len(venue.checks())) == ("up", 0, 2)
    again = await lan.ask("www.site0.example.test")
    assert [r.to_text() for rrset in again.answer for r in rrset] == ["198.51.100.7"]


async def test_a_check_refused_keeps_a_down_upstream_down() -> None:
    """A venue router's dnsmasq whose route out went down once it was down answers the
    check REFUSED: it is there, but resolves nothing new, so down it stays."""
    venue = VenueResolver()
    r, transport, clock = resolver({VENUE: venue})
    group = r.upstreams[""]
    (up,) = group.servers
    venue.uplink = False
    lan = UDPClient(r)
    for n in range(3):
        await lan.ask(f"www.site{n}.example.test")
    clock.advance(RETRY_AFTER)  # its recheck is due, and its route out gone too

    def refusing(query: dns.message.Message) -> dns.message.Message:
        refused = dns.message.make_response(query)
        refused.set_rcode(dns.rcode.REFUSED)
        return refused

    transport.scripts[VENUE] = refusing
    # an attendee's question is no probe (before: it was, REFUSED, and the upstream was
    # `failing`: asked every question again)
    assert (await lan.ask("www.new.example.test")).rcode() == dns.rcode.SERVFAIL
    assert up.state() == "down"
    assert not await group.check_again(up)
    assert (up.state(), up.last_error) == (
        "down",
        "REFUSED to the check question, a name no cache holds",
    )
