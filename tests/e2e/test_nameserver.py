"""The nameserver as a real process, asked by dig and kdig, forwarding to real upstreams:
Debian's dnsmasq, or a zone served over UDP and TCP by the test (DNSSEC records, big
answers, CNAME chains, wildcards, TTL 0)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retreatkit.nameserver.fakes import Zone
from retreatkit.nameserver.testing import (
    Dnsmasq,
    NameserverProcess,
    ScriptedUpstream,
    ZoneUpstream,
    reply,
    start_nameserver,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (.ci/run does)"),
]
HOSTS = """\
198.51.100.7 www.example.test
2001:db8::7 www.example.test
198.51.100.8 ads.example.test
198.51.100.9 tracker.example.test
10.9.9.9 sneaky.example.test
10.9.9.8 intranet.example.test
"""
KEY = "AwEAAb" + "b" * 678  # an RSA-4096-sized DNSKEY: three and their RRSIG pass 1232 bytes
SIG = "c" * 684
HINTS = ",".join(f"2001:db8::{i:x}" for i in range(1, 91))  # an HTTPS record over 1232 bytes
ZONE = f"""
$TTL 300
@ SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@ NS ns.example.test.
@ DNSKEY 257 3 8 {KEY}
@ DNSKEY 256 3 8 {KEY[:-4]}dddd
@ DNSKEY 256 3 8 {KEY[:-4]}eeee
@ RRSIG DNSKEY 8 2 300 20300101000000 20200101000000 4711 example.test. {SIG}
www A 198.51.100.7
www HTTPS 1 . alpn=h2
hints HTTPS 1 . alpn=h2 ipv6hint={HINTS}
www RRSIG A 8 3 300 20300101000000 20200101000000 4711 example.test. {SIG[:88]}
big TXT {" ".join(chr(34) + chr(97 + i) * 250 + chr(34) for i in range(6))}
cdn 3600 CNAME edge
edge 60 A 198.51.100.8
cloaked CNAME pixel.tracker.test.
ttl0 0 A 198.51.100.10
*.wild A 198.51.100.11
"""
VENUE = """
$TTL 60
@ SOA router.venue.example. admin.venue.example. 1 3600 600 86400 60
printer A 192.168.1.5
"""


def dig(port: int, *args: str, server: str = "127.0.0.1") -> str:
    done = subprocess.run(
        ["dig", f"@{server}", "-p", str(port), "+time=3", "+tries=1", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout


def short(port: int, *args: str) -> list[str]:
    return dig(port, "+short", *args).split()


def kdig(port: int, *args: str) -> str:
    done = subprocess.run(
        ["kdig", "@127.0.0.1", "-p", str(port), "+time=3", "+retry=0", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout


def dns_query(name: str) -> bytes:
    wire = dns.message.make_query(name, "A").to_wire()
    return struct.pack(">H", len(wire)) + wire


def flags(out: str) -> set[str]:
    """The header flags dig or kdig printed (`;; flags: qr rd ra ad;`)."""
    line = next(x for x in out.splitlines() if ";; flags:" in x or ";; Flags:" in x)
    return set(line.split(":", 1)[1].split(";")[0].split())


def admin(ns: NameserverProcess, method: str, path: str, body: object = None) -> object:
    """Every admin request of these tests goes through here (one place for credentials)."""
    return ns.request(method, path, body)


def status(ns: NameserverProcess) -> dict[str, object]:
    doc = admin(ns, "GET", "/status")
    assert isinstance(doc, dict)
    section: dict[str, object] = doc["nameserver"]
    return section


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Dnsmasq]:
    hosts = tmp_path / "hosts"
    many = "".join(f"198.51.100.{i} big.example.test\n" for i in range(1, 100))
    hosts.write_text(HOSTS + many)
    server = Dnsmasq.start(hosts)
    yield server
    server.stop()


@pytest.fixture
def blocklist(tmp_path: Path) -> Path:
    path = tmp_path / "block.txt"
    path.write_text(
        "\ufeff# a comment, after a byte order mark\n"
        "0.0.0.0 tracker.example.test\n"  # hosts format
        "||ads.example.test^\n"  # adblock format
        "example-ads.test\n"  # plain
        "www.example.test##.banner\n"  # cosmetic, for browsers: nothing for DNS, skipped
        "this is not a line\n"
    )
    return path


@pytest.fixture
def ns(upstream: Dnsmasq, blocklist: Path) -> Iterator[NameserverProcess]:
    server = start_nameserver(
        "--upstream", f"127.0.0.1:{upstream.port}", "--blocklist", str(blocklist),
        "--record", "laptop.retreat.lan=10.0.0.7", "--record", "printer.retreat.lan=fd00::9",
        "--record", "docs.retreat.lan=cname:laptop.retreat.lan", "--allow", "intranet.example.test",
    )  # fmt: skip
    yield server
    server.stop()


@pytest.fixture(scope="module")
def zones() -> Iterator[tuple[ZoneUpstream, ZoneUpstream]]:
    main = ZoneUpstream(Zone(ZONE, "example.test.", secure=True))
    venue = ZoneUpstream(Zone(VENUE, "venue.example."))
    yield main, venue
    main.stop()
    venue.stop()


@pytest.fixture(scope="module")
def zns(
    zones: tuple[ZoneUpstream, ZoneUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NameserverProcess]:
    """Ours in front of the test's zone, with a list, local names and a forward rule."""
    main, venue = zones
    block = tmp_path_factory.mktemp("lists") / "block.txt"
    block.write_text("||tracker.test^\n0.0.0.0 blocked.example.test\n")
    server = start_nameserver(
        "--upstream", main.address, "--blocklist", str(block),
        "--forward", f"venue.example={venue.address}",
        "--record", "laptop.retreat.lan=10.0.0.7",
        "--record", "docs.retreat.lan=cname:laptop.retreat.lan",
        "--record", "*.dev.retreat.lan=10.0.0.8",
        "--record", "wiki.retreat.lan=cname:www.example.test",
    )  # fmt: skip
    yield server
    server.stop()


