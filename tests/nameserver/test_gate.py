"""Who may ask: the LAN's networks, the first refusal per network logged once."""

from __future__ import annotations

import logging

import dns.flags
import dns.rcode
import pytest

from retreatkit.nameserver.fakes import UDPClient, Zone, resolver
from retreatkit.nameserver.gate import LAN, LOG_AGAIN, REFUSALS_LOGGED, Gate, too_open

ZONE = Zone("$TTL 60\n@ SOA ns.test. h.test. 1 3600 600 86400 60\nwww A 198.51.100.7\n")
UP = ("192.0.2.53", 53)


def test_lan_only_and_v4_mapped() -> None:
    gate = Gate(["10.0.0.0/8", "fd00::/8"], 0)
    assert gate.allowed("10.1.2.3") and gate.allowed("::ffff:10.1.2.3")
    assert gate.allowed("fd00::5") and not gate.allowed("203.0.113.5")
    assert not gate.allowed("not an address")


async def test_first_refusal_per_network_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    r, upstream, _ = resolver({UP: ZONE.answer})
    lan = UDPClient(r, networks=["10.0.0.0/8"])
    with caplog.at_level(logging.WARNING, logger="retreatkit.nameserver"):
        for client in ("203.0.113.5", "203.0.113.5", "203.0.113.77", "198.51.100.1"):
            assert (await lan.ask("www.test", client=client)).rcode() == 5
    assert [r.getMessage() for r in caplog.records] == [
        "refusing queries from 203.0.113.0/24 (203.0.113.5): not in the LAN's networks; to"
        ' answer it, add "203.0.113.0/24" to networks in [nameserver] of retreat.toml',
        "refusing queries from 198.51.100.0/24 (198.51.100.1): not in the LAN's networks; to"
        ' answer it, add "198.51.100.0/24" to networks in [nameserver] of retreat.toml',
    ]
    assert upstream.asked() == 0 and r.stats.counts[6] == 4


async def test_over_the_rate_a_client_gets_truncated_answers() -> None:
    r, _, _ = resolver({UP: ZONE.answer})
    lan = UDPClient(r, rate=2)
    answers = [await lan.ask("www.test") for _ in range(4)]
    assert [bool(a.flags & 0x0200) for a in answers] == [False, False, True, True]
    assert answers[-1].edns == 0  # TC keeps the OPT
    assert r.stats.counts[7] == 2


async def test_refused_and_rate_limited_answers_never_say_authenticated_data() -> None:
    """dig sets AD in its queries: the answers that carry no data must not echo it."""
    r, _, _ = resolver({UP: ZONE.answer})
    lan = UDPClient(r, networks=["10.0.0.0/8"], rate=1)
    ad = dns.flags.RD | dns.flags.AD
    refused = await lan.ask("www.test", client="203.0.113.5", flags=ad)
    assert refused.rcode() == dns.rcode.REFUSED and refused.flags & dns.flags.AD == 0
    answers = [await lan.ask("www.test", flags=ad, want_dnssec=True) for _ in range(2)]
    assert answers[1].flags & dns.flags.TC and answers[1].flags & dns.flags.AD == 0


async def test_a_flood_is_a_line_per_address_then_again_only_after_a_while(
    caplog: pytest.LogCaptureFixture,
) -> None:
    r, _, clock = resolver({UP: ZONE.answer})
    lan = UDPClient(r, rate=2)
    with caplog.at_level(logging.WARNING, logger="retreatkit.nameserver"):
        for _ in range(3):  # three seconds of flood: one line
            for _ in range(4):
                await lan.ask("www.test")
            clock.advance(1)
        await lan.ask("www.test", client="10.0.0.6")  # under the limit: nothing to say
        clock.advance(LOG_AGAIN)
        for _ in range(3):
            await lan.ask("www.test")
    line = (
        "10.0.0.5 asks more than 2 queries a second: its UDP answers come truncated (it asks"
        " again over TCP); the limit is rate_limit in [nameserver] of retreat.toml"
    )
    assert [r.getMessage() for r in caplog.records] == [line, line]


async def test_refusals_from_a_scan_are_a_few_lines_not_thousands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    r, _, clock = resolver({UP: ZONE.answer})
    lan = UDPClient(r, networks=["10.0.0.0/8"])
    with caplog.at_level(logging.WARNING, logger="retreatkit.nameserver"):
        for i in range(200):  # spoofed sources, or the internet's scanners
            await lan.ask("www.test", client=f"203.0.{i}.5")
        clock.advance(LOG_AGAIN)
        await lan.ask("www.test", client="198.51.100.9")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == REFUSALS_LOGGED + 2
    assert lines[REFUSALS_LOGGED] == (
        "refusing queries from more networks outside the LAN (a scan, or spoofed sources?):"
        " the next ones are not logged for 10 minutes; /status counts every refusal (refused)"
    )
    assert lines[-1].startswith("refusing queries from 198.51.100.0/24 (198.51.100.9)")
    assert r.stats.counts[6] == 201  # every one refused, and counted


def test_networks_that_let_the_internet_ask_are_warned_of_at_start() -> None:
    """networks = ["0.0.0.0/0"] was taken without a word: an open resolver."""
    assert too_open(list(LAN)) is None
    assert too_open(["10.0.0.0/8", "130.10.0.0/16", "fd00::/8"]) is None  # a venue's public /16
    assert too_open(["0.0.0.0/0", "192.168.0.0/16", "::/0"]) == (
        "networks in [nameserver] holds 0.0.0.0/0, ::/0: anyone who reaches this host may"
        " ask, an open resolver others can use to flood a victim with answers; name the"
        " LAN's networks instead"
    )
