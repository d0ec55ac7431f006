"""An admin endpoint beyond loopback, in network namespaces of its own: announced on the
LAN as `_retreat-admin._tcp`, found by the dashboard, and closed without the token."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from retreatkit.testing import Process

pytestmark = pytest.mark.e2e
A, B = "rkdash-a", "rkdash-b"  # the host running retreatkit, and the organiser's laptop


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def lan() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    try:
        for ns in (A, B):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip(
            "link",
            "add",
            "rkdash-va",
            "netns",
            A,
            "type",
            "veth",
            "peer",
            "name",
            "rkdash-vb",
            "netns",
            B,
        )
        for ns, dev, address in (
            (A, "rkdash-va", "10.77.0.1/24"),
            (B, "rkdash-vb", "10.77.0.2/24"),
        ):
            ip("-n", ns, "addr", "add", address, "dev", dev)
            ip("-n", ns, "link", "set", dev, "up", "multicast", "on")
            ip(
                "-n", ns, "route", "add", "224.0.0.0/4", "dev", dev
            )  # mDNS has no default route here
        yield
    finally:
        for ns in (A, B):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def test_announced_found_and_closed_without_the_token(lan: None, tmp_path: Path) -> None:
    argv = ["ip", "netns", "exec", A, sys.executable, "-m", "retreatkit.cli.main", "relay",
            "--listen", "10.77.0.1:9000", "--admin", "10.77.0.1:8080"]  # fmt: skip
    relay = Process.start(argv, env={"XDG_STATE_HOME": str(tmp_path / "state")})
    try:
        relay.wait_for(r"^Admin on http://10\.77\.0\.1:8080/status$")
        found = subprocess.run(
            ["ip", "netns", "exec", B, sys.executable, "-c",
             "import asyncio; from retreatkit.tui.discover import discover; "
             "print(asyncio.run(discover(3.0)))"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert found.stdout.strip() == "['http://10.77.0.1:8080']", (found.stderr, relay.seen)
        status = subprocess.run(
            ["ip", "netns", "exec", B, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
             "http://10.77.0.1:8080/status"], capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert status.stdout == "401"  # beyond loopback: not even a read without the token
    finally:
        assert relay.stop() == 0