def test_forwards_and_caches(ns: NameserverProcess) -> None:
    assert short(ns.port, "www.example.test") == ["198.51.100.7"]
    assert short(ns.port, "www.example.test", "AAAA") == ["2001:db8::7"]
    out = dig(ns.port, "wWw.ExAmPle.TEST")  # case kept in the answer (0x20)
    assert "wWw.ExAmPle.TEST." in out.split(";; ANSWER SECTION:")[1]
    assert status(ns)["cache_hits"] >= 1  # type: ignore[operator]
    assert short(ns.port, "+tcp", "www.example.test") == ["198.51.100.7"]
    assert kdig(ns.port, "+short", "www.example.test").split() == ["198.51.100.7"]


def test_negative_answers(ns: NameserverProcess) -> None:
    assert "status: NXDOMAIN" in dig(ns.port, "nothing.example.test")  # from upstream
    out = dig(ns.port, "nothing.retreat.lan")  # our own: with the zone's SOA
    assert "status: NXDOMAIN" in out
    assert out.split(";; AUTHORITY SECTION:")[1].split()[0] == "retreat.lan."


def test_sinkhole(ns: NameserverProcess) -> None:
    assert short(ns.port, "tracker.example.test") == ["0.0.0.0"]
    assert short(ns.port, "deep.sub.ads.example.test") == ["0.0.0.0"]  # parent blocks child
    assert short(ns.port, "ads.example.test", "AAAA") == ["::"]
    assert short(ns.port, "example-ads.test") == ["0.0.0.0"]
    out = dig(ns.port, "ads.example.test")
    assert "EDE: 15 (Blocked)" in out
    doc = status(ns)
    assert doc["blocklist_entries"] == 3
    assert doc["blocklist_bad_lines"] == 1
    assert short(ns.port, "www.example.test") == ["198.51.100.7"]
    assert doc["blocked"] == 5


def test_every_repeated_block_counts_as_blocked(ns: NameserverProcess) -> None:
    query = dns.message.make_query("tracker.example.test", "A").to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        for _ in range(50):  # the same bytes each time: the exact-bytes path answers
            s.sendto(query, ("127.0.0.1", ns.port))
            s.recvfrom(4096)
    doc = status(ns)
    assert (doc["blocked"], doc["cache_hits"], doc["queries"]) == (50, 0, 50)
    assert doc["top_blocked"] == [["tracker.example.test", 50]]


def test_nxdomain_mode_and_allowlist(upstream: Dnsmasq, blocklist: Path) -> None:
    ns = start_nameserver(
        "--upstream", f"127.0.0.1:{upstream.port}", "--blocklist", str(blocklist),
        "--block-mode", "nxdomain", "--allow", "tracker.example.test",
    )  # fmt: skip
    try:
        out = dig(ns.port, "ads.example.test")
        assert "status: NXDOMAIN" in out and "SOA" in out
        assert short(ns.port, "tracker.example.test") == ["198.51.100.9"]  # the allowlist wins
    finally:
        ns.stop()


