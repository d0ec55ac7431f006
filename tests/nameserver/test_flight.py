"""Identical questions in flight share one upstream query (RFC 5452 9.1, DNSpooq)."""

from __future__ import annotations

import asyncio

import dns.message
import pytest

from retreatkit.nameserver.errors import UpstreamFailed
from retreatkit.nameserver.fakes import Hold, UDPClient, Zone, make_query, resolver
from retreatkit.nameserver.flight import Flights

ZONE = Zone("$TTL 60\n@ SOA ns.test. h.test. 1 3600 600 86400 60\nmerged A 198.51.100.5\n")
UP = ("192.0.2.53", 53)


async def test_one_flight_per_key_and_a_bound() -> None:
    flights: Flights[str] = Flights(limit=2)
    gate = asyncio.Event()
    started = 0

    async def fetch() -> str:
        nonlocal started
        started += 1
        await gate.wait()
        return "answer"

    a = flights.join(b"a", fetch)
    assert flights.join(b"a", fetch) is a
    flights.join(b"b", fetch)
    with pytest.raises(UpstreamFailed, match="2 questions already wait on the upstreams"):
        flights.join(b"c", fetch)
    gate.set()
    assert await a == "answer"
    await asyncio.sleep(0)
    assert (started, flights.merged, flights.refused, len(flights)) == (2, 1, 1, 0)


async def test_clients_asking_at_once_share_one_upstream_query() -> None:
    hold = Hold(ZONE.answer(make_query("merged.test")))
    r, upstream, _ = resolver({UP: lambda q: hold})
    lan = UDPClient(r)
    for i in range(10):  # ten clients, some with other EDNS bits: the question is one
        query = make_query("MERGED.test") if i % 2 else make_query("merged.test", use_edns=False)
        lan.send(query, client=f"10.0.0.{i + 1}")
    await asyncio.sleep(0)
    hold.released.set()
    await lan.settle()
    answers = [dns.message.from_wire(data) for data, _ in lan.transport.sent]
    assert len(answers) == 10
    assert all(a.answer[0][0].address == "198.51.100.5" for a in answers)
    assert upstream.asked() == 1
    assert r.stats.counts[1] == 10  # forwarded: each was answered after the one query


async def test_a_flight_run_in_the_askers_task_is_shared_too() -> None:
    flights: Flights[str] = Flights()
    gate = asyncio.Event()

    async def fetch() -> str:
        await gate.wait()
        return "answer"

    first = asyncio.ensure_future(flights.run(b"k", fetch))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(flights.run(b"k", fetch))
    joined = flights.join(b"k", fetch)
    await asyncio.sleep(0)
    gate.set()
    assert [await first, await second, await joined] == ["answer"] * 3
    assert (flights.started, flights.merged, len(flights)) == (1, 2, 0)

    async def broken() -> str:
        raise UpstreamFailed("upstream: SERVFAIL")

    with pytest.raises(UpstreamFailed, match="SERVFAIL"):
        await flights.run(b"k", broken)
    assert len(flights) == 0
