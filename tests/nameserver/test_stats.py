"""Counting: every answer once, top lists bounded by the tick alone, reads change nothing."""

from __future__ import annotations

import copy

from retreatkit.nameserver import stats as s
from retreatkit.nameserver.fakes import UDPClient, Zone, resolver

ZONE = Zone("$TTL 60\n@ SOA ns.test. h.test. 1 3600 600 86400 60\n*.example A 198.51.100.7\n")
UP = ("192.0.2.53", 53)


def test_top_lists_stay_bounded_without_anyone_reading() -> None:
    stats = s.Stats(keep=10)
    for i in range(1000):
        stats.answered(0.0, f"10.0.{i // 250}.{i % 250}", f"n{i}.example.test", s.FORWARDED)
        if i % 100 == 99:
            stats.tick()
    assert len(stats.domains) <= 20 and len(stats.clients) <= 20
    assert stats.queries == 1000 and len(stats.recent) == 1000


def test_ring_sequence_numbers_and_paging() -> None:
    stats = s.Stats(ring=5)
    for i in range(8):
        stats.answered(float(i), "10.0.0.1", f"n{i}.test", s.FORWARDED, qtype=1, ms=1.5)
    at = str
    next_seq, items = stats.since(-1, 3, at)  # no cursor: the newest
    assert [i["seq"] for i in items] == [6, 7, 8] and next_seq == 8
    next_seq, items = stats.since(0, 2, at)  # older than the ring: from its oldest
    assert [i["seq"] for i in items] == [4, 5] and next_seq == 5
    assert items[0] == {
        "seq": 4,
        "at": "3.0",
        "client": "10.0.0.1",
        "name": "n3.test",
        "type": "A",
        "answer": "forwarded",
        "rcode": "NOERROR",
        "ms": 1.5,
    }
    assert stats.since(8, 10, at) == (8, [])


async def test_status_reads_change_nothing() -> None:
    r, _, clock = resolver({UP: ZONE.answer})
    lan = UDPClient(r)
    for name in ("a", "a", "b", "a"):
        await lan.ask(f"{name}.example.test")
    before = copy.deepcopy((r.stats.counts, r.stats.domains, [e.hits for e in r.stats.dirty]))
    assert r.stats.top("domains") == [("a.example.test", 3), ("b.example.test", 1)]
    r.stats.since(-1, 10, str)
    after = (r.stats.counts, r.stats.domains, [e.hits for e in r.stats.dirty])
    assert after == before
    r.tick(clock())  # the tick folds; the answer is the same
    assert r.stats.top("domains") == [("a.example.test", 3), ("b.example.test", 1)]
    assert not r.stats.dirty