def test_local_names_and_ptr(ns: NameserverProcess) -> None:
    assert short(ns.port, "laptop.retreat.lan") == ["10.0.0.7"]
    assert short(ns.port, "printer.retreat.lan", "AAAA") == ["fd00::9"]
    assert short(ns.port, "-x", "10.0.0.7") == ["laptop.retreat.lan."]
    for rdtype in ("TXT", "A"):  # the name exists (its PTR): NODATA, not NXDOMAIN
        out = dig(ns.port, "7.0.0.10.in-addr.arpa", rdtype)
        assert "status: NOERROR" in out and "ANSWER: 0," in out
        assert out.split(";; AUTHORITY SECTION:")[1].split()[:4] == ["10.in-addr.arpa.", "60",
                                                                     "IN", "SOA"]  # fmt: skip
    assert short(ns.port, "docs.retreat.lan") == ["laptop.retreat.lan.", "10.0.0.7"]
    assert "status: NXDOMAIN" in dig(ns.port, "unknown.retreat.lan")
    assert "status: NXDOMAIN" in dig(ns.port, "-x", "192.168.77.1")  # private reverse stays home
    assert "status: NXDOMAIN" in dig(ns.port, "use-application-dns.net")


def test_rebinding_protection(ns: NameserverProcess) -> None:
    assert short(ns.port, "sneaky.example.test") == []  # public name, private address: dropped
    assert short(ns.port, "intranet.example.test") == ["10.9.9.8"]  # allowed
    assert status(ns)["rebinding_dropped"] == 1


def test_any_is_minimal(ns: NameserverProcess) -> None:
    out = dig(ns.port, "www.example.test", "ANY")
    answer = out.split(";; ANSWER SECTION:")[1]
    assert "HINFO" in answer and '"RFC8482"' in answer and "198.51.100.7" not in answer


def test_truncation_then_tcp(ns: NameserverProcess) -> None:
    out = dig(ns.port, "+noedns", "+ignore", "big.example.test")
    assert "tc" in flags(out)
    assert len(short(ns.port, "+noedns", "big.example.test")) == 99  # dig retries over TCP
    # with EDNS: more than 1232 bytes from dnsmasq, which we fetched over TCP
    out = dig(ns.port, "+ignore", "big.example.test")
    assert "tc" in flags(out) and "; EDNS: version: 0, flags:; udp: 1232" in out
    assert len(short(ns.port, "big.example.test")) == 99


def test_big_answers_over_udp_and_tcp(zns: NameserverProcess) -> None:
    # item 1: a TXT over 1232 bytes: TC with our OPT over UDP, whole over TCP
    out = dig(zns.port, "+ignore", "big.example.test", "TXT")
    assert "tc" in flags(out) and "udp: 1232" in out and "ANSWER: 0" in out
    whole = dig(zns.port, "+tcp", "big.example.test", "TXT")
    assert "ANSWER: 1" in whole and "a" * 250 in whole and "f" * 250 in whole
    assert len(short(zns.port, "big.example.test", "TXT")) == 6  # dig's own retry over TCP
    # DNSKEY with DO: kdig moves to TCP by itself and gets every key and the RRSIG
    keys = kdig(zns.port, "+dnssec", "example.test", "DNSKEY")
    assert keys.count("\tDNSKEY\t") == 3 and "\tRRSIG\tDNSKEY " in keys
    assert "TCP" in keys


def test_https_records_are_answered(zns: NameserverProcess) -> None:
    # type 65 is 0x0041, an "A" in ASCII: replies to it were once lowercased to type 97
    # when matched to our question, and every browser's HTTPS question was SERVFAIL
    spoofed = status(zns)["spoofed_replies_ignored"]
    assert short(zns.port, "www.example.test", "HTTPS") == ["1", ".", 'alpn="h2"']
    assert short(zns.port, "+tcp", "WWW.example.test", "TYPE65") == ["1", ".", 'alpn="h2"']
    # over 1232 bytes: fetched from the upstream over TCP, whole to a client over TCP
    out = dig(zns.port, "+tcp", "hints.example.test", "HTTPS")
    assert "status: NOERROR" in out and "2001:db8::5a" in out
    assert status(zns)["spoofed_replies_ignored"] == spoofed


