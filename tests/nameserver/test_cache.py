"""Cache writes: what an upstream reply becomes in the cache (fill, cache; no I/O)."""

from __future__ import annotations

import gc
import math
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from retreatkit.nameserver import fill, server, wire
from retreatkit.nameserver import reply as replies
from retreatkit.nameserver.cache import ENTRY_COST, MAX_BYTES, Cache, cost, max_bytes_for
from retreatkit.nameserver.fakes import UDPClient, Zone, make_query, resolver
from retreatkit.nameserver.upstream import Answer, Upstream

ZONE = Zone(
    """
$TTL 300
@ SOA ns.test. hostmaster.test. 1 3600 600 86400 45
www A 198.51.100.7
cdn 3600 CNAME edge
edge 60 A 198.51.100.8
big 4294967295 A 198.51.100.9
intranet A 10.1.2.3
"""
)
UP = Upstream("192.0.2.53")


def upstream_reply(name: str, rdtype: str = "A", **options: object) -> tuple[bytes, bytes]:
    """(client query bytes, the upstream's reply bytes to our query for it)."""
    client = make_query(name, rdtype, **options)
    data = client.to_wire()
    query = wire.parse(data)
    assert query is not None
    ours = dns.message.from_wire(wire.upstream_query(7, query.key))
    return data, ZONE.answer(ours).to_wire()


def store(name: str, rdtype: str = "A", rebind_ok: bool = False, **options: object):  # type: ignore[no-untyped-def]
    data, raw = upstream_reply(name, rdtype, **options)
    query = wire.parse(data)
    assert query is not None
    reply = replies.digest(raw, query.key[:-1])
    cache = Cache(stale_for=600)
    entry, dropped = fill.forwarded(cache, query, data, Answer(raw, reply, UP), rebind_ok, 100.0, 3)
    answer = dns.message.from_wire(entry.template.render(query, data, 0))
    return cache, entry, answer, dropped


def test_positive_answer_ttls_and_windows() -> None:
    _, entry, answer, _ = store("cdn.test")
    assert [(r.rdtype, r.ttl) for r in answer.answer] == [(5, 3600), (1, 60)]
    assert (entry.expires, entry.stale_until, entry.generation) == (160.0, 760.0, 3)
    assert entry.targets == ("edge.test",)
    assert not entry.own and entry.fresh_until(100.5) == 101.0


def test_negative_answer_caches_for_the_soa_minimum() -> None:
    _, entry, answer, _ = store("nothing.test")
    assert answer.rcode() == dns.rcode.NXDOMAIN
    assert entry.expires == 100.0 + 45  # RFC 2308: min(SOA TTL 300, MINIMUM 45)


def test_a_ttl_with_the_top_bit_counts_as_zero() -> None:
    _, entry, answer, _ = store("big.test")
    assert answer.answer[0].ttl == 0 and entry.expires == 100.0  # RFC 2181 8


def test_rebinding_drops_private_addresses_of_public_names() -> None:
    _, _, answer, dropped = store("intranet.test")
    assert dropped and not answer.answer
    _, _, answer, dropped = store("intranet.test", rebind_ok=True)
    assert not dropped and answer.answer[0][0].address == "10.1.2.3"


def test_opt_is_ours_and_dnssec_bits_follow_the_client() -> None:
    _, _, answer, _ = store("www.test", want_dnssec=True)
    assert answer.edns == 0 and answer.payload == wire.UDP_PAYLOAD
    assert answer.ednsflags & dns.flags.DO
    _, _, plain, _ = store("www.test", use_edns=False)
    assert plain.edns == -1 and not plain.flags & dns.flags.AA


def test_own_answers_never_expire_and_flush_takes_every_variant() -> None:
    cache = Cache()
    for options in ({}, {"use_edns": False}, {"want_dnssec": True}):
        data = make_query("gone.test", **options).to_wire()
        query = wire.parse(data)
        assert query is not None
        response = dns.message.make_response(dns.message.from_wire(data))
        response.answer.append(dns.rrset.from_text("gone.test.", 60, "IN", "A", "192.0.2.1"))
        entry = fill.own(cache, query, response, 3, 1.0, 0)
        assert entry.own and entry.expires == math.inf
    other = wire.parse(make_query("sub.gone.test").to_wire())
    assert other is not None
    cache.put_own(other.key, entry.template, 3, 1.0, 0)
    assert cache.flush("gone.test") == 3 and len(cache) == 1


def test_the_oldest_goes_first_when_full() -> None:
    cache = Cache(max_entries=2)
    _, entry, _, _ = store("www.test")
    for key in (b"a", b"b", b"c"):
        cache.put(key, entry.template, 60, 0.0, 0)
    assert list(cache.entries) == [b"b", b"c"]
    assert cache.expire(1000.0) == 0 and cache.expire(100000.0) == 2


