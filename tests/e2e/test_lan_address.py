"""`retreatkit up` names its services after the LAN-facing address, in a network namespace
with a non-loopback interface and a default route (and one with loopback only)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from retreatkit.nameserver.testing import home_env
from retreatkit.testing import Process

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"
    ),
]
LAN_ADDRESS = "10.77.0.5"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"rkns-{secrets.token_hex(4)}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        ip("netns", "del", name)


def in_ns(netns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def test_up_names_its_services_after_the_default_routes_interface(
    netns: str, tmp_path: Path
) -> None:
    # the machine's LAN interface (a veth whose far end stands for the LAN), the router
    # on that LAN as the default gateway
    ip("-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", "rkns-lan")
    ip("-n", netns, "addr", "add", f"{LAN_ADDRESS}/24", "dev", "eth0")
    ip("-n", netns, "link", "set", "eth0", "up")
    ip("-n", netns, "link", "set", "rkns-lan", "up")
    ip("-n", netns, "route", "add", "default", "via", "10.77.0.1", "dev", "eth0")
    cfg = tmp_path / "retreat.toml"
    cfg.write_text(
        '[relay]\nlisten = "127.0.0.1:0"\n[admin]\nlisten = "127.0.0.1:0"\n'
        f'[mirror]\nlisten = "127.0.0.1:0"\nstore = "{tmp_path / "store"}"\n'
        'pypi = "http://127.0.0.1:1/simple/"\nopam = "http://127.0.0.1:1/opam"\n'
        f'[nameserver]\nlisten = "{LAN_ADDRESS}:0"\nupstreams = ["127.0.0.1:9"]\n'
    )
    argv = in_ns(netns, sys.executable, "-m", "retreatkit.cli.main", "--config", str(cfg), "up")
    proc = Process.start(argv, env=home_env(tmp_path / "home"))
    try:
        proc.wait_for(
            r"^relay\.retreat\.lan and mirror\.retreat\.lan answer 10\.77\.0\.5"
            r" \(the default route's interface, eth0\)$"
        )
        port = proc.wait_for(r"^Nameserver listening on 10\.77\.0\.5:(\d+) ")[1]
        for name in ("relay.retreat.lan", "mirror.retreat.lan"):
            done = subprocess.run(
                in_ns(netns, "dig", f"@{LAN_ADDRESS}", "-p", port, "+short", "+time=5", name),
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert done.stdout.split() == [LAN_ADDRESS]
    finally:
        proc.stop()
    assert not any("WARNING" in line for line in proc.seen)


def said_at_start(netns: str, configured: str = "") -> list[str]:
    """What a start in `netns` says of the address it names its services after."""
    code = (
        "from retreatkit.cli.main import say_address;"
        "from retreatkit.lanaddress import choose;"
        f"say_address(choose({configured!r}))"
    )
    done = subprocess.run(
        in_ns(netns, sys.executable, "-c", code), capture_output=True, text=True, timeout=60
    )
    return done.stderr.splitlines()


def test_only_loopback_is_said_loudly(netns: str) -> None:
    assert said_at_start(netns) == [
        "relay.retreat.lan and mirror.retreat.lan answer 127.0.0.1 (no LAN interface found)",
        "WARNING: 127.0.0.1 is a loopback address: every attendee asking for relay.retreat.lan"
        " or mirror.retreat.lan would reach their own computer. Start it again once this"
        " computer is on the LAN (its services are announced there as it joins, but these"
        " names are set now), or pass --address ADDRESS or set address in [nameserver] of"
        " retreat.toml.",
    ]


def test_another_network_is_named_beside_the_default_routes(netns: str) -> None:
    """The organiser's laptop: the venue's Wi-Fi (the uplink, the default route) and the
    attendees' switch on another port. The services are named after the uplink's address,
    and the start says the other network is there and how to choose it."""
    for link, address, peer in (("eth0", "192.0.2.2", "rkns-up"), ("eth1", "10.77.0.1", "rkns-sw")):
        ip("-n", netns, "link", "add", link, "type", "veth", "peer", "name", peer)
        ip("-n", netns, "addr", "add", f"{address}/24", "dev", link)
        ip("-n", netns, "link", "set", link, "up")
        ip("-n", netns, "link", "set", peer, "up")  # its far end up: the link has a carrier
    ip("-n", netns, "link", "add", "eth2", "type", "veth", "peer", "name", "rkns-off")
    ip("-n", netns, "addr", "add", "10.88.0.1/24", "dev", "eth2")
    ip("-n", netns, "link", "set", "eth2", "up")  # no carrier: its far end is down
    ip("-n", netns, "route", "add", "default", "via", "192.0.2.1", "dev", "eth0")
    assert said_at_start(netns) == [
        "relay.retreat.lan and mirror.retreat.lan answer 192.0.2.2 (the default route's"
        " interface, eth0)",
        "This computer is on other networks too (eth1 10.77.0.1): if the attendees are on one"
        " of those, pass --address ADDRESS or set address in [nameserver] of retreat.toml.",
    ]
    assert said_at_start(netns, "10.77.0.1") == [
        "relay.retreat.lan and mirror.retreat.lan answer 10.77.0.1 (as configured)"
    ]