def test_dnssec_bits_as_the_upstream_gave_them(zns: NameserverProcess) -> None:
    signed = dig(zns.port, "+dnssec", "www.example.test")
    assert "ad" in flags(signed) and "flags: do;" in signed and "RRSIG" in signed
    plain = dig(zns.port, "+noadflag", "www.example.test")
    assert "ad" not in flags(plain) and "flags: do;" not in plain and "RRSIG" not in plain
    assert "ad" in flags(dig(zns.port, "www.example.test"))  # dig asks with AD: it learns
    assert "cd" in flags(dig(zns.port, "+cdflag", "www.example.test"))
    k = kdig(zns.port, "+dnssec", "www.example.test")
    assert "ad" in flags(k) and "; Version: 0; flags: do;" in k


def test_cname_chains_keep_each_ttl_and_cloaking_is_blocked(zns: NameserverProcess) -> None:
    out = dig(zns.port, "+noall", "+answer", "cdn.example.test")
    ttls = [(line.split()[3], line.split()[1]) for line in out.splitlines() if line]
    assert ttls == [("CNAME", "3600"), ("A", "60")]
    assert short(zns.port, "cloaked.example.test") == ["0.0.0.0"]  # its CNAME is listed


def test_local_zones(zns: NameserverProcess) -> None:
    assert short(zns.port, "docs.retreat.lan") == ["laptop.retreat.lan.", "10.0.0.7"]
    assert short(zns.port, "anything.dev.retreat.lan") == ["10.0.0.8"]
    assert short(zns.port, "wiki.retreat.lan") == ["www.example.test.", "198.51.100.7"]
    nodata = dig(zns.port, "retreat.lan")  # names exist under it: NODATA, not NXDOMAIN
    assert "status: NOERROR" in nodata and "ANSWER: 0" in nodata
    aaaa = dig(zns.port, "laptop.retreat.lan", "AAAA")
    assert aaaa.split(";; AUTHORITY SECTION:")[1].split()[0] == "retreat.lan."
    assert short(zns.port, "-x", "127.0.0.1") == ["localhost."]
    assert short(zns.port, "wild.example.test") == []  # upstream's wildcard is upstream's
    assert short(zns.port, "x.wild.example.test") == ["198.51.100.11"]


@pytest.mark.parametrize(
    ("name", "zone"),
    [
        ("b._dns-sd._udp.0.1.16.172.in-addr.arpa", "16.172.in-addr.arpa."),  # macOS browsing
        ("lb._dns-sd._udp.0.0.254.169.in-addr.arpa", "254.169.in-addr.arpa."),
        ("1.16.172.in-addr.arpa", "16.172.in-addr.arpa."),
        ("999.1.0.10.in-addr.arpa", "10.in-addr.arpa."),  # no such address: still 10/8
        ("x.d.f.ip6.arpa", "d.f.ip6.arpa."),  # under fd00::/8, the ULAs
    ],
)
def test_private_reverse_names_stay_on_the_lan(
    zns: NameserverProcess, zones: tuple[ZoneUpstream, ZoneUpstream], name: str, zone: str
) -> None:
    """RFC 6303: whatever the shape of a reverse name under a private network, it is
    answered here (NXDOMAIN with that zone's SOA), never asked upstream."""
    main, _ = zones
    asked = main.asked()
    out = dig(zns.port, name, "PTR")
    assert "status: NXDOMAIN" in out
    assert out.split(";; AUTHORITY SECTION:")[1].split()[0] == zone
    assert main.asked() == asked


def test_a_public_reverse_name_is_asked_upstream(
    zns: NameserverProcess, zones: tuple[ZoneUpstream, ZoneUpstream]
) -> None:
    main, _ = zones
    asked = main.asked()
    dig(zns.port, "5.4.110.in-addr.arpa", "PTR")  # 110.4.5.0/24: public, though it ends "10"
    assert main.asked() == asked + 1


def test_conditional_forwarding(zns: NameserverProcess) -> None:
    assert short(zns.port, "printer.venue.example") == ["192.168.1.5"]  # private is fine here


def test_badvers(zns: NameserverProcess) -> None:
    out = dig(zns.port, "+edns=1", "+noednsnegotiation", "www.example.test")
    assert "status: BADVERS" in out and "EDNS: version: 0" in out
    assert "BADVERS" in kdig(zns.port, "+edns=1", "www.example.test")


