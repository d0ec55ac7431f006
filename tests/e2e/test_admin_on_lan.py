"""An admin endpoint beyond loopback, in network namespaces of its own: announced on the
LAN as `_retreat-admin._tcp`, found by the dashboard at an address that answers, and
closed without the token."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from retreatkit.testing import Process

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None,
        reason="network namespaces need root and iproute2 (ip)",
    ),
]
TIMEOUT = 60
# runs side by side on one machine keep their namespaces apart by prefix
PREFIX = os.environ.get("RETREATKIT_TEST_NETNS", "rkdash")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Lan:
    """The host running retreatkit (`a`, 10.77.0.1) and the organiser's laptop (`b`,
    10.77.0.2) on one link, neither with a default route; each with a state folder."""

    a: str
    b: str
    state: Path

    def run(self, ns: str, *argv: str) -> Process:
        env = {"XDG_STATE_HOME": str(self.state / ns)}
        return Process.start(["ip", "netns", "exec", ns, sys.executable, *argv], env=env)


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[Lan]:
    prefix = f"{PREFIX}-{secrets.token_hex(3)}"
    a, b = f"{prefix}-a", f"{prefix}-b"
    made: list[str] = []
    try:
        for ns in (a, b):
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("link", "add", "eth0", "netns", a, "type", "veth", "peer", "name", "eth0", "netns", b)
        for ns, address in ((a, "10.77.0.1/24"), (b, "10.77.0.2/24")):
            ip("-n", ns, "addr", "add", address, "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up", "multicast", "on")
            ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")  # mDNS: no default route
        yield Lan(a, b, tmp_path / "state")
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def finish(proc: Process) -> tuple[int, list[str]]:
    code, lines = proc.finish(TIMEOUT)
    assert not any("Traceback" in line for line in lines), lines
    return code, lines


def test_announced_found_and_closed_without_the_token(lan: Lan) -> None:
    relay = lan.run(lan.a, "-m", "retreatkit.cli.main", "relay",
                    "--listen", "10.77.0.1:9000", "--admin", "10.77.0.1:8080")  # fmt: skip
    try:
        relay.wait_for(r"^Admin on http://10\.77\.0\.1:8080/status$")
        found = subprocess.run(
            ["ip", "netns", "exec", lan.b, sys.executable, "-c",
             "import asyncio; from retreatkit.tui.discover import discover; "
             "print(asyncio.run(discover(3.0)))"],
            capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
        assert found.stdout.strip() == "['http://10.77.0.1:8080']", (found.stderr, relay.seen)
        status = subprocess.run(
            ["ip", "netns", "exec", lan.b, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
             "http://10.77.0.1:8080/status"], capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert status.stdout == "401"  # beyond loopback: not even a read without the token
    finally:
        assert relay.stop() == 0


# `retreatkit relay` whose admin endpoint, on every address of its host, is announced at
# the addresses of argv[1] (its host's uplink's, Docker's...) in place of those it holds.
HOLDS = """
import ipaddress, sys
from retreatkit.cli.main import main
from retreatkit.transfer import direct
held = [ipaddress.ip_address(a) for a in sys.argv.pop(1).split(",")]
direct.own_addresses = lambda first: held
sys.exit(main(sys.argv[1:]))
"""

# Browses for admin endpoints until one is found; prints its addresses in the order heard.
BROWSE_ADDRESSES = """
import asyncio, sys
from retreatkit import mdns
from retreatkit.admin.advertise import SERVICE_TYPE
found = asyncio.run(mdns.browse(SERVICE_TYPE, 20, stop=bool))
print(",".join(found[0].addresses), file=sys.stderr)
"""


def announced_at(lan: Lan, first: str, then: str) -> Process:
    """`retreatkit relay` on a, its admin endpoint on port 8080 announced at `first` and
    `then`, heard on the LAN in that order (the order varies from one announcement to the
    next: it is announced again until `first` comes first)."""
    for _ in range(12):
        relay = lan.run(lan.a, "-c", HOLDS, f"{first},{then}", "relay",
                        "--listen", "10.77.0.1:9000", "--admin", "0.0.0.0:8080")  # fmt: skip
        try:
            relay.wait_for(r"^Admin on http://0\.0\.0\.0:8080/status$")
            relay.wait_for(r"retreatkit announced on the LAN")
            code, heard = finish(lan.run(lan.b, "-c", BROWSE_ADDRESSES))
            assert code == 0, heard
        except BaseException:
            relay.stop()
            raise
        if heard == [f"{first},{then}"]:
            return relay
        assert heard == [f"{then},{first}"], heard
        relay.stop()
    pytest.fail(f"{first} was never heard first")


# What `retreatkit tui` with no --connect opens: the endpoints noted here (none: the
# default), then those found on the LAN.
ENDPOINTS = """
import asyncio, sys
from retreatkit.tui.run import endpoints
print(" ".join(e.url for e in asyncio.run(endpoints([], None, find=True))), file=sys.stderr)
"""


@pytest.mark.parametrize(
    ("first", "then"),
    [
        ("192.0.2.2", "10.77.0.1"),  # an uplink's: no route there
        ("10.77.0.9", "10.77.0.200"),  # on the LAN's own subnet, and nobody holds it
    ],
    ids=["off-the-lan", "nobody-there"],
)
def test_an_endpoint_announced_first_at_an_address_out_of_reach_is_found_at_the_next(
    lan: Lan, first: str, then: str
) -> None:
    """The announcement lists first an address the organiser's laptop cannot reach, then
    one the host holds: the dashboard tries the nearest first, each a moment after the one
    before, and opens the endpoint at the one that answered."""
    if then != "10.77.0.1":
        ip("-n", lan.a, "addr", "add", f"{then}/24", "dev", "eth0")
    relay = announced_at(lan, first, then)
    try:
        code, found = finish(lan.run(lan.b, "-c", ENDPOINTS))
        assert code == 0, found
        assert found == [f"http://127.0.0.1:8080 http://{then}:8080"], (found, relay.seen)
    finally:
        assert relay.stop() == 0


def test_an_endpoint_at_no_address_that_answers_is_named_at_its_nearest(lan: Lan) -> None:
    """Every address announced is out of the laptop's reach (no route there): `retreatkit
    tui` names the endpoint at the first of them in their order, not the order heard,
    and stops with its one line."""
    relay = announced_at(lan, "198.51.100.7", "192.0.2.2")
    try:
        code, said = finish(lan.run(lan.b, "-m", "retreatkit.cli.main", "tui"))
        assert code == 1, said
        assert said == [
            "retreatkit: no admin endpoint reachable: 127.0.0.1:8080: cannot connect"
            " (connection refused); 192.0.2.2:8080 (found on the LAN): cannot connect"
            " (network is unreachable)"
        ], relay.seen
    finally:
        assert relay.stop() == 0


def test_an_endpoint_found_on_the_lan_is_never_sent_the_token(lan: Lan) -> None:
    """Anyone can announce an admin endpoint: one found by its announcement is read without
    the token, even the very one the token opens (a neighbour's would keep it, and with it
    open the organiser's DNS names and blocklists); the organiser names it to send it."""
    relay = lan.run(lan.a, "-m", "retreatkit.cli.main", "relay",
                    "--listen", "10.77.0.1:9000", "--admin", "10.77.0.1:8080")  # fmt: skip
    try:
        relay.wait_for(r"^Admin on http://10\.77\.0\.1:8080/status$")
        relay.wait_for(r"retreatkit announced on the LAN")
        token = (lan.state / lan.a / "retreatkit" / "admin-token").read_text().strip()
        tui = Process.start(
            ["ip", "netns", "exec", lan.b, sys.executable, "-m", "retreatkit.cli.main", "tui"],
            env={"XDG_STATE_HOME": str(lan.state / lan.b), "RETREATKIT_TOKEN": token},
        )
        code, said = finish(tui)
        assert code == 1, said
        assert said == [
            "retreatkit: no admin endpoint reachable: 127.0.0.1:8080: cannot connect"
            " (connection refused); 10.77.0.1:8080 (found on the LAN): not sent the admin"
            " token, as anyone can announce an endpoint on the LAN; to watch it, name it:"
            " --connect http://10.77.0.1:8080"
        ], relay.seen
    finally:
        assert relay.stop() == 0
