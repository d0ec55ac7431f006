"""The nameserver as a real process, asked by dig and kdig, forwarding to a real dnsmasq."""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.message
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retreatkit.nameserver.testing import (
    Dnsmasq,
    NameserverProcess,
    ScriptedUpstream,
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


def dig(port: int, *args: str) -> str:
    done = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+time=3", "+tries=1", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout


def short(port: int, *args: str) -> list[str]:
    return dig(port, "+short", *args).split()


def status(ns: NameserverProcess) -> dict[str, object]:
    with urllib.request.urlopen(f"{ns.admin}/status", timeout=10) as r:
        doc: dict[str, object] = json.load(r)["nameserver"]
    return doc


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Dnsmasq]:
    hosts = tmp_path / "hosts"
    many = "".join(f"198.51.100.{i} big.example.test\n" for i in range(1, 60))
    hosts.write_text(HOSTS + many)
    server = Dnsmasq.start(hosts)
    yield server
    server.stop()


@pytest.fixture
def blocklist(tmp_path: Path) -> Path:
    path = tmp_path / "block.txt"
    path.write_text(
        "# a comment\n"
        "0.0.0.0 tracker.example.test\n"  # hosts format
        "||ads.example.test^\n"  # adblock format
        "example-ads.test\n"  # plain
        "www.example.test##.banner\n"  # cosmetic, not a DNS rule: counted bad, skipped
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


def test_forwards_and_caches(ns: NameserverProcess) -> None:
    assert short(ns.port, "www.example.test") == ["198.51.100.7"]
    assert short(ns.port, "www.example.test", "AAAA") == ["2001:db8::7"]
    out = dig(ns.port, "wWw.ExAmPle.TEST")  # case kept in the answer (0x20)
    assert "wWw.ExAmPle.TEST." in out.split(";; ANSWER SECTION:")[1]
    assert status(ns)["cache_hits"] >= 1
    assert short(ns.port, "+tcp", "www.example.test") == ["198.51.100.7"]
    kdig = shutil.which("kdig")
    if kdig:
        done = subprocess.run(
            [kdig, "@127.0.0.1", "-p", str(ns.port), "+short", "www.example.test"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.stdout.split() == ["198.51.100.7"]


def test_negative_answers(ns: NameserverProcess) -> None:
    assert "status: NXDOMAIN" in dig(ns.port, "nothing.example.test")  # from upstream
    out = dig(ns.port, "nothing.retreat.lan")  # our own: with an SOA, so stubs cache it
    assert "status: NXDOMAIN" in out
    assert "SOA" in out.split(";; AUTHORITY SECTION:")[1]


def test_sinkhole(ns: NameserverProcess) -> None:
    assert short(ns.port, "tracker.example.test") == ["0.0.0.0"]
    assert short(ns.port, "deep.sub.ads.example.test") == ["0.0.0.0"]  # parent blocks child
    assert short(ns.port, "ads.example.test", "AAAA") == ["::"]
    assert short(ns.port, "example-ads.test") == ["0.0.0.0"]
    out = dig(ns.port, "ads.example.test")
    assert "EDE: 15 (Blocked)" in out
    doc = status(ns)
    assert doc["blocklist_entries"] == 3
    assert doc["blocklist_bad_lines"] == 2
    assert short(ns.port, "www.example.test") == ["198.51.100.7"]
    assert doc["blocked"] >= 4  # type: ignore[operator]


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
    assert short(ns.port, "docs.retreat.lan")[0] == "laptop.retreat.lan."
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
    assert " tc " in out.split("flags:")[1].split(";")[0] + " "
    full = short(ns.port, "+noedns", "big.example.test")  # dig retries over TCP
    assert len(full) == 59


def test_serve_stale_when_upstream_dies(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    upstream = Dnsmasq.start(hosts, ttl=0)  # answers expire at once: the next ask is stale
    ns = start_nameserver("--upstream", f"127.0.0.1:{upstream.port}")
    try:
        assert short(ns.port, "www.example.test") == ["198.51.100.7"]
        upstream.stop()
        out = dig(ns.port, "www.example.test")
        line = next(x for x in out.splitlines() if x.startswith("www.example.test."))
        assert line.split()[1] == "30" and line.split()[-1] == "198.51.100.7"  # RFC 8767 TTL
        assert "status: SERVFAIL" in dig(ns.port, "never-seen.example.test")
        assert status(ns)["stale_served"] == 1
    finally:
        ns.stop()
        upstream.stop()


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


def test_identical_questions_merge_upstream() -> None:
    def script(query: dns.message.Message, sock: socket.socket, addr: tuple[str, int]) -> None:
        time.sleep(0.3)  # a slow upstream, so the clients' questions overlap
        sock.sendto(reply(query, "198.51.100.5").to_wire(), addr)

    fake = ScriptedUpstream(script)
    ns = start_nameserver("--upstream", f"127.0.0.1:{fake.port}")
    try:
        digs = [
            subprocess.Popen(
                [
                    "dig",
                    "@127.0.0.1",
                    "-p",
                    str(ns.port),
                    "+short",
                    "+time=5",
                    "+tries=1",
                    "merged.example.test",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(10)
        ]
        outs = [p.communicate(timeout=30)[0].split() for p in digs]
        assert all(out == ["198.51.100.5"] for out in outs)
        assert len(fake.queries) <= 2  # one, or two if a dig started after the first reply
    finally:
        ns.stop()
        fake.stop()


def test_outside_the_lan_is_refused(upstream: Dnsmasq, tmp_path: Path) -> None:
    config = tmp_path / "retreat.toml"
    config.write_text('[nameserver]\nnetworks = ["10.0.0.0/8"]\n')
    ns = start_nameserver("--upstream", f"127.0.0.1:{upstream.port}", config=config)
    try:
        assert "status: REFUSED" in dig(ns.port, "www.example.test")
        assert "198.51.100.7" not in dig(ns.port, "www.example.test")
    finally:
        ns.stop()


def test_rate_limit_slips_to_tcp(upstream: Dnsmasq) -> None:
    ns = start_nameserver("--upstream", f"127.0.0.1:{upstream.port}", "--rate-limit", "3")
    try:
        query = dns.message.make_query("www.example.test", "A").to_wire()
        truncated = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            for _ in range(30):
                s.sendto(query, ("127.0.0.1", ns.port))
                answer = dns.message.from_wire(s.recvfrom(4096)[0])
                truncated += bool(answer.flags & 0x0200)
        assert truncated > 0  # over the limit: TC, so a NAT's clients retry over TCP
        assert short(ns.port, "+tcp", "www.example.test") == ["198.51.100.7"]
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
    assert doc["upstreams"][0]["healthy"] is True  # type: ignore[index]
    with urllib.request.urlopen(f"{ns.admin}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert "nameserver_queries_total" in text and "nameserver_cache_hits_total" in text


def test_failover_to_a_healthy_upstream(upstream: Dnsmasq) -> None:
    dead = ScriptedUpstream(lambda query, sock, addr: None)  # never answers
    ns = start_nameserver(
        "--upstream", f"127.0.0.1:{dead.port}", "--upstream", f"127.0.0.1:{upstream.port}"
    )
    try:
        for name in ("www.example.test", "ads.example.test", "tracker.example.test"):
            assert short(ns.port, name) != []
        servers = status(ns)["upstreams"]
        assert isinstance(servers, list)
        assert servers[0]["errors"] >= 1 and servers[1]["queries"] >= 3
    finally:
        ns.stop()
        dead.stop()


def test_blocklist_url_keeps_last_good_copy(upstream: Dnsmasq, tmp_path: Path) -> None:
    from retreatkit.mirror.testing import start_upstream

    root = tmp_path / "lists"
    root.mkdir()
    (root / "list.txt").write_text("||ads.example.test^\n")
    server = start_upstream(root)
    config = tmp_path / "retreat.toml"
    config.write_text("[nameserver]\nreload_every = 0.2\n")
    ns = start_nameserver(
        "--upstream", f"127.0.0.1:{upstream.port}", "--blocklist", f"{server.url}list.txt",
        config=config,
    )  # fmt: skip
    try:
        assert short(ns.port, "ads.example.test") == ["0.0.0.0"]
        (root / ".behaviours.json").write_text(json.dumps({"/list.txt": "fail"}))
        deadline = time.monotonic() + 20
        while not status(ns)["blocklist_errors"]:  # poll until a reload has failed
            assert time.monotonic() < deadline, "no reload failed in 20 s"
        assert status(ns)["blocklist_entries"] == 1  # the last good copy stays in force
        assert short(ns.port, "ads.example.test") == ["0.0.0.0"]
    finally:
        ns.stop()
        server.stop()


def test_a_late_refresh_is_cached_after_a_stale_answer() -> None:
    def script(query: dns.message.Message, sock: socket.socket, addr: tuple[str, int]) -> None:
        if len(fake.queries) == 1:
            sock.sendto(reply(query, "198.51.100.1", ttl=0).to_wire(), addr)
        else:
            time.sleep(0.5)  # after the dead upstream's 1.5 s: later than a client waits
            sock.sendto(reply(query, "198.51.100.2", ttl=300).to_wire(), addr)

    dead = ScriptedUpstream(lambda query, sock, addr: None)
    fake = ScriptedUpstream(script)
    ns = start_nameserver(
        "--upstream", f"127.0.0.1:{dead.port}", "--upstream", f"127.0.0.1:{fake.port}"
    )
    try:
        assert short(ns.port, "slow.example.test") == ["198.51.100.1"]
        out = dig(ns.port, "slow.example.test")  # stale (TTL 30) while the refresh goes on
        assert "\t30\tIN\tA\t198.51.100.1" in out
        deadline = time.monotonic() + 20
        while short(ns.port, "slow.example.test") != ["198.51.100.2"]:
            assert time.monotonic() < deadline, "the late answer never replaced the stale one"
        assert len(fake.queries) == 2  # the refresh that came late was kept, not asked again
    finally:
        ns.stop()
        fake.stop()
        dead.stop()
