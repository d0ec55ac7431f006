"""The nameserver asked across a real link, from network namespaces of its own: a LAN
client is answered, a source outside the LAN's networks gets REFUSED over UDP and TCP
alike, as dig shows it."""

from __future__ import annotations

import contextlib
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
        assert ";; flags: qr rd ra; QUERY: 1" in out, out  # dig asks with AD: never echoed


# the server's addresses: two in the LAN's network, one in another network, two IPv6
MORE = ("10.53.0.3/24", "10.54.0.1/24", "fd00:53::1/64", "fd00:53::3/64")


@pytest.fixture(scope="module")
def multihomed() -> Iterator[tuple[TwoHosts, dict[str, int]]]:
    """A server host with several addresses and two nameservers on it, one on 0.0.0.0 and
    one on :: (IPv4 too, v4-mapped); the port of each by its listen address."""
    ports = {"0.0.0.0": 5300, "::": 5301}
    with contextlib.ExitStack() as stack:
        try:
            hosts = stack.enter_context(two_hosts(server_more=MORE))
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot make network namespaces here: {exc.stderr.decode().strip()}")
        home = Path(tempfile.mkdtemp(prefix="rkns-home-"))
        stack.callback(shutil.rmtree, home, ignore_errors=True)
        servers = []
        for host, port in ports.items():
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            argv = [sys.executable, "-m", "retreatkit.cli.main", "nameserver", "--listen", where,
                    "--admin", "127.0.0.1:0", "--upstream", "127.0.0.1:9",
                    "--record", "wiki.retreat.lan=10.53.0.9"]  # fmt: skip
            server = Process.start(hosts.on(hosts.server, argv), env=home_env(home / str(port)))
            stack.callback(server.stop)
            servers.append(server)
        for server in servers:
            server.wait_for(r"^Admin on ")
        yield hosts, ports


def ask(hosts: TwoHosts, server: str, port: int, *args: str) -> str:
    """What dig on the client prints for wiki.retreat.lan, +short; its whole output (the
    error) when it printed no answer."""
    argv = ["dig", f"@{server}", "-p", str(port), "+time=2", "+tries=1", "+short", *args,
            "wiki.retreat.lan"]  # fmt: skip
    done = subprocess.run(hosts.on(hosts.client, argv), capture_output=True, text=True, timeout=30)
    return done.stdout.strip()


def test_a_server_on_0_0_0_0_answers_each_address_from_that_address(
    multihomed: tuple[TwoHosts, dict[str, int]],
) -> None:
    # before, the kernel sent each answer from 10.53.0.1 (its choice for the client's
    # network), and dig dropped it: "reply from unexpected source"
    hosts, ports = multihomed
    for server in ("10.53.0.1", "10.53.0.3", "10.54.0.1"):
        out = ask(hosts, server, ports["0.0.0.0"], "+notcp")
        assert out == "10.53.0.9", f"{server}: {out}"
    assert ask(hosts, "10.54.0.1", ports["0.0.0.0"], "+tcp") == "10.53.0.9"


def test_a_server_on_ipv6_wildcard_answers_each_address_from_that_address(
    multihomed: tuple[TwoHosts, dict[str, int]],
) -> None:
    hosts, ports = multihomed
    for server in ("fd00:53::1", "fd00:53::3", "10.53.0.3"):  # the last one v4-mapped
        out = ask(hosts, server, ports["::"], "+notcp")
        assert out == "10.53.0.9", f"{server}: {out}"
    for server in ("fd00:53::3", "10.53.0.3"):  # TCP on :: takes IPv4 too, as UDP does
        assert ask(hosts, server, ports["::"], "+tcp") == "10.53.0.9", server


