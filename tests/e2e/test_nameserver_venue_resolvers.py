"""The kit's upstream is the venue's own resolver, as real ones are run at events, and the
venue's uplink goes: a router's dnsmasq (OpenWrt's `domain-needed` and `bogus-priv`)
forwarding to the ISP's resolver, and a validating unbound resolving from the root.
Each is marked down when its uplink goes silent, cached names are answered stale, and
it is up again when the uplink comes back. Attendees ask with dig and kdig from the kit's
host; the venue and the internet are network namespaces of their own."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


def logged(ns: Process, line: str, timeout: float = START_TIMEOUT) -> None:
    ns.wait_for(r" retreatkit\.nameserver (INFO|WARNING) " + re.escape(line) + "$", timeout)


def at_once(ask: Callable[[str], str], names: list[str]) -> list[str]:
    with ThreadPoolExecutor(len(names)) as pool:
        return list(pool.map(ask, names))


def up_again(ns: Process, ask: Callable[[], object]) -> None:
    """Asked until a question, once the recheck is due, finds the upstream there."""
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
    hosts = folder / "isp-hosts"
    hosts.write_text("198.51.100.80 www.example.com\n")  # TTL 0: the router keeps none
    with venue("dnswalk") as place:
        isp = [DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts",
               f"--listen-address={ROOT}", "--bind-interfaces", f"--addn-hosts={hosts}",
               "--local=/#/", "--pid-file=", "--user=root", "--log-facility=-"]  # fmt: skip
        router = [DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts",
                  f"--listen-address={ROUTER}", "--bind-interfaces", f"--server={ROOT}",
                  "--domain-needed", "--bogus-priv", "--pid-file=", "--user=root",
                  "--log-facility=-"]  # fmt: skip
        with (
            running(place.on(place.net, isp), "started, version"),
            running(place.on(place.router, router), "started, version"),
        ):
            yield place


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
    with venue("dnswalk") as place:
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