def test_stale_and_servfail_at_once_when_the_upstream_goes_silent() -> None:
    upstream = ZoneUpstream(Zone(ZONE, "example.test."))
    ns = start_nameserver("--upstream", upstream.address)
    try:
        assert short(ns.port, "ttl0.example.test") == ["198.51.100.10"]
        upstream.silent = True  # reads everything, answers nothing, sends no ICMP
        with ThreadPoolExecutor(3) as pool:  # three failures mark it down
            # each waits out the upstream's patience (4 s), as a stub's 5 s allows
            outs = list(pool.map(lambda i: dig(ns.port, "+time=5", f"n{i}.example.test"), range(3)))
        assert all("status: SERVFAIL" in out for out in outs)
        asked = upstream.asked()
        # known down: a stale answer (RFC 8767 TTL 30) and SERVFAIL without asking it, so
        # without waiting on it
        out = dig(ns.port, "ttl0.example.test")
        assert "\t30\tIN\tA\t198.51.100.10" in out
        # a client asking with DO (a validating stub) gets the same, not SERVFAIL: unsigned
        # and without AD, as nothing was validated for it
        signed = dig(ns.port, "+dnssec", "ttl0.example.test")
        assert "\t30\tIN\tA\t198.51.100.10" in signed and "; EDNS: version: 0, flags: do;" in signed
        assert ";; flags: qr rd ra;" in signed
        assert "status: SERVFAIL" in dig(ns.port, "never.example.test")
        assert upstream.asked() == asked
        doc = status(ns)
        assert doc["upstreams"][0]["state"] == "down"  # type: ignore[index]
        assert any("every upstream is down" in w for w in doc["warnings"])  # type: ignore[attr-defined]
    finally:
        ns.stop()
        upstream.stop()


def test_a_slow_uplink_still_answers_and_is_no_attack() -> None:
    """An uplink whose round trip outlasts one attempt (1.5 s): its answer is still taken
    when it comes, the upstream stays up, and nothing counts as spoofed."""
    timers: list[threading.Timer] = []

    def script(query: dns.message.Message, sock: socket.socket, addr: tuple[str, int]) -> None:
        late = threading.Timer(2.0, sock.sendto, (reply(query, "198.51.100.42").to_wire(), addr))
        timers.append(late)  # the satellite's latency, not a wait for anything
        late.start()

    fake = ScriptedUpstream(script)
    ns = start_nameserver("--upstream", f"127.0.0.1:{fake.port}")
    try:
        for name in ("one.example.test", "two.example.test", "three.example.test"):
            assert short(ns.port, name) == ["198.51.100.42"]
        doc = status(ns)
        assert doc["upstreams"][0]["state"] == "up"  # type: ignore[index]
        assert (doc["spoofed_replies_ignored"], doc["servfail"], doc["warnings"]) == (0, 0, [])
        assert len(fake.queries) == 3  # one query each, answered late
    finally:
        ns.stop()
        for timer in timers:
            timer.cancel()
        fake.stop()


def test_an_upstream_that_does_not_speak_edns_is_asked_without_it() -> None:
    """An old venue router answers a query with an OPT record FORMERR (RFC 6891 7): asked
    again without it, it answers, and is asked so from then on. Before, every client got
    FORMERR for every name."""

    def script(query: dns.message.Message, sock: socket.socket, addr: tuple[str, int]) -> None:
        if query.edns >= 0:
            refused = dns.message.make_response(query)
            refused.use_edns(False)
            refused.set_rcode(dns.rcode.FORMERR)
            sock.sendto(refused.to_wire(), addr)
        else:
            sock.sendto(reply(query, "198.51.100.44").to_wire(), addr)

    fake = ScriptedUpstream(script)
    ns = start_nameserver("--upstream", f"127.0.0.1:{fake.port}")
    try:
        assert short(ns.port, "one.example.test") == ["198.51.100.44"]
        assert short(ns.port, "+noedns", "two.example.test") == ["198.51.100.44"]
        assert [q.edns for q in fake.queries] == [0, -1, -1]
        assert status(ns)["upstreams"][0]["state"] == "up"  # type: ignore[index]
    finally:
        ns.stop()
        fake.stop()


