"""Who answers a name: local data, lists, forward rules, upstreams (policy routing, pure)."""

from __future__ import annotations

import pytest

from retreatkit.nameserver.blocklist import Blocklist
from retreatkit.nameserver.errors import BadRecord, CnameLoop
from retreatkit.nameserver.local import LocalNames, Record, parse_record
from retreatkit.nameserver.policy import BLOCKED, FORWARD, LOCAL, NODATA, NXDOMAIN, PTR, Policy

A, AAAA, PTR_TYPE = 1, 28, 12


def policy(*lists: str, **kw: object) -> Policy:
    blocklist = Blocklist()
    blocklist.add_lines("t", lists)
    return Policy.build(blocklist=blocklist.seal(), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "record"),
    [
        ("laptop.retreat.lan=10.0.0.7", Record("laptop.retreat.lan", "A", "10.0.0.7")),
        ("v6.retreat.lan=fd00::1", Record("v6.retreat.lan", "AAAA", "fd00::1")),
        ("Docs.Retreat.Lan.=cname:Laptop.retreat.lan", Record("docs.retreat.lan", "CNAME",
                                                              "laptop.retreat.lan")),
        ("*.dev.retreat.lan=10.0.0.8", Record("*.dev.retreat.lan", "A", "10.0.0.8")),
    ],
)  # fmt: skip
def test_parse_record(text: str, record: Record) -> None:
    assert parse_record(text) == record


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope", "expected NAME=ADDRESS, got 'nope'"),
        ("x=notanip", "expected an IP address or cname:TARGET for x, got 'notanip'"),
        ("=1.2.3.4", "not a name: '' (expected NAME=ADDRESS)"),
        ("a..b=1.2.3.4", "not a name: 'a..b' (expected NAME=ADDRESS)"),
        ("a.*.b=1.2.3.4", "not a name: 'a.*.b' (expected NAME=ADDRESS)"),
        ("a.b=cname:*.c", "bad CNAME target '*.c' for a.b"),
    ],
)
def test_parse_record_rejects(text: str, message: str) -> None:
    with pytest.raises(BadRecord) as err:
        parse_record(text)
    assert str(err.value) == message


def test_local_names_follow_the_authoritative_rules() -> None:
    names = LocalNames([parse_record(r) for r in (
        "laptop.retreat.lan=10.0.0.7", "docs.retreat.lan=cname:laptop.retreat.lan",
        "*.dev.retreat.lan=10.0.0.8", "loop1.retreat.lan=cname:loop2.retreat.lan",
        "loop2.retreat.lan=cname:loop1.retreat.lan", "out.retreat.lan=cname:www.example.org",
        "wiki.example.com=10.0.0.3",
    )])  # fmt: skip
    found = names.find("x.y.dev.retreat.lan")
    assert found is not None and found.records == (Record("x.y.dev.retreat.lan", "A", "10.0.0.8"),)
    for empty in ("retreat.lan", "dev.retreat.lan"):  # names below it exist: NODATA
        found = names.find(empty)
        assert found is not None and found.exists and not found.records
    missing = names.find("nope.retreat.lan")
    assert missing is not None and not missing.exists and missing.apex == "retreat.lan"
    assert names.find("example.com") is None  # an override claims no parent
    override = names.find("wiki.example.com")
    assert override is not None and override.apex == "wiki.example.com"
    chain, outside = names.chase("docs.retreat.lan", "A")
    assert [(r.name, r.rtype) for r in chain] == [("docs.retreat.lan", "CNAME"),
                                                  ("laptop.retreat.lan", "A")]  # fmt: skip
    assert outside is None
    with pytest.raises(CnameLoop) as loop:  # a loop is an error (RFC 1034 3.6.2), never spun
        names.chase("loop1.retreat.lan", "A")
    assert (
        str(loop.value) == "CNAME loop: loop1.retreat.lan -> loop2.retreat.lan -> loop1.retreat.lan"
    )
    assert names.chase("loop1.retreat.lan", "CNAME")[0][0].value == "loop2.retreat.lan"
    chain, outside = names.chase("out.retreat.lan", "A")
    assert len(chain) == 1 and outside == "www.example.org"
    assert names.reverse["1.0.0.127.in-addr.arpa"] == "localhost"
    assert names.reverse["7.0.0.10.in-addr.arpa"] == "laptop.retreat.lan"


@pytest.mark.parametrize(
    ("records", "loop"),
    [
        (["a.retreat.lan=cname:b.retreat.lan", "b.retreat.lan=cname:a.retreat.lan"],
         "a.retreat.lan -> b.retreat.lan -> a.retreat.lan"),
        (["self.retreat.lan=cname:self.retreat.lan"], "self.retreat.lan -> self.retreat.lan"),
        # through wildcards: every name under one leads under the other, and back
        (["*.a.retreat.lan=cname:x.b.retreat.lan", "*.b.retreat.lan=cname:y.a.retreat.lan"],
         "*.a.retreat.lan -> x.b.retreat.lan -> y.a.retreat.lan -> x.b.retreat.lan"),
        (["a.retreat.lan=cname:b.retreat.lan", "b.retreat.lan=cname:c.example.org"], None),
    ],
)  # fmt: skip
def test_cname_loops_are_found_before_they_are_answered(records: list[str], loop: str) -> None:
    names = LocalNames([parse_record(r) for r in records])
    if loop is None:
        names.check_loops()
        return
    with pytest.raises(CnameLoop) as found:
        names.check_loops()
    assert str(found.value) == f"CNAME loop: {loop}"


def test_route_order() -> None:
    p = policy(
        "ads.example", "laptop.retreat.lan", "use-application-dns.net",
        records=[parse_record("laptop.retreat.lan=10.0.0.7")],
        forward={"venue.example": (("192.168.1.1", 53),),
                 "168.192.in-addr.arpa": (("192.168.1.1", 53),)},
    )  # fmt: skip
    assert p.route("laptop.retreat.lan", A).kind == LOCAL  # local data wins over every list
    assert p.route("7.0.0.10.in-addr.arpa", PTR_TYPE).kind == PTR
    nodata = p.route("7.0.0.10.in-addr.arpa", A)  # the name exists: its PTR
    assert (nodata.kind, nodata.zone) == (NODATA, "10.in-addr.arpa")
    assert p.route("use-application-dns.net", A).kind == NXDOMAIN  # the canary, not a block
    assert p.route("x.ads.example", A).kind == BLOCKED
    route = p.route("printer.venue.example", A)
    assert (route.kind, route.zone, route.rebind_ok) == (FORWARD, "venue.example", True)
    assert p.route("5.1.168.192.in-addr.arpa", PTR_TYPE).kind == FORWARD  # the router knows
    nx = p.route("1.0.0.10.in-addr.arpa", PTR_TYPE)
    assert (nx.kind, nx.zone) == (NXDOMAIN, "10.in-addr.arpa")
    assert p.route("nope.home.arpa", A).kind == NXDOMAIN
    default = p.route("www.example.org", A)
    assert (default.kind, default.zone, default.rebind_ok) == (FORWARD, "", False)
    assert p.with_pause(True).route("x.ads.example", A).kind == FORWARD
    assert p.route("localhost", AAAA).kind == LOCAL


def test_allow_turns_off_blocking_and_rebinding_protection() -> None:
    p = policy("example.org", allow=["intranet.example.org"])
    route = p.route("a.intranet.example.org", A)
    assert (route.kind, route.rebind_ok) == (FORWARD, True)