@pytest.fixture
def attendee(tmp_path: Path) -> Iterator[tuple[TwoHosts, Process, subprocess.Popen[bytes]]]:
    """A laptop whose resolv.conf names our nameserver (port 53, the LAN search domain),
    which forwards to an uplink resolver (dnsmasq) on the server host."""
    if shutil.which("dnsmasq") is None and not Path("/usr/sbin/dnsmasq").exists():
        pytest.skip("dnsmasq is not installed (.ci/run does)")
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text("198.51.100.7 www.example.test\n")
    home = tmp_path / "home"
    with two_hosts("rkga") as hosts:
        conf = Path("/etc/netns") / hosts.client
        conf.mkdir(parents=True)
        try:
            (conf / "resolv.conf").write_text(
                f"nameserver {hosts.server_lan}\nsearch retreat.lan\noptions timeout:5 attempts:1\n"
            )
            uplink = subprocess.Popen(
                hosts.on(hosts.server, [
                    shutil.which("dnsmasq") or "/usr/sbin/dnsmasq", "--keep-in-foreground",
                    "--no-resolv", "--no-hosts", "--port=5353", "--listen-address=127.0.0.1",
                    "--bind-interfaces", f"--addn-hosts={hosts_file}", "--local-ttl=300",
                    "--pid-file=", "--user=root",
                ]),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            argv = [sys.executable, "-m", "retreatkit.cli.main", "nameserver",
                    "--listen", f"{hosts.server_lan}:53", "--admin", "127.0.0.1:0",
                    "--upstream", "127.0.0.1:5353",
                    "--record", "wiki.retreat.lan=10.53.0.9"]  # fmt: skip
            server = Process.start(hosts.on(hosts.server, argv), env=home_env(home))
            try:
                server.wait_for(r"^Admin on ")
                yield hosts, server, uplink
            finally:
                server.stop()
                uplink.terminate()
                uplink.wait(10)
        finally:
            shutil.rmtree(conf, ignore_errors=True)


def getent(hosts: TwoHosts, name: str) -> tuple[int, str]:
    done = subprocess.run(
        hosts.on(hosts.client, ["getent", "ahostsv4", name]),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return done.returncode, " ".join(sorted({line.split()[0] for line in done.stdout.splitlines()}))


def test_a_laptops_resolver_keeps_its_names_when_the_uplink_drops(
    attendee: tuple[TwoHosts, Process, subprocess.Popen[bytes]],
) -> None:
    """glibc asks without EDNS, dig with it: a name dig brought into the cache answers
    glibc too, after the uplink is gone. Before, each kind of client had its own entry,
    and glibc's question went to the dead uplink: not found."""
    hosts, _, uplink = attendee
    assert getent(hosts, "wiki") == (0, "10.53.0.9")  # the LAN's search domain
    dig = ["dig", "+short", "+time=3", "+tries=1", "www.example.test"]  # through resolv.conf
    done = subprocess.run(hosts.on(hosts.client, dig), capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == ["198.51.100.7"]
    uplink.terminate()  # the uplink is gone
    uplink.wait(10)
    assert getent(hosts, "www.example.test") == (0, "198.51.100.7")


def test_a_resolv_conf_naming_only_this_nameserver_is_no_upstream(tmp_path: Path) -> None:
    """The organiser's machine took the LAN's DNS server from DHCP: itself. With no
    upstreams given, /etc/resolv.conf would make every question a loop."""
    with two_hosts("rkgl") as hosts:
        conf = Path("/etc/netns") / hosts.server
        conf.mkdir(parents=True)
        try:
            (conf / "resolv.conf").write_text(f"nameserver {hosts.server_lan}\n")
            argv = [sys.executable, "-m", "retreatkit.cli.main", "nameserver",
                    "--listen", f"{hosts.server_lan}:53", "--admin", "127.0.0.1:0"]  # fmt: skip
            done = subprocess.run(
                hosts.on(hosts.server, argv), capture_output=True, text=True, timeout=30,
                env={**os.environ, **home_env(tmp_path)},
            )  # fmt: skip
        finally:
            shutil.rmtree(conf, ignore_errors=True)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "retreatkit: [nameserver] upstreams (or --upstream): none given, and /etc/resolv.conf"
        f" names only {hosts.server_lan}:53, this nameserver itself: every question would come"
        " back to it (a loop); name the venue's resolvers\n"
    )
