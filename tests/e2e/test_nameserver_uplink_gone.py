"""An upstream whose own uplink is gone, as a real process sees it: a resolver that still
answers NS . from its cache and drops every other question, the check's random name
too. It is marked down after three misses, so the next misses are answered at once
(stale, SERVFAIL) or by the second upstream, never asked of it again until its recheck.
And a working upstream asked only names whose zones are dead answers the check: it
stays up for the LAN's other names."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from retreatkit.nameserver.testing import (
    NameserverProcess,
    ScriptedUpstream,
    reply,
    start_nameserver,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (.ci/run does)"),
]


def is_check(question: dns.rrset.RRset) -> bool:
    """The check question: A of a random 16-character name under com."""
    labels = question.name.labels
    return (
        len(labels) == 3
        and len(labels[0]) == 16
        and labels[1] == b"com"
        and question.rdtype == dns.rdatatype.A
    )


class UplinkGone:
    """A resolver answering every question (TTL 0) until `gone`; then only NS ., from its
    cache, every other question read and dropped."""

    def __init__(self) -> None:
        self.gone = False
        self.checked = threading.Event()  # it was asked the check, and dropped it
        self.upstream = ScriptedUpstream(self._script)

    def _script(
        self, query: dns.message.Message, sock: socket.socket, addr: tuple[str, int]
    ) -> None:
        question = query.question[0]
        if question.name == dns.name.root and question.rdtype == dns.rdatatype.NS:
            sock.sendto(dns.message.make_response(query).to_wire(), addr)
        elif self.gone and is_check(question):
            self.checked.set()
        elif not self.gone:
            sock.sendto(reply(query, "198.51.100.20", ttl=0).to_wire(), addr)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.upstream.port}"

    def questions(self) -> int:
        """Questions it was asked, the check questions left out."""
        return sum(1 for q in self.upstream.queries if not is_check(q.question[0]))


def dig(port: int, *args: str) -> str:
    argv = ["dig", "@127.0.0.1", "-p", str(port), "+time=5", "+tries=1", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout


def upstreams(ns: NameserverProcess) -> list[dict[str, object]]:
    doc = ns.request("GET", "/status")
    assert isinstance(doc, dict)
    found: list[dict[str, object]] = doc["nameserver"]["upstreams"]
    return found


def test_as_the_only_upstream_it_is_down_and_misses_are_answered_at_once() -> None:
    gone = UplinkGone()
    ns = start_nameserver("--upstream", gone.address)
    try:
        assert "\t0\tIN\tA\t198.51.100.20" in dig(ns.port, "cached.example.test")
        gone.gone = True
        with ThreadPoolExecutor(3) as pool:  # three sites at once; each waits its 4 s
            names = [f"www.site{n}.test" for n in range(3)]
            outs = list(pool.map(lambda name: dig(ns.port, name), names))
        assert all("status: SERVFAIL" in out for out in outs)
        assert gone.checked.is_set()  # asked NS . instead, it answered: up for good
        assert [u["state"] for u in upstreams(ns)] == ["down"]
        asked = gone.questions()
        # known down: the cached name stale (RFC 8767 TTL 30), a new one SERVFAIL, neither
        # asked of it (before: 4 s each, every time)
        assert "\t30\tIN\tA\t198.51.100.20" in dig(ns.port, "cached.example.test")
        assert "status: SERVFAIL" in dig(ns.port, "www.site3.test")
        assert gone.questions() == asked
    finally:
        ns.stop()
        gone.upstream.stop()


def test_beside_a_working_upstream_it_is_passed_by_after_misses_on_three_sites() -> None:
    gone = UplinkGone()
    gone.gone = True

    def working(query: dns.message.Message, sock: socket.socket, addr: tuple[str, int]) -> None:
        if len(second.queries) == 3:  # the miss that has the first asked the check
            gone.checked.wait(10)  # answered after it goes out, as a farther resolver is
        sock.sendto(reply(query, "198.51.100.21").to_wire(), addr)

    second = ScriptedUpstream(working)
    ns = start_nameserver("--upstream", gone.address, "--upstream", f"127.0.0.1:{second.port}")
    try:
        for n in range(3):  # each waits an attempt's time on the first, then the second answers
            assert "198.51.100.21" in dig(ns.port, "+short", f"www.site{n}.test")
        assert gone.checked.is_set()
        assert [u["state"] for u in upstreams(ns)] == ["down", "up"]
        asked = gone.questions()
        for n in range(3, 6):  # straight to the second (before: 1.5 s on the first, each)
            assert "198.51.100.21" in dig(ns.port, "+short", f"www.site{n}.test")
        assert (gone.questions(), len(second.queries)) == (asked, 6)
    finally:
        ns.stop()
        gone.upstream.stop()
        second.stop()


def test_a_working_upstream_asked_only_dead_zones_stays_up_for_the_lan() -> None:
    """One name in each of three dead zones asked at once, nothing else: their servers
    are silent, so each gets SERVFAIL, but the upstream answers the check's name
    (NXDOMAIN, as the root would) and stays up: the LAN's next name is answered (before:
    down for 30 s, and every uncached name of the LAN got SERVFAIL)."""
    dead = {dns.name.from_text(f"www.tracker{n}.example") for n in range(3)}

    def working(query: dns.message.Message, sock: socket.socket, addr: tuple[str, int]) -> None:
        question = query.question[0]
        if question.name in dead:
            return  # the zone's servers never answer it
        if is_check(question):
            answer = dns.message.make_response(query)
            answer.set_rcode(dns.rcode.NXDOMAIN)
            sock.sendto(answer.to_wire(), addr)
        else:
            sock.sendto(reply(query, "198.51.100.22").to_wire(), addr)

    upstream = ScriptedUpstream(working)
    ns = start_nameserver("--upstream", f"127.0.0.1:{upstream.port}")
    try:
        with ThreadPoolExecutor(3) as pool:
            outs = list(pool.map(lambda name: dig(ns.port, name.to_text()), dead))
        assert all("status: SERVFAIL" in out for out in outs)
        assert any(is_check(q.question[0]) for q in upstream.queries)  # it was checked
        assert [u["state"] for u in upstreams(ns)] == ["up"]
        assert dig(ns.port, "+short", "www.next.example").strip() == "198.51.100.22"
    finally:
        ns.stop()
        upstream.stop()