def test_names_an_upstream_fails_take_it_down_for_nobody() -> None:
    """A validating upstream answers SERVFAIL for a name whose DNSSEC is broken, and
    refuses zone transfers: an attendee asking three such questions took the upstream
    down for 30 s, and every other name with it."""

    def script(query: dns.message.Message, sock: socket.socket, addr: tuple[str, int]) -> None:
        answer = reply(query, "198.51.100.45")
        if query.question[0].name.to_text().startswith("bogus"):
            answer = dns.message.make_response(query)
            answer.set_rcode(dns.rcode.SERVFAIL)
        sock.sendto(answer.to_wire(), addr)

    fake = ScriptedUpstream(script)
    ns = start_nameserver("--upstream", f"127.0.0.1:{fake.port}")
    try:
        for i in range(3):
            assert "status: SERVFAIL" in dig(ns.port, f"bogus{i}.example.test")
        assert short(ns.port, "www.example.test") == ["198.51.100.45"]
        for _ in range(3):
            axfr = dig(ns.port, "example.test", "AXFR", "+notcp")  # REFUSED, not forwarded
            assert axfr.endswith("; Transfer failed.\n")
        assert short(ns.port, "www2.example.test") == ["198.51.100.45"]
        assert all(q.question[0].rdtype == dns.rdatatype.A for q in fake.queries)
        upstream = status(ns)["upstreams"][0]  # type: ignore[index]
        assert (upstream["state"], upstream["errors"]) == ("up", 3)
    finally:
        ns.stop()
        fake.stop()


def test_spoofed_replies_are_ignored() -> None:
    def script(query: dns.message.Message, sock: socket.socket, addr: tuple[str, int]) -> None:
        wrong_id = reply(query, "203.0.113.66")
        wrong_id.id = (query.id + 1) % 65536
        sock.sendto(wrong_id.to_wire(), addr)
        other = dns.message.make_query("other.example.test", "A")
        wrong_question = reply(other, "203.0.113.67")
        wrong_question.id = query.id
        sock.sendto(wrong_question.to_wire(), addr)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as elsewhere:
            elsewhere.bind(("127.0.0.1", 0))  # right ID and question, wrong source port
            elsewhere.sendto(reply(query, "203.0.113.68").to_wire(), addr)
        sock.sendto(reply(query, "198.51.100.99").to_wire(), addr)

    fake = ScriptedUpstream(script)
    ns = start_nameserver("--upstream", f"127.0.0.1:{fake.port}")
    try:
        assert short(ns.port, "victim.example.test") == ["198.51.100.99"]
        assert status(ns)["spoofed_replies_ignored"] == 2  # the third never reached us
        assert len(fake.queries) == 1
    finally:
        ns.stop()
        fake.stop()


def test_outside_the_lan_is_refused_and_logged_once(upstream: Dnsmasq, tmp_path: Path) -> None:
    config = tmp_path / "retreat.toml"
    config.write_text('[nameserver]\nnetworks = ["10.0.0.0/8"]\n')
    ns = start_nameserver("--upstream", f"127.0.0.1:{upstream.port}", config=config)
    try:
        assert "status: REFUSED" in dig(ns.port, "www.example.test")
        assert "198.51.100.7" not in dig(ns.port, "www.example.test")
        ns.process.wait_for("refusing queries")
        ns.process.popen.terminate()
        _, seen = ns.process.finish()  # every line it wrote, to its exit
    finally:
        ns.stop()
    lines = [line for line in seen if "refusing queries" in line]
    assert len(lines) == 1
    assert lines[0].endswith(
        "refusing queries from 127.0.0.0/24 (127.0.0.1): not in the LAN's networks; to answer"
        ' it, add "127.0.0.0/24" to networks in [nameserver] of retreat.toml'
    )


def test_rate_limit_slips_to_tcp(upstream: Dnsmasq) -> None:
    ns = start_nameserver("--upstream", f"127.0.0.1:{upstream.port}", "--rate-limit", "3")
    try:
        query = dns.message.make_query("www.example.test", "A", use_edns=0).to_wire()
        truncated = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            for _ in range(30):
                s.sendto(query, ("127.0.0.1", ns.port))
                answer = dns.message.from_wire(s.recvfrom(4096)[0])
                truncated += bool(answer.flags & 0x0200)
                assert answer.edns == 0  # a TC answer keeps its OPT
        assert truncated > 0  # over the limit: TC, so a NAT's clients retry over TCP
        assert short(ns.port, "+tcp", "www.example.test") == ["198.51.100.7"]
        ns.process.popen.terminate()
        _, seen = ns.process.finish()  # every line it wrote, to its exit
    finally:
        ns.stop()
    # the organiser learns who floods, in one line, however long the flood goes on
    lines = [line for line in seen if "queries a second" in line]
    assert len(lines) == 1
    assert lines[0].endswith(
        "WARNING 127.0.0.1 asks more than 3 queries a second: its UDP answers come truncated"
        " (it asks again over TCP); the limit is rate_limit in [nameserver] of retreat.toml"
    )


