"""The nameserver asked across a real link, from network namespaces of its own: a LAN
client is answered, a source outside the LAN's networks gets REFUSED over UDP and TCP
alike, as dig shows it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from retreatkit.nameserver.testing import TwoHosts, home_env, two_hosts
from retreatkit.testing import Process

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (.ci/run does)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


@pytest.fixture
def lan() -> Iterator[tuple[TwoHosts, Process]]:
    """Our nameserver on the server host, every address, port 5300, a local name to give."""
    home = Path(tempfile.mkdtemp(prefix="rkns-home-"))
    with two_hosts() as hosts:
        argv = [sys.executable, "-m", "retreatkit.cli.main", "nameserver",
                "--listen", "0.0.0.0:5300", "--admin", "127.0.0.1:0",
                "--upstream", "127.0.0.1:9", "--record", "wiki.retreat.lan=10.53.0.9"]  # fmt: skip
        server = Process.start(hosts.on(hosts.server, argv), env=home_env(home))
        try:
            server.wait_for(r"^Admin on ")
            yield hosts, server
        finally:
            server.stop()
            shutil.rmtree(home, ignore_errors=True)


def dig(hosts: TwoHosts, source: str, *args: str) -> str:
    argv = ["dig", f"@{hosts.server_lan}", "-p", "5300", "-b", source, "+time=3", "+tries=1"]
    done = subprocess.run(
        hosts.on(hosts.client, [*argv, *args]), capture_output=True, text=True, timeout=30
    )
    return done.stdout


def test_outside_the_lan_gets_refused_over_tcp_as_over_udp(lan: tuple[TwoHosts, Process]) -> None:
    hosts, _ = lan
    for transport in ("+notcp", "+tcp"):
        assert dig(hosts, hosts.client_lan, transport, "+short", "wiki.retreat.lan").split() == [
            "10.53.0.9"
        ]
        out = dig(hosts, hosts.client_outside, transport, "wiki.retreat.lan")
        assert "status: REFUSED" in out, out  # not a reset: the client knows it was us
        assert "ANSWER: 0" in out and "10.53.0.9" not in out
