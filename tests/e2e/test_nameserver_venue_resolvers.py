"""The kit's upstream is the venue's own resolver, as real ones are run at events, and the
venue's uplink goes: a router's dnsmasq (OpenWrt's `domain-needed` and `bogus-priv`)
forwarding to the ISP's resolver, and a validating unbound resolving from the root.
Each is marked down when its uplink goes silent, cached names are answered stale, and
it is up again when the uplink comes back. Attendees ask with dig and kdig from the kit's
host; the venue and the internet are network namespaces of their own."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from retreatkit.nameserver.testing import home_env
from retreatkit.testing import START_TIMEOUT, Process, ProcessFailed
from tests.e2e.dns_venue import (
    KIT,
    RIR,
    ROOT,
    ROUTER,
    TLDS,
    Venue,
    running,
    start_internet,
    venue,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (.ci/run does)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]
# runs side by side on one machine keep their namespaces apart by prefix
PREFIX = os.environ.get("RETREATKIT_TEST_NETNS", "dnswalk")
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"
UPSTREAM = f"upstream {ROUTER}:53"
DOWN = (
    f"{UPSTREAM} is down (was failing): no answer in time, 3 failures in a row; next check in 1 s"
)


def kit(place: Venue, folder: Path) -> Process:
    """The kit's nameserver on the LAN, the venue's resolver its upstream, rechecked
    every second once down."""
    config = folder / "retreat.toml"
    config.write_text("[nameserver]\nupstream_recheck = 1\n")
    argv = [sys.executable, "-m", "retreatkit.cli.main", "--config", str(config),
            "nameserver", "--listen", f"{KIT}:53", "--admin", "127.0.0.1:0",
            "--upstream", ROUTER]  # fmt: skip
    process = Process.start(place.on(place.kit, argv), env=home_env(folder / "home"))
    try:
        process.wait_for(r"^Admin on ")
    except ProcessFailed:
        process.stop()
        raise
    return process


def admin(place: Venue, ns: Process, path: str) -> str:
    """GET `path` from the kit's admin endpoint (loopback, in the kit's namespace)."""
    base = next(line for line in ns.seen if line.startswith("Admin on "))
    url = base.removeprefix("Admin on ").removesuffix("/status") + path
    code = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())"
    argv = place.on(place.kit, [sys.executable, "-c", code, url])
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout


def status(place: Venue, ns: Process) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(admin(place, ns, "/status"))["nameserver"]
    return doc


def logged(ns: Process, line: str, timeout: float = START_TIMEOUT) -> None:
    ns.wait_for(r" retreatkit\.nameserver (INFO|WARNING) " + re.escape(line) + "$", timeout)


def at_once(ask: Callable[[str], str], names: list[str]) -> list[str]:
    with ThreadPoolExecutor(len(names)) as pool:
        return list(pool.map(ask, names))


def up_again(ns: Process, ask: Callable[[], object]) -> None:
    """Asked until the kit's check question, once its recheck is due, finds the upstream
    there (the attendees' questions are no probes: each gets SERVFAIL or stale at once
    meanwhile)."""
    for _ in range(60):
        ask()
        try:
            return logged(ns, f"{UPSTREAM} is up (was down)", 0.5)
        except ProcessFailed:
            continue
    raise AssertionError(f"{UPSTREAM} never came up again")


@contextlib.contextmanager
def venue_router(folder: Path) -> Iterator[Venue]:
    """The venue's router runs dnsmasq as OpenWrt does (`domain-needed`, `bogus-priv`),
    forwarding to the ISP's resolver (dnsmasq too, answering from its hosts file)."""
    with venue_and_router(folder) as (place, _):
        yield place


@contextlib.contextmanager
def venue_and_router(folder: Path, ttl: int = 0) -> Iterator[tuple[Venue, Process]]:
    """venue_router, and the router's dnsmasq, which logs each question it is asked;
    `ttl`: the ISP's answers' TTL (0: the router keeps none)."""
    hosts = folder / "isp-hosts"
    hosts.write_text("198.51.100.80 www.example.com\n")
    with venue(PREFIX) as place:
        isp = [DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts",
               f"--listen-address={ROOT}", "--bind-interfaces", f"--addn-hosts={hosts}",
               f"--local-ttl={ttl}", "--local=/#/", "--pid-file=", "--user=root",
               "--log-facility=-"]  # fmt: skip
        router = [DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts",
                  f"--listen-address={ROUTER}", "--bind-interfaces", f"--server={ROOT}",
                  "--domain-needed", "--bogus-priv", "--pid-file=", "--user=root",
                  "--log-facility=-", "--log-queries"]  # fmt: skip
        with (
            running(place.on(place.net, isp), "started, version"),
            running(place.on(place.router, router), "started, version") as logs,
        ):
            yield place, logs


