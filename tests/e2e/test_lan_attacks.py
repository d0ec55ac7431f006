"""A relay and its admin endpoint on a LAN address, attacked from another machine, in
network namespaces of their own: an IPv6 address that holds its waiting senders is
refused by name while another of its /64 (on a LAN, every attendee's) is not, and one
that opens silent connections to the admin endpoint holds a few of the process's open
files, not all of them."""

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

from retreatkit.testing import Process, open_fds

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None,
        reason="network namespaces need root and iproute2 (ip)",
    ),
]
TIMEOUT = 10.0
PREFIX = os.environ.get("RETREATKIT_TEST_NETNS", "rkatk")
WAITING_PER_IP = 20  # the default [relay] waiting_per_ip
ATTACKER = ["fd88::10"] * (WAITING_PER_IP + 5)
NEIGHBOUR = "fd88::2"  # another attendee: the same /64, as SLAAC gives a whole LAN
ADMIN_PER_ADDRESS = 16  # retreatkit/admin/gate.py
REFUSAL = "too many connections from your address"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Lan:
    """The relay's machine (10.88.0.1, fd88::1) and the attendees' (the attacker at
    10.88.0.2 and on ATTACKER, a neighbour at 10.88.0.3 and NEIGHBOUR), on one link."""

    relay_ns: str
    lan_ns: str
    state: Path

    def relay(self) -> Process:
        proc = Process.start(
            ["ip", "netns", "exec", self.relay_ns, sys.executable, "-m", "retreatkit.cli.main",
             "relay", "--listen", "[::]:9000", "--admin", "10.88.0.1:8080"],
            env={"XDG_STATE_HOME": str(self.state)},
        )  # fmt: skip
        proc.wait_for(r"^Admin on http://10\.88\.0\.1:8080/status$")
        return proc

    def attendee(self, script: str, *args: str) -> list[str]:
        run = subprocess.run(
            ["ip", "netns", "exec", self.lan_ns, sys.executable, "-c", script, *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        return run.stdout.splitlines()


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[Lan]:
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
        for address in ("10.88.0.1/24", "fd88::1/64"):
            ip("-n", relay_ns, "addr", "add", address, "dev", "eth0", "nodad")
        lan_addresses = [f"{a}/64" for a in dict.fromkeys([*ATTACKER, NEIGHBOUR])]
        for address in ["10.88.0.2/24", "10.88.0.3/24", *lan_addresses]:
            ip("-n", lan_ns, "addr", "add", address, "dev", "eth0", "nodad")
        for ns in (relay_ns, lan_ns):
            ip("-n", ns, "link", "set", "eth0", "up")
        yield Lan(relay_ns, lan_ns, tmp_path / "state")
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def no_traceback(proc: Process) -> None:
    """Stops the process; it said nothing with a traceback, all it said read to the end."""
    proc.popen.terminate()
    code, lines = proc.finish()
    assert code == 0 and not any("Traceback" in line for line in lines), lines


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


def test_one_address_holds_its_waiting_slots_not_its_64s(lan: Lan) -> None:
    relay = lan.relay()
    try:
        lines = lan.attendee(SENDERS, str(TIMEOUT), *ATTACKER, NEIGHBOUR)
        attacker, neighbour = lines[: len(ATTACKER)], lines[len(ATTACKER) :]
        assert [line.split()[0] for line in attacker[:WAITING_PER_IP]] == ["ok"] * WAITING_PER_IP
        assert attacker[WAITING_PER_IP:] == ["error too many senders waiting from fd88::10"] * 5
        assert [line.split()[0] for line in neighbour] == ["ok"]
    finally:
        no_traceback(relay)


# From 10.88.0.2: argv[2] connections to the admin endpoint that never send a byte, then
# one more, which reads what it is told as it opens; prints that, then the neighbour's
# (10.88.0.3, with the token) /healthz answer, with the silent connections still open.
SILENT = """
import socket, sys
timeout, count, token = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def connect(source):
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("10.88.0.1", 8080))
    return s
def answer(s):
    got = b""
    while chunk := s.recv(4096):
        got += chunk
    lines = got.decode().splitlines()
    return f"{lines[0]} | {lines[-1]}"
silent = [connect("10.88.0.2") for _ in range(count)]
print(answer(connect("10.88.0.2")))
s = connect("10.88.0.3")
s.sendall(f"GET /healthz HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Bearer {token}\\r\\n"
          "Connection: close\\r\\n\\r\\n".encode())
print(answer(s))
"""


def test_silent_connections_to_the_admin_endpoint_are_bounded_per_address(lan: Lan) -> None:
    relay = lan.relay()
    try:
        token = (lan.state / "retreatkit" / "admin-token").read_text().strip()
        before = open_fds(relay.pid)
        lines = lan.attendee(SILENT, str(TIMEOUT), str(ADMIN_PER_ADDRESS), token)
        assert lines == [
            f"HTTP/1.1 503 Service Unavailable | {REFUSAL}",
            "HTTP/1.1 200 OK | ok",  # the organiser, at another address, still gets in
        ]
        # the attacker's silent connections took no more than their share of files
        assert open_fds(relay.pid) <= before + ADMIN_PER_ADDRESS
        relay.wait_for(
            r" retreatkit\.admin WARNING refused an admin connection: 10\.88\.0\.2 holds 16,"
            r" the most one address may \(1 refused since the endpoint started\)$"
        )
    finally:
        no_traceback(relay)