def test_one_host_cannot_take_every_tcp_connection(upstream: Dnsmasq) -> None:
    ns = start_nameserver("--upstream", f"127.0.0.1:{upstream.port}")
    held = []
    try:
        for _ in range(16):  # the per-address cap
            held.append(socket.create_connection(("127.0.0.1", ns.port), timeout=5))
        for _ in range(3):
            extra = socket.create_connection(("127.0.0.1", ns.port), timeout=5)
            with extra, contextlib.suppress(ConnectionResetError):  # reset or closed, at once
                extra.sendall(dns_query("www.example.test"))
                assert extra.recv(10) == b""
        # another address of the LAN is still served, over TCP too
        out = dig(ns.port, "-b", "127.0.0.2", "+tcp", "+short", "www.example.test")
        assert out.split() == ["198.51.100.7"]
        ns.process.popen.terminate()
        _, seen = ns.process.finish()
    finally:
        for conn in held:
            conn.close()
        ns.stop()
    lines = [line for line in seen if "TCP connections" in line]
    assert len(lines) == 1  # one line for the address, not one per connection turned away
    assert lines[0].endswith(
        "WARNING 127.0.0.1 holds 16 TCP connections, the most one address may: its next ones"
        " are closed at once"
    )


def test_a_client_that_never_reads_its_answers_cannot_fill_our_memory(
    upstream: Dnsmasq, tmp_path: Path
) -> None:
    """Queries pipelined over TCP whose answers the client never reads: we stop reading
    them (before, every answer was buffered: one laptop took the server past 2 GB); at
    its deadline the connection is reset, its answers dropped (before, it was closed,
    which waits for them to be sent: the socket and what it held stayed for good)."""
    config = tmp_path / "retreat.toml"
    many = ", ".join(f'"10.0.{i // 250}.{i % 250 + 1}"' for i in range(100))
    config.write_text(f'[nameserver.records]\n"many.retreat.lan" = [{many}]\n')
    ns = start_nameserver("--upstream", f"127.0.0.1:{upstream.port}", config=config)
    queries = dns_query("many.retreat.lan") * 50_000  # 1.7 KB answers to 1.8 MB of queries
    sent = 0
    try:
        with socket.socket() as hog:
            hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # reads nothing, anyway
            hog.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            hog.connect(("127.0.0.1", ns.port))
            hog.settimeout(3)
            with contextlib.suppress(TimeoutError):
                while sent < len(queries):
                    sent += hog.send(queries[sent : sent + 65536])
            assert sent < len(queries)  # it stopped taking queries
            assert len(short(ns.port, "+tcp", "many.retreat.lan")) == 100  # others: fine
            ended = select.poll()
            ended.register(hog, 0)  # only an error or a hang-up: a reset, within 30 s
            assert ended.poll(30_000), "the connection was never reset"
            assert hog.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNRESET
    finally:
        ns.stop()


def test_sighup_reloads_and_the_next_query_is_blocked(upstream: Dnsmasq, tmp_path: Path) -> None:
    lists = tmp_path / "block.txt"
    lists.write_text("||ads.example.test^\n")
    ns = start_nameserver("--upstream", f"127.0.0.1:{upstream.port}", "--blocklist", str(lists))
    try:
        assert short(ns.port, "www.example.test") == ["198.51.100.7"]  # cached for 60 s
        lists.write_text("||ads.example.test^\n0.0.0.0 www.example.test\n")
        os.kill(ns.process.pid, signal.SIGHUP)
        ns.process.wait_for(
            f"^SIGHUP: nameserver: blocklists reloaded: 2 entries from {re.escape(str(lists))}$"
        )
        assert short(ns.port, "www.example.test") == ["0.0.0.0"]
        source = status(ns)["blocklists"][0]  # type: ignore[index]
        assert (source["entries"], source["bad_lines"], source["last_error"]) == (2, 0, None)
        assert source["loaded_at"].endswith("Z")
    finally:
        ns.stop()