def checked(router: Process, timeout: float = START_TIMEOUT) -> None:
    """Wait for the router's dnsmasq to log a check question from the kit: the A of a
    random 16-character name under com."""
    router.wait_for(rf"query\[A\] [a-z2-7]{{16}}\.com from {re.escape(KIT)}$", timeout)


@pytest.mark.skipif(not Path(DNSMASQ).exists(), reason="dnsmasq is not installed (.ci/run does)")
def test_a_venue_routers_dnsmasq_is_down_while_its_uplink_is_silent(tmp_path: Path) -> None:
    """The ISP's side goes quiet: the router drops what it cannot answer, the check too,
    so the kit marks it down and answers cached names stale, and marks it up again once
    the uplink is back."""
    with venue_router(tmp_path) as place:
        ns = kit(place, tmp_path)
        try:
            assert place.dig("www.example.com") == "www.example.com. 0 A 198.51.100.80"
            place.cut()
            names = [f"www.site{n}.example.com" for n in range(3)]
            assert at_once(place.dig, names) == ["SERVFAIL"] * 3
            logged(ns, DOWN)
            assert place.dig("www.example.com") == "www.example.com. 30 A 198.51.100.80"
            place.mend()
            up_again(ns, lambda: place.dig("www.example.com"))
            assert place.dig("www.site0.example.com") == "NXDOMAIN"
        finally:
            ns.stop()


@pytest.mark.skipif(not Path(DNSMASQ).exists(), reason="dnsmasq is not installed (.ci/run does)")
def test_a_venue_routers_dnsmasq_without_its_route_out_refuses_at_once(tmp_path: Path) -> None:
    """The router's WAN link goes down: dnsmasq knows at once and refuses every new name
    (REFUSED, `EDE: network error`). It is there, so `failing`, never down; a new name
    gets SERVFAIL and a cached one its stale answer, neither after a wait on it."""
    with venue_router(tmp_path) as place:
        ns = kit(place, tmp_path)
        try:
            assert place.dig("www.example.com") == "www.example.com. 0 A 198.51.100.80"
            place.unplug()
            assert place.dig("www.site0.example.com") == "SERVFAIL"
            logged(ns, f"{UPSTREAM} is failing (was up): REFUSED")
            stale = place.dig("www.example.com", client="kdig")
            assert stale == "www.example.com. 30 A 198.51.100.80"
        finally:
            ns.stop()


@pytest.mark.skipif(not Path(DNSMASQ).exists(), reason="dnsmasq is not installed (.ci/run does)")
def test_a_venue_router_answering_from_its_cache_stays_down(tmp_path: Path) -> None:
    """Others at the venue asked the router for www.example.com, which it keeps an hour.
    Its uplink gone, the kit marks it down. Its recheck was an attendee's question, and
    for that name the router answered from its cache: the kit took it for up, and every
    new name waited on it again. Now the recheck is the check question, a new name under
    com, which no cache holds: the router drops it, down it stays, and attendees get
    SERVFAIL at once; the uplink back, the check passes and it is up."""
    with venue_and_router(tmp_path, ttl=3600) as (place, router):
        held = "www.example.com. 3600 A 198.51.100.80"
        assert place.dig("www.example.com", server=ROUTER) == held  # another venue client
        ns = kit(place, tmp_path)
        try:
            place.cut()
            names = [f"www.site{n}.example.com" for n in range(3)]
            assert at_once(place.dig, names) == ["SERVFAIL"] * 3
            logged(ns, DOWN)
            checked(router)  # the check asked beside those three, dropped
            for _ in range(60):  # the kit rechecks it a second after it went down
                # before: the attendee's question was the recheck: the router's cached
                # answer, and the router up again
                assert place.dig("www.example.com") == "SERVFAIL"
                try:
                    checked(router, 0.5)
                    break
                except ProcessFailed:
                    continue
            else:
                raise AssertionError("the kit never checked the router again")
            upstream = status(place, ns)["upstreams"][0]
            assert (upstream["state"], upstream["last_error"]) == ("down", "no answer in time")
            place.mend()
            up_again(ns, lambda: place.dig("www.example.com"))
            answer = place.dig("www.example.com")
            assert re.fullmatch(r"www\.example\.com\. \d+ A 198\.51\.100\.80", answer), answer
        finally:
            ns.stop()