def test_big_answers_are_bounded_in_bytes_not_only_in_number() -> None:
    """A client asking names of a zone it runs, each answer 64 KiB: the oldest go when the
    answers reach max_bytes, however few they are."""
    _, entry, _, _ = store("www.test")
    big = wire.Template(bytearray(65535), (), 12)  # a whole TCP answer's worth
    size = 65535 + 1 + ENTRY_COST  # its one-byte key, and what the entry holds beside them
    cache = Cache(max_bytes=3 * size + 1000)
    for key in (b"a", b"b", b"c", b"d"):
        cache.put(key, big, 60, 0.0, 0)
    assert list(cache.entries) == [b"b", b"c", b"d"] and cache.bytes == 3 * size
    cache.put(b"e", entry.template, 60, 0.0, 0)  # a small one fits beside them: nothing goes
    assert len(cache) == 4
    cache.flush("www.test")
    assert cache.expire(100000.0) == 4 and cache.bytes == 0


TXT = " ".join('"' + "y" * 240 + '"' for _ in range(4))
FLOOD = Zone(
    "$TTL 3600\n@ SOA ns.test. h.test. 1 3600 600 86400 60\n"
    f"*.txt TXT {TXT}\n"  # 1 KB answers: a flood's
    + "".join(f"*.many A 198.51.100.{i}\n" for i in range(1, 21))  # 20 records each
    + "*.chain CNAME edge.test.\nedge A 198.51.100.1\n"  # a CNAME target to check again
)


@contextmanager
def traced() -> Iterator[None]:
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        yield
    finally:
        if started:
            tracemalloc.stop()


def held(drop: object) -> int:
    """The bytes tracemalloc sees go when `drop()` lets go of what it holds."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    drop()  # type: ignore[operator]
    gc.collect()
    return before - tracemalloc.get_traced_memory()[0]


def test_what_the_cache_counts_is_what_it_holds() -> None:
    """A flood of unique names: the bytes the cache counts against its cap are, within
    10% below and 30% above, what tracemalloc sees it hold. Counting the answers' bytes
    alone, 1 KB answers took 1.6 times the count and 20 records 5 times: the cap was
    passed three times over. The margin: the dict's table is resized as it fills (its
    share per entry varies by ~50 bytes), and an entry's TTLs below 256 are shared ints."""
    for suffix, rdtype in (("txt", "TXT"), ("many", "A"), ("chain", "A")):
        data = make_query(f"n0000.{suffix}.test", rdtype).to_wire()
        query = wire.parse(data)
        assert query is not None
        raw = FLOOD.answer(dns.message.from_wire(wire.upstream_query(7, query.key))).to_wire()
        names = [b"\x05n%04d" % i for i in range(1000)]  # the same answer for each name
        asked = [(data.replace(b"\x05n0000", n), raw.replace(b"\x05n0000", n)) for n in names]
        cache = Cache()
        with traced():
            for data, raw in asked:
                query = wire.parse(data)
                assert query is not None
                answer = Answer(raw, replies.digest(raw, query.key[:-1]), UP)
                fill.forwarded(cache, query, data, answer, False, 100.0, 3)
            counted = cache.bytes
            holds = held(cache.clear)
        assert 0.9 <= counted / holds <= 1.3, (suffix, counted, holds)


async def test_the_exact_answers_are_bounded_by_what_they_hold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The UDP server's answers by exact query bytes: bounded in bytes, counted as the
    cache counts (each row also keeps its cache entry alive); before, 65,536 rows of
    any size, uncounted: 80 MB of 1 KB answers beside the cache's cap."""
    monkeypatch.setattr(server, "EXACT_BYTES", 256 * 1024)
    r, _, _ = resolver({("192.0.2.53", 53): FLOOD.answer})
    lan = UDPClient(r)
    most = 0
    with traced():
        for i in range(300):
            for client in ("10.0.0.5", "10.0.0.6"):  # a miss, then a hit: a row
                lan.send(make_query(f"n{i}.txt.test", "TXT"), client)
                await lan.settle()
            lan.transport.sent.clear()
            most = max(most, lan.server.exact_bytes)
        exact = lan.server.exact
        assert exact
        own = sum(row.cost - cost(row.entry) for row in exact.values())  # and the entry's
        rows = held(exact.clear)
    assert most <= 256 * 1024
    assert 0.9 <= own / rows <= 1.3, (own, rows)


def test_the_cache_takes_at_most_a_quarter_of_a_small_machine() -> None:
    """A nameserver guest of 128 MB held a cache bounded at 128 MB: it would never fit."""
    mb = 1024 * 1024
    assert max_bytes_for(128 * mb) == 32 * mb
    assert max_bytes_for(56 * mb) == 14 * mb
    assert max_bytes_for(16 * 1024 * mb) == MAX_BYTES  # a laptop: the bound as before
    assert max_bytes_for(None) == MAX_BYTES


def test_a_nameserver_bounds_its_cache_by_the_machine_it_runs_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from retreatkit.nameserver import service
    from retreatkit.nameserver.fakes import FakeTransport, ManualClock

    monkeypatch.setattr(service, "physical_memory", lambda: 128 * 1024 * 1024)
    settings = service.Settings(listen=("127.0.0.1", 0), upstreams=[("192.0.2.53", 53)])
    ns = service.Nameserver(settings, clock=ManualClock(), transport=FakeTransport({}))
    assert ns.resolver.cache.max_bytes == 32 * 1024 * 1024