def test_a_login_page_in_place_of_the_list_is_no_list(upstream: Dnsmasq, tmp_path: Path) -> None:
    lists = tmp_path / "block.txt"
    lists.write_text(
        "||ads.example.test^\n0.0.0.0 tracker.example.test\nexample-ads.test\n0.0.0.0 x.test\n"
    )
    ns = start_nameserver("--upstream", f"127.0.0.1:{upstream.port}", "--blocklist", str(lists))
    try:
        assert short(ns.port, "ads.example.test") == ["0.0.0.0"]
        lists.write_text(  # what hotel Wi-Fi answers until someone logs in
            "<!DOCTYPE html>\n<html><head><title>Guest Wi-Fi</title></head>\n"
            '<body><form action="/login"><input name="room"></form></body>\n</html>\n'
        )
        os.kill(ns.process.pid, signal.SIGHUP)
        why = "not a blocklist: it is a web page (a Wi-Fi login page in its place?)"
        line = ns.process.wait_for(r"WARNING blocklist ").string
        assert line.endswith(f"blocklist {lists} failed ({why}); keeping the last good copy")
        ns.process.wait_for(
            f"^SIGHUP: nameserver: blocklists reloaded: {re.escape(str(lists))} failed \\(not a"
            r" blocklist: .*\), its last 4 entries kept$"
        )
        doc = status(ns)
        source = doc["blocklists"][0]  # type: ignore[index]
        assert (source["entries"], source["bad_lines"], source["last_error"]) == (4, 0, why)
        assert doc["warnings"] == [f"blocklist {lists} failed: {why}; keeping the last good copy"]
        assert short(ns.port, "tracker.example.test") == ["0.0.0.0"]  # still blocked
    finally:
        ns.stop()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(junk=st.lists(st.binary(max_size=600), min_size=1, max_size=20))
def test_fuzzed_bytes_never_break_it(ns: NameserverProcess, junk: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for data in junk:
            s.sendto(data, ("127.0.0.1", ns.port))
    with socket.create_connection(("127.0.0.1", ns.port), timeout=5) as t:
        for data in junk:
            t.sendall(struct.pack(">H", len(data)) + data)
    assert ns.process.popen.poll() is None
    assert short(ns.port, "www.example.test") == ["198.51.100.7"]


def test_metrics_and_status_shape(ns: NameserverProcess) -> None:
    short(ns.port, "www.example.test")
    short(ns.port, "www.example.test")
    doc = status(ns)
    assert doc["top_domains"][0][0] == "www.example.test"  # type: ignore[index]
    assert doc["upstreams"][0]["state"] == "up"  # type: ignore[index]
    assert doc["up"] is True and doc["blocking"] == "on" and doc["warnings"] == []
    with urllib.request.urlopen(f"{ns.admin}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert "nameserver_queries_total" in text and "nameserver_cache_hits_total" in text
    recent = admin(ns, "GET", "/nameserver/queries?limit=2")
    assert isinstance(recent, dict)
    assert [(q["name"], q["answer"]) for q in recent["queries"]] == [
        ("www.example.test", "forwarded"),
        ("www.example.test", "cached"),
    ]


def test_blocklist_url_keeps_last_good_copy(upstream: Dnsmasq, tmp_path: Path) -> None:
    from retreatkit.mirror.testing import start_upstream

    root = tmp_path / "lists"
    root.mkdir()
    (root / "list.txt").write_text("||ads.example.test^\n")
    server = start_upstream(root)
    url = f"{server.url}list.txt"
    ns = start_nameserver("--upstream", f"127.0.0.1:{upstream.port}", "--blocklist", url)
    try:
        assert short(ns.port, "ads.example.test") == ["0.0.0.0"]
        (root / ".behaviours.json").write_text(json.dumps({"/list.txt": "fail"}))
        done = admin(ns, "POST", "/nameserver/blocklists/reload")
        assert isinstance(done, dict)
        (source,) = done["blocklists"]
        assert source["source"] == url and source["entries"] == 1
        assert source["last_error"] == "HTTP 500"
        assert status(ns)["blocklist_entries"] == 1  # the last good copy stays in force
        assert short(ns.port, "ads.example.test") == ["0.0.0.0"]
    finally:
        ns.stop()
        server.stop()