@pytest.mark.skipif(not Path(DNSMASQ).exists(), reason="dnsmasq is not installed (.ci/run does)")
def test_a_venue_routers_refusal_with_an_earlier_id_is_late_not_spoofed(tmp_path: Path) -> None:
    """The router's dnsmasq still holds our question from before its route out went: asked
    it again from another of our ports, it answers REFUSED with the earlier query's ID.
    That reply is late, and counted so; before, it was counted as spoofed, an attack in
    /status that was none. It is never taken as the answer: the question gets SERVFAIL."""
    with venue_router(tmp_path) as place:
        ns = kit(place, tmp_path)
        try:
            place.cut()
            assert place.dig("www.held.example.com") == "SERVFAIL"  # the router keeps it
            place.unplug()
            # refused at once; 16 queries leave from one port, then a new one takes over
            names = [f"www.site{n}.example.com" for n in range(16)]
            assert at_once(place.dig, names) == ["SERVFAIL"] * 16
            assert place.dig("www.held.example.com") == "SERVFAIL"
            doc = status(place, ns)
            assert doc["spoofed_replies_ignored"] == 0  # before: 1
            assert doc["late_replies_ignored"] == 1
            metrics = admin(place, ns, "/metrics")
            assert (
                "# HELP nameserver_late_replies_ignored_total upstream replies ignored that"
                " repeat the ID and question of a recent query of ours no longer waiting for"
                " them (a late or second reply)\n"
                "# TYPE nameserver_late_replies_ignored_total counter\n"
                "nameserver_late_replies_ignored_total 1.0\n"
            ) in metrics
            assert (
                "# HELP nameserver_spoofed_replies_ignored_total upstream replies ignored that"
                " match no query we sent that upstream lately (an ID we never sent, or another"
                " question): forged or garbled\n"
                "# TYPE nameserver_spoofed_replies_ignored_total counter\n"
                "nameserver_spoofed_replies_ignored_total 0.0\n"
            ) in metrics
        finally:
            ns.stop()


SOA = "@ SOA a.root-servers.net. nstld.verisign-grs.com. 1 1800 900 604800 86400\n"
INTERNET = {
    "zones": {
        ".": SOA + "@ NS a.root-servers.net.\narpa. NS a.root-servers.net.\n"
        "com. NS a.gtld-servers.net.\nnet. NS a.gtld-servers.net.\n"
        f"a.root-servers.net. A {ROOT}\na.gtld-servers.net. A {TLDS}\n",
        "arpa.": SOA + "@ NS a.root-servers.net.\nin-addr NS a.root-servers.net.\n",
        "in-addr.arpa.": SOA + "@ NS a.root-servers.net.\n203 NS ns.apnic.net.\n",
        "net.": SOA + "@ NS a.gtld-servers.net.\n"
        f"a.root-servers A {ROOT}\na.gtld-servers A {TLDS}\nns.apnic A {RIR}\n",
        "com.": SOA + "@ NS a.gtld-servers.net.\nwww.example 300 A 198.51.100.80\n",
        "203.in-addr.arpa.": SOA + "@ NS ns.apnic.net.\n9.0.0 0 PTR www.example.com.\n",
    },
    "serve": {
        ROOT: [".", "arpa.", "in-addr.arpa."],
        TLDS: ["com.", "net."],
        RIR: ["203.in-addr.arpa."],
    },
    "signed": [".", "arpa."],  # as the real ones are, with NSEC
}
UNBOUND_CONF = """server:
  interface: {router}
  access-control: 10.77.0.0/24 allow
  do-ip6: no
  username: ""
  chroot: ""
  directory: "{folder}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  root-hints: "{folder}/root.hints"
  trust-anchor-file: "{folder}/anchor"
remote-control:
  control-enable: no
"""


