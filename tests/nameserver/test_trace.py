"""The nameserver's DEBUG lines: what each query became and why, names escaped, in
process with scripted upstreams and a manual clock."""

from __future__ import annotations

import logging

import dns.message
import dns.name
import pytest

from retreatkit.nameserver.blocklist import Blocklist
from retreatkit.nameserver.fakes import SILENT, ManualClock, UDPClient, Zone, resolver
from retreatkit.nameserver.local import parse_record
from retreatkit.nameserver.policy import Policy

UP = ("192.0.2.53", 53)
ZONE = Zone(
    "$TTL 300\n@ SOA ns.test. hostmaster.test. 1 3600 600 86400 60\n"
    "short.example 5 A 198.51.100.5\n*.wild.example A 198.51.100.9\n"
)


def debug_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]


async def test_each_decision_is_a_debug_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "retreatkit.nameserver")
    clock = ManualClock()
    gone: list[bool] = []

    def uplink(query: dns.message.Message) -> dns.message.Message | str:
        if not gone:
            clock.advance(0.012)
            return ZONE.answer(query)
        clock.advance(1.5)  # the attempt's time passes unanswered
        return SILENT

    local = [parse_record("printer.retreat.lan=10.0.0.9")]
    r, _, _ = resolver({UP: uplink}, clock=clock, records=local, stale_wait=1.8)
    blocks = Blocklist()
    blocks.add_lines("ads.txt", ["ads.example.test"])
    r.set_policy(Policy.build(local, blocklist=blocks.seal()))
    lan = UDPClient(r)
    await lan.ask("short.example.test")
    await lan.ask("nothing.example.test")
    await lan.ask("x.ads.example.test")
    await lan.ask("printer.retreat.lan")
    gone.append(True)
    clock.advance(6)  # expired: the refresh goes unanswered
    await lan.ask("short.example.test")
    await lan.ask("new.example.test")
    assert debug_lines(caplog) == [
        "short.example.test A from 10.0.0.5: forwarded to 192.0.2.53:53, NOERROR in 12 ms",
        "nothing.example.test A from 10.0.0.5: forwarded to 192.0.2.53:53, NXDOMAIN in 12 ms",
        "x.ads.example.test A from 10.0.0.5: blocked by the rule ads.example.test, NOERROR",
        "printer.retreat.lan A from 10.0.0.5: answered from the local records of"
        " retreat.lan, NOERROR",
        "short.example.test A from 10.0.0.5: stale answer served, cached 8 s ago"
        " (192.0.2.53:53: no answer in time)",
        "new.example.test A from 10.0.0.5: SERVFAIL, nothing stale to serve"
        " (192.0.2.53:53: no answer in time)",
    ]


async def test_a_name_an_attendee_sends_reaches_the_log_escaped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A label may hold any byte: a newline would forge a log line of our own, an escape
    sequence would act on the terminal that reads the log."""
    caplog.set_level(logging.DEBUG, "retreatkit.nameserver")
    r, _, _ = resolver({UP: ZONE.answer})
    lan = UDPClient(r)
    name = dns.name.Name([b"a\nWARNING fake\x1b[2J\\x0a", b"wild", b"example", b"test", b""])
    query = dns.message.make_query(name, "A", use_edns=0, payload=1232)
    lan.send(query)
    await lan.settle()
    (line,) = debug_lines(caplog)
    assert line == (
        r"a\x0awarning\x20fake\x1b[2j\x5cx0a.wild.example.test A from 10.0.0.5:"
        " forwarded to 192.0.2.53:53, NOERROR in 0 ms"
    )
