"""A relay listening on IPv6, attacked from one machine that binds many addresses of its
/64, in network namespaces of their own: every per-address limit counts the /64 once."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
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
TIMEOUT = 10.0
PREFIX = os.environ.get("RETREATKIT_TEST_NETNS", "rkv6")
RELAY = ("fd88::1", 9000)
WAITING_PER_IP = 20  # the default [relay] waiting_per_ip
ATTACKER = [f"fd88::{i:x}" for i in range(0x10, 0x10 + WAITING_PER_IP + 5)]
NEIGHBOUR = "fd88:0:0:1::2"  # another attendee: another /64 on the same link


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The relay's namespace (fd88::1) and the attendees' (the attacker's /64 and a
    neighbour's address), on one link."""
    prefix = f"{PREFIX}-{secrets.token_hex(3)}"
    relay_ns, lan_ns = f"{prefix}-r", f"{prefix}-l"
    made: list[str] = []
    try:
        for ns in (relay_ns, lan_ns):
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("link", "add", "eth0", "netns", relay_ns, "type", "veth",
           "peer", "name", "eth0", "netns", lan_ns)  # fmt: skip
        ip("-n", relay_ns, "addr", "add", "fd88::1/48", "dev", "eth0", "nodad")
        for address in [*ATTACKER, NEIGHBOUR]:
            ip("-n", lan_ns, "addr", "add", f"{address}/48", "dev", "eth0", "nodad")
        for ns in (relay_ns, lan_ns):
            ip("-n", ns, "link", "set", "eth0", "up")
        yield relay_ns, lan_ns
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


# Each source address of argv asks to send; prints the relay's first line for each.
SENDERS = """
import socket, sys
socks = []
for source in sys.argv[2:]:
    s = socket.socket(socket.AF_INET6)
    s.settimeout(float(sys.argv[1]))
    s.bind((source, 0))
    s.connect(("fd88::1", 9000))
    s.sendall(b"bob/1 send\\n")
    print(s.makefile("rb").readline().decode().strip(), flush=True)
    socks.append(s)
"""


def test_one_64_holds_the_waiting_slots_of_one_address(
    lan: tuple[str, str], tmp_path: Path
) -> None:
    relay_ns, lan_ns = lan
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    with ExitStack() as stack:
        relay = Process.start(
            ["ip", "netns", "exec", relay_ns, sys.executable, "-m", "retreatkit.cli.main",
             "relay", "--listen", "[::]:9000", "--admin", "127.0.0.1:0"], env=env,
        )  # fmt: skip
        stack.callback(relay.stop)
        relay.wait_for(r"^Relay listening on \[::\]:9000$")
        run = subprocess.run(
            ["ip", "netns", "exec", lan_ns, sys.executable, "-c", SENDERS, str(TIMEOUT),
             *ATTACKER, NEIGHBOUR],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        lines = run.stdout.splitlines()
        attacker, neighbour = lines[: len(ATTACKER)], lines[len(ATTACKER) :]
        assert [line.split()[0] for line in attacker[:WAITING_PER_IP]] == ["ok"] * WAITING_PER_IP
        assert attacker[WAITING_PER_IP:] == ["error too many senders waiting from fd88::/64"] * 5
        assert [line.split()[0] for line in neighbour] == ["ok"]
    assert not any("Traceback" in line for line in relay.seen), relay.seen