@pytest.mark.skipif(not Path(UNBOUND).exists(), reason="unbound is not installed (.ci/run does)")
def test_a_validating_unbound_is_down_while_its_uplink_is_gone(tmp_path: Path) -> None:
    """unbound validates, and synthesises denials from the NSEC records it holds
    (`aggressive-nsec`, its default): a few names under arpa asked (as our own checks
    did), it answers any other name there by itself. Its uplink gone, three reverse
    lookups of public addresses go unanswered: before, the check went under arpa, and
    unbound answered it without its uplink, so it stayed up and every miss waited 4 s."""
    with venue(PREFIX) as place:
        internet = start_internet(place, tmp_path, {**INTERNET, "anchor": f"{tmp_path}/anchor"})
        (tmp_path / "root.hints").write_text(
            f". NS a.root-servers.net.\na.root-servers.net. A {ROOT}\n"
        )
        conf = tmp_path / "unbound.conf"
        conf.write_text(UNBOUND_CONF.format(router=ROUTER, folder=tmp_path))
        try:
            with running(place.on(place.router, [UNBOUND, "-d", "-c", str(conf)]),
                         "start of service"):  # fmt: skip
                ns = kit(place, tmp_path)
                try:
                    ptr = "9.0.0.203.in-addr.arpa."
                    assert place.dig("-x", "203.0.0.9") == f"{ptr} 0 PTR www.example.com."
                    assert place.dig("a.arpa") == place.dig("z.arpa") == "NXDOMAIN"
                    place.cut()
                    assert place.dig("m7q2k4x9w3j5h6td.arpa", server=ROUTER) == "NXDOMAIN"
                    names = [f"203.0.{n}.9" for n in range(1, 4)]
                    lookups = at_once(lambda a: place.dig("-x", a), names)
                    assert lookups == ["SERVFAIL"] * 3
                    logged(ns, DOWN)
                    stale = place.dig("-x", "203.0.0.9", client="kdig")
                    assert stale == f"{ptr} 30 PTR www.example.com."
                    place.mend()
                    up_again(ns, lambda: place.dig("-x", "203.0.0.9"))
                    assert place.dig("-x", "203.0.1.9") == "NXDOMAIN"
                finally:
                    ns.stop()
        finally:
            internet.stop()


@pytest.mark.skipif(not Path(UNBOUND).exists(), reason="unbound is not installed (.ci/run does)")
def test_a_validating_unbound_answering_from_its_cache_stays_down(tmp_path: Path) -> None:
    """unbound keeps www.example.com its five minutes, asked by others at the venue; its
    uplink gone, it still answers that name, from its cache, but not the check question
    (a new name under com, a zone it holds no copy of and no NSEC records of): the kit
    keeps it down until its uplink is back (before: its cached answer had it up)."""
    with venue(PREFIX) as place:
        internet = start_internet(place, tmp_path, {**INTERNET, "anchor": f"{tmp_path}/anchor"})
        (tmp_path / "root.hints").write_text(
            f". NS a.root-servers.net.\na.root-servers.net. A {ROOT}\n"
        )
        conf = tmp_path / "unbound.conf"
        text = UNBOUND_CONF.format(router=ROUTER, folder=tmp_path)
        conf.write_text(text.replace("server:\n", "server:\n  log-queries: yes\n", 1))
        checks = rf"info: {re.escape(KIT)} [a-z2-7]{{16}}\.com\. A IN$"
        try:
            with running(place.on(place.router, [UNBOUND, "-d", "-c", str(conf)]),
                         "start of service") as unbound:  # fmt: skip
                held = "www.example.com. 300 A 198.51.100.80"
                assert place.dig("www.example.com", server=ROUTER) == held
                ns = kit(place, tmp_path)
                try:
                    place.cut()
                    names = [f"www.site{n}.example.com" for n in range(3)]
                    assert at_once(place.dig, names) == ["SERVFAIL"] * 3
                    logged(ns, DOWN)
                    unbound.wait_for(checks)  # the check asked beside those three
                    for _ in range(60):
                        assert place.dig("www.example.com") == "SERVFAIL"  # before: its cache
                        try:
                            unbound.wait_for(checks, 0.5)
                            break
                        except ProcessFailed:
                            continue
                    else:
                        raise AssertionError("the kit never checked unbound again")
                    assert status(place, ns)["upstreams"][0]["state"] == "down"
                    place.mend()
                    up_again(ns, lambda: place.dig("www.example.com"))
                finally:
                    ns.stop()
        finally:
            internet.stop()
