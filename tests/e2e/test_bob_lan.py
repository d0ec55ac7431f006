"""bob on a LAN that is real to the kernel: network namespaces joined by a bridge, so
multicast discovery and direct connections cross a real interface. The sender is in one
namespace, the receiver in another, the relay in a third or nowhere at all."""

from __future__ import annotations

import contextlib
import json
import os
import re
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
NETNS = Path("/etc/netns")
# runs side by side on one machine keep their namespaces apart by prefix
PREFIX = os.environ.get("RETREATKIT_TEST_NETNS", "rkbf")
NO_NAME = "Temporary failure in name resolution"  # relay.retreat.lan, with no resolver


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Lan:
    """Hosts on one bridge: `address[name]` on 10.78.0.0/24, each with a default route
    (as a laptop on a venue's network has) and a resolver that answers nothing."""

    prefix: str
    hosts: dict[str, str]  # name -> namespace
    address: dict[str, str]
    home: Path

    def run(self, host: str, *argv: str, stdin: int = subprocess.DEVNULL, **env: str) -> Process:
        environ = {k: v for k, v in os.environ.items() if k not in ("BOB_RELAY", "BOB_PASSPHRASE")}
        environ.update(
            HOME=str(self.home), XDG_STATE_HOME=str(self.home / "state"),
            XDG_DATA_HOME=str(self.home / "data"), **env,
        )  # fmt: skip
        cmd = ["ip", "netns", "exec", self.hosts[host], sys.executable, *argv]
        popen = subprocess.Popen(
            cmd,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environ,
        )
        return Process.reading(popen)

    def bob(self, host: str, *args: str, stdin: int = subprocess.DEVNULL, **env: str) -> Process:
        return self.run(host, "-m", "retreatkit.cli.bob", *args, stdin=stdin, **env)

    def status(self, host: str, admin: str) -> dict[str, object]:
        code = f"import urllib.request as u; print(u.urlopen('{admin}/status').read().decode())"
        done = subprocess.run(
            ["ip", "netns", "exec", self.hosts[host], sys.executable, "-c", code],
            capture_output=True, text=True, timeout=TIMEOUT, check=True,
        )  # fmt: skip
        doc: dict[str, object] = json.loads(done.stdout)
        return doc


def namespace(name: str, made: list[str]) -> None:
    """A new namespace with loopback up and no resolver: relay.retreat.lan fails at once,
    as on a LAN without the event's nameserver (ip netns exec mounts this over
    /etc/resolv.conf)."""
    try:
        ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make a network namespace here: {exc.stderr.strip()!r}")
    made.append(name)
    ip("-n", name, "link", "set", "lo", "up")
    (NETNS / name).mkdir(parents=True, exist_ok=True)
    (NETNS / name / "resolv.conf").write_text("nameserver 127.0.0.1\n")


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[Lan]:
    prefix = f"{PREFIX}-{secrets.token_hex(3)}"
    switch = f"{prefix}-sw"
    names = {"a": f"{prefix}-a", "b": f"{prefix}-b", "r": f"{prefix}-r"}
    address = {"a": "10.78.0.1", "b": "10.78.0.2", "r": "10.78.0.3"}
    made: list[str] = []
    try:
        for ns in (switch, *names.values()):
            namespace(ns, made)
        ip("-n", switch, "link", "add", "br0", "type", "bridge")
        ip("-n", switch, "link", "set", "br0", "up")
        home = tmp_path / "home"
        home.mkdir()
        made_lan = Lan(prefix, names, address, home)
        for host in names:
            plug(made_lan, host)
        yield made_lan
    finally:
        remove_namespaces(made)


def plug(lan: Lan, host: str) -> None:
    """`host`'s eth0 into the switch, then its address and a default route, as a DHCP
    client sets them once the link is up."""
    ns, switch = lan.hosts[host], f"{lan.prefix}-sw"
    ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p{host}",
       "netns", switch)  # fmt: skip
    ip("-n", switch, "link", "set", f"p{host}", "master", "br0", "up")
    ip("-n", ns, "link", "set", "eth0", "up", "multicast", "on")
    ip("-n", ns, "addr", "add", f"{lan.address[host]}/24", "dev", "eth0")
    ip("-n", ns, "route", "add", "default", "dev", "eth0")


@pytest.fixture
def routed(tmp_path: Path) -> Iterator[Lan]:
    """Two subnets, a on 10.79.1.0/24 and b on 10.79.2.0/24, each routed through r, which
    holds 10.79.1.1 and 10.79.2.1 and forwards between them (no NAT: the relay on r sees
    each peer's own address). Forwarding starts off (`forward`)."""
    prefix = f"{PREFIX}-{secrets.token_hex(3)}"
    names = {"a": f"{prefix}-a", "b": f"{prefix}-b", "r": f"{prefix}-r"}
    address = {"a": "10.79.1.2", "b": "10.79.2.2", "ra": "10.79.1.1", "rb": "10.79.2.1"}
    made: list[str] = []
    try:
        for ns in names.values():
            namespace(ns, made)
        forward(names["r"], on=False)
        for host, net in (("a", "1"), ("b", "2")):
            ip("link", "add", "eth0", "netns", names[host], "type", "veth", "peer", "name",
               f"to{host}", "netns", names["r"])  # fmt: skip
            ip("-n", names[host], "addr", "add", f"10.79.{net}.2/24", "dev", "eth0")
            ip("-n", names[host], "link", "set", "eth0", "up")
            ip("-n", names[host], "route", "add", "default", "via", f"10.79.{net}.1")
            ip("-n", names["r"], "addr", "add", f"10.79.{net}.1/24", "dev", f"to{host}")
            ip("-n", names["r"], "link", "set", f"to{host}", "up")
        home = tmp_path / "home"
        home.mkdir()
        yield Lan(prefix, names, address, home)
    finally:
        remove_namespaces(made)


def remove_namespaces(made: list[str]) -> None:
    for ns in made:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        shutil.rmtree(NETNS / ns, ignore_errors=True)


def forward(ns: str, on: bool) -> None:
    subprocess.run(
        ["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv4.ip_forward={int(on)}"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip


def finish(proc: Process) -> tuple[int, list[str]]:
    code, lines = proc.finish(TIMEOUT)
    assert not any("Traceback" in line for line in lines), lines
    return code, lines


def transfer(
    lan: Lan, payload: Path, folder: Path, passphrase: str, *send: str, recv: tuple[str, ...] = ()
) -> tuple[list[str], list[str]]:
    """`bob send [SEND...] PAYLOAD` on a, then `bob recv [RECV...] --yes -o FOLDER` on b,
    each to a good end: (the sender's lines, the receiver's)."""
    folder.mkdir()
    sender = lan.bob("a", "send", *send, str(payload), BOB_PASSPHRASE=passphrase)
    receiver = None
    try:
        sender.wait_for(r"^Passphrase: ")
        receiver = lan.bob("b", "recv", *recv, "--yes", "-o", str(folder), passphrase)
        code, got = finish(receiver)
        assert code == 0, got
        status, said = finish(sender)
        assert status == 0, said
    finally:
        for proc in (sender, receiver):
            if proc is not None:
                proc.stop()
    return said, got


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    src = tmp_path / "image.bin"
    src.write_bytes(os.urandom(8 << 20))
    return src


def test_a_relay_found_on_the_lan_and_a_direct_connection(
    lan: Lan, payload: Path, tmp_path: Path
) -> None:
    relay = lan.bob("r", "relay", "--listen", "0.0.0.0:9000", "--admin", "127.0.0.1:0")
    sender = receiver = None
    try:
        admin = relay.wait_for(r"^Admin on (http://\S+)/status$")[1]
        relay.wait_for(r"bob relay announced on the LAN")
        out = tmp_path / "out"
        said, got = transfer(lan, payload, out, "4321-alpha-abandon")
        assert said[1] == "Using the relay at 10.78.0.3:9000 (found on the LAN)"
        assert "Path: direct" in said
        assert got[0] == "Using the relay at 10.78.0.3:9000 (found on the LAN)"
        assert got[1].startswith("Offer from 10.78.0.1:")
        assert "Path: direct" in got
        assert (out / "image.bin").read_bytes() == payload.read_bytes()
        doc = lan.status("r", admin)["relay"]
        assert isinstance(doc, dict)
        # the relay carried the key exchange, the offer and the choice of path, not the data
        assert doc["transfers_completed"] == 1 and doc["bytes_relayed"] < 64 * 1024
    finally:
        for proc in (sender, receiver, relay):
            if proc is not None:
                proc.stop()


@pytest.mark.parametrize(("routing", "path"), [(True, "direct"), (False, "relay")])
def test_peers_on_two_subnets_meet_directly_at_the_address_the_relay_saw(
    routed: Lan, payload: Path, tmp_path: Path, routing: bool, path: str
) -> None:
    """Neither peer is on the other's network: the one direct hint each may try is the
    peer's address as the relay's `paired` line names it. Where the router forwards, the
    data goes direct; where it does not, the relay carries it."""
    forward(routed.hosts["r"], on=routing)
    relay = routed.bob("r", "relay", "--listen", "0.0.0.0:9000", "--admin", "127.0.0.1:0")
    sender = receiver = None
    try:
        admin = relay.wait_for(r"^Admin on (http://\S+)/status$")[1]
        sender = routed.bob(
            "a", "send", "--relay", "10.79.1.1:9000", str(payload),
            BOB_PASSPHRASE="4321-alpha-abandon",
        )  # fmt: skip
        sender.wait_for(r"^Passphrase: ")
        out = tmp_path / "out"
        out.mkdir()
        receiver = routed.bob(
            "b", "recv", "--relay", "10.79.2.1:9000", "--yes", "-o", str(out),
            "4321-alpha-abandon",
        )  # fmt: skip
        code, got = finish(receiver)
        assert code == 0, got
        status, said = finish(sender)
        assert status == 0, said
        assert got[0].startswith("Offer from 10.79.1.2:")  # where the relay saw the sender
        assert f"Path: {path}" in got and f"Path: {path}" in said
        assert (out / "image.bin").read_bytes() == payload.read_bytes()
        doc = routed.status("r", admin)["relay"]
        assert isinstance(doc, dict)
        assert doc["transfers_completed"] == 1
        assert (doc["bytes_relayed"] < 64 * 1024) == routing
    finally:
        for proc in (sender, receiver, relay):
            if proc is not None:
                proc.stop()


def test_no_relay_the_sender_is_its_own_rendezvous(lan: Lan, payload: Path, tmp_path: Path) -> None:
    sender = lan.bob("a", "send", "--no-qr", str(payload))
    receiver = None
    try:
        announced = sender.wait_for(
            r"^No relay on this network: the receiver finds this computer on the LAN"
            r" \(nameplate (\d+) advertised\)$"
        )
        code_line = sender.wait_for(r"^Passphrase: (\S+)$")
        passphrase = code_line[1]
        assert passphrase.split("-")[0] == announced[1]
        out = tmp_path / "out"
        out.mkdir()
        receiver = lan.bob("b", "recv", "--yes", "-o", str(out), passphrase)
        code, got = finish(receiver)
        assert code == 0, got
        status, said = finish(sender)
        assert status == 0, said
        assert (
            got[0]
            == f"Found the sender on the LAN at {lan.address['a']}:" + got[0].rsplit(":", 1)[1]
        )
        assert "Path: direct" in got and "Path: direct" in said
        assert (out / "image.bin").read_bytes() == payload.read_bytes()
        # a second receiver finds nothing: the sender stopped announcing when it was joined
        assert nobody_waits(lan, out, passphrase)
    finally:
        for proc in (sender, receiver):
            if proc is not None:
                proc.stop()


def test_no_relay_and_no_direct_stops_each_side_and_says_why(
    lan: Lan, payload: Path, tmp_path: Path
) -> None:
    """With no relay, the sender as its own rendezvous is a direct connection: --no-direct
    refuses it on either side, in one line, instead of saying `Path: direct`."""
    lonely = lan.bob("a", "send", "--no-direct", "--no-qr", str(payload))
    status, said = finish(lonely)
    assert status == 1
    assert said[-1] == (
        f"ERROR: --no-direct needs a relay, and none answers at relay.retreat.lan:9000"
        f" ({NO_NAME}): give --relay HOST:PORT, or leave out --no-direct to let the receiver"
        " connect to this computer"
    )
    assert not any("Passphrase" in line for line in said)
    sender = lan.bob("b", "send", "--no-qr", str(payload))
    receiver = None
    try:
        passphrase = sender.wait_for(r"^Passphrase: (\S+)$")[1]
        out = tmp_path / "out"
        out.mkdir()
        receiver = lan.bob("a", "recv", "--no-direct", "--yes", "-o", str(out), passphrase)
        code, got = finish(receiver)
        assert code == 1
        assert got == [
            f"ERROR: --no-direct needs a relay, and none answers at relay.retreat.lan:9000"
            f" ({NO_NAME}): give --relay HOST:PORT, or leave out --no-direct to connect to a"
            " sender on the LAN"
        ]
        assert list(out.iterdir()) == []
        # the sender was never reached, so its passphrase still holds: a receiver gets it
        again = lan.bob("a", "recv", "--yes", "-o", str(out), passphrase)
        code, got = finish(again)
        assert code == 0, got
        assert "Path: direct" in got
        assert (out / "image.bin").read_bytes() == payload.read_bytes()
    finally:
        for proc in (sender, receiver):
            if proc is not None:
                proc.stop()


SILENT_RESOLVER = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 53))
print("listening", file=sys.stderr, flush=True)
while True:
    sock.recv(4096)  # read every question, answer none
"""


def test_a_resolver_that_never_answers_is_one_line_and_no_traceback(lan: Lan) -> None:
    """A venue's resolver that swallows questions: the lookup of relay.retreat.lan outlives
    bob's wait for it, and its late failure must not print after bob's one line."""
    silent = lan.run("r", "-c", SILENT_RESOLVER, lan.address["r"])
    try:
        silent.wait_for(r"^listening$")
        (NETNS / lan.hosts["b"] / "resolv.conf").write_text(
            f"nameserver {lan.address['r']}\noptions timeout:3 attempts:1\n"
        )
        code, said = finish(lan.bob("b", "recv", "--yes", "12-abandon-ability"))
    finally:
        silent.stop()
    assert code == 1
    assert said == [
        "ERROR: no sender is waiting on nameplate 12 on this network, and no relay answers at"
        " relay.retreat.lan:9000 (timed out): check the passphrase, or give --relay HOST:PORT"
    ]


def test_no_relay_a_receiver_that_vanishes_at_the_question_ends_the_wait(
    lan: Lan, payload: Path, tmp_path: Path
) -> None:
    """No relay's idle timeout ends the sender's wait for the answer here: the receiver's
    laptop leaves the network while its user reads the offer, and the sender's kernel,
    asking after the quiet peer (channel.py's keepalive), ends the wait within seconds."""
    sender = lan.bob("a", "send", "--no-qr", str(payload), BOB_PASSPHRASE="4323-alpha-abandon")
    receiver = None
    try:
        sender.wait_for(r"\(nameplate 4323 advertised\)$")
        out = tmp_path / "out"
        out.mkdir()
        receiver = lan.bob("b", "recv", "-o", str(out), "4323-alpha-abandon", stdin=subprocess.PIPE)
        receiver.wait_for(r"^  image.bin  8.4 MB$")
        ip("-n", lan.hosts["b"], "link", "set", "eth0", "down")
        status, said = finish(sender)
        # the kernel gave up asking (or, its neighbour gone, could not reach the address)
        assert status == 1 and said[-1] in (
            "ERROR: the connection broke: Connection timed out",
            "ERROR: the connection broke: No route to host",
        ), said
    finally:
        if receiver is not None and receiver.popen.stdin is not None:
            receiver.popen.stdin.close()
        for proc in (sender, receiver):
            if proc is not None:
                proc.stop()


# `bob relay ARGS...` on a host whose interfaces hold other addresses beside its own on
# the LAN (argv[1], comma-separated), as an organiser's laptop holds its uplink's: the
# relay announces them all.
UPLINK_TOO = """
import ipaddress, sys
from retreatkit.cli.bob import main
from retreatkit.transfer import direct
held = [ipaddress.ip_address(a) for a in sys.argv.pop(1).split(",")]
direct.own_addresses = lambda first: held
sys.exit(main(sys.argv[1:]))
"""

# Browses for relays until one is found; prints its addresses in the order heard.
BROWSE_ADDRESSES = """
import asyncio, sys
from retreatkit import mdns
found = asyncio.run(mdns.browse(mdns.RELAY, 20, stop=bool))
print(",".join(found[0].addresses), file=sys.stderr)
"""


def unplugged_quietly(lan: Lan, relay: Process) -> None:
    """r's cable comes out: the relay on r withdraws its announcement, then ends cleanly
    when stopped, having logged no warning."""
    ip("-n", lan.hosts["r"], "link", "del", "eth0")
    relay.wait_for(r"bob relay no longer announced on the LAN: no address but loopback$")
    relay.popen.terminate()
    code, logged = finish(relay)
    assert code == 0 and not any("WARNING" in line for line in logged), logged


def test_a_relay_started_before_its_computer_joins_the_lan_follows_its_addresses(
    lan: Lan, tmp_path: Path
) -> None:
    """The organiser starts the relay, then plugs into the switch (or the Wi-Fi joins a
    moment later), and later takes a new lease: the relay is announced at each address in
    turn, without a restart, and bob on the LAN, told no relay, finds it there."""
    ip("-n", lan.hosts["r"], "link", "del", "eth0")  # unplugged: loopback only
    relay = lan.bob("r", "relay", "--listen", "0.0.0.0:9000", "--admin", "127.0.0.1:0")
    small = tmp_path / "notes.txt"
    small.write_text("the schedule\n")

    def found() -> str:
        sender = lan.bob("b", "send", "--no-qr", str(small))
        try:
            return sender.wait_for(r"^Using the relay at |^No relay").string
        finally:
            sender.stop()

    try:
        relay.wait_for(r"^Admin on ")
        plug(lan, "r")
        relay.wait_for(r"bob relay announced on the LAN as ")
        assert found() == "Using the relay at 10.78.0.3:9000 (found on the LAN)"
        # a new lease: the old address goes, another comes
        ip("-n", lan.hosts["r"], "addr", "del", "10.78.0.3/24", "dev", "eth0")
        ip("-n", lan.hosts["r"], "addr", "add", "10.78.0.5/24", "dev", "eth0")
        ip("-n", lan.hosts["r"], "route", "replace", "default", "dev", "eth0")
        relay.wait_for(r"bob relay announced on the LAN again: 10\.78\.0\.5$")
        assert found() == "Using the relay at 10.78.0.5:9000 (found on the LAN)"
        unplugged_quietly(lan, relay)
    finally:
        relay.stop()


def test_a_relay_unplugged_while_its_announcement_is_still_repeated_says_no_warning(
    lan: Lan,
) -> None:
    """The cable comes out a moment after the relay is announced, while zeroconf still
    repeats the announcement: those packets have nowhere to go, which is no fault of the
    relay's, and the organiser's log says only that it is no longer announced."""
    relay = lan.bob("r", "relay", "--listen", "0.0.0.0:9000", "--admin", "127.0.0.1:0")
    try:
        relay.wait_for(r"bob relay announced on the LAN as ")
        unplugged_quietly(lan, relay)
    finally:
        relay.stop()


def relay_heard_at(lan: Lan, first: str, then: str) -> tuple[Process, str]:
    """`bob relay` on r, announced at `first` and `then`, heard on the LAN in that order (a
    browser's order is the announcement's, which varies from one to the next: it is
    announced again until `first` comes first); and its admin URL."""
    for _ in range(12):
        relay = lan.run(
            "r", "-c", UPLINK_TOO, f"{first},{then}",
            "relay", "--listen", "0.0.0.0:9000", "--admin", "127.0.0.1:0",
        )  # fmt: skip
        try:
            admin = relay.wait_for(r"^Admin on (http://\S+)/status$")[1]
            relay.wait_for(r"bob relay announced on the LAN")
            code, heard = finish(lan.run("b", "-c", BROWSE_ADDRESSES))
            assert code == 0, heard
        except BaseException:
            relay.stop()
            raise
        if heard == [f"{first},{then}"]:
            return relay, admin
        assert heard == [f"{then},{first}"], heard
        relay.stop()
    pytest.fail(f"{first} was never heard first")


@pytest.mark.parametrize(
    ("first", "then"),
    [
        ("192.0.2.2", "10.78.0.3"),  # an uplink's: no route there
        ("10.78.0.9", "10.78.0.200"),  # on the LAN's own subnet, and nobody holds it
    ],
    ids=["off-the-lan", "nobody-there"],
)
def test_a_relay_heard_first_at_an_address_out_of_reach_is_used_at_the_next(
    lan: Lan, payload: Path, tmp_path: Path, first: str, then: str
) -> None:
    """The relay's announcement lists first an address neither peer can reach, then one it
    holds on the LAN. Each side, told no relay, tries the announcement's addresses (those
    on its own networks, each a moment after the one before) and names the one that
    answered; --no-direct on both, so a direct connection cannot hide where they met."""
    if then != lan.address["r"]:
        ip("-n", lan.hosts["r"], "addr", "add", f"{then}/24", "dev", "eth0")
    relay, admin = relay_heard_at(lan, first, then)
    try:
        out = tmp_path / "out"
        said, got = transfer(
            lan, payload, out, "4331-alpha-abandon", "--no-direct", "--no-qr",
            recv=("--no-direct",),
        )  # fmt: skip
        assert said[1] == f"Using the relay at {then}:9000 (found on the LAN)", said
        assert said[2] == "Passphrase: yours, on nameplate 4331 (its words are not shown)"
        assert got[0] == f"Using the relay at {then}:9000 (found on the LAN)", got
        assert got[1].startswith("Offer from 10.78.0.1:")
        assert "Path: relay" in said and "Path: relay" in got
        assert (out / "image.bin").read_bytes() == payload.read_bytes()
        doc = lan.status("r", admin)["relay"]
        assert isinstance(doc, dict)
        assert doc["transfers_completed"] == 1 and doc["bytes_relayed"] > payload.stat().st_size
    finally:
        relay.stop()


# A neighbour that announces a sender for a nameplate at a port that takes connections
# and never says a word (argv: its address, the nameplates). Its own host name: the
# namespaces share this machine's, and mDNS would mix its address with the sender's.
IMPOSTOR = """
import asyncio, socket, sys
from retreatkit import mdns
mdns.host_label = lambda: "impostor"

async def main():
    silent = socket.create_server((sys.argv[1], 0))
    port = silent.getsockname()[1]
    adverts = [
        await mdns.advertise(mdns.RELAY, f"not bob {n}", [sys.argv[1]], port,
                             {"kind": "sender", "nameplate": n}, probe=False)
        for n in sys.argv[2:]
    ]
    print("announced", flush=True, file=sys.stderr)
    held = []
    loop = asyncio.get_running_loop()
    silent.setblocking(False)
    while True:
        conn, _ = await loop.sock_accept(silent)
        held.append(conn)  # never answered, never closed

asyncio.run(main())
"""


def test_announcing_a_sender_that_never_answers_diverts_no_receiver(
    lan: Lan, payload: Path, tmp_path: Path
) -> None:
    """Anyone can announce a sender for any nameplate. With a relay on the LAN the
    receiver meets its sender there first; with none, it tries every sender announced
    for its nameplate at once, and the one that proves the passphrase wins."""
    impostor = lan.run("r", "-c", IMPOSTOR, lan.address["r"], "4325", "4326")
    relay = sender = receiver = None
    try:
        impostor.wait_for(r"^announced$")
        out = tmp_path / "out"
        out.mkdir()
        # no relay: the real sender announces 4325 too, and wins the race
        sender = lan.bob("a", "send", "--no-qr", str(payload), BOB_PASSPHRASE="4325-alpha-abandon")
        sender.wait_for(r"\(nameplate 4325 advertised\)$")
        receiver = lan.bob("b", "recv", "--yes", "-o", str(out), "4325-alpha-abandon")
        code, got = finish(receiver)
        assert code == 0, got
        assert got[0].startswith(f"Found the sender on the LAN at {lan.address['a']}:")
        assert finish(sender)[0] == 0
        assert (out / "image.bin").read_bytes() == payload.read_bytes()
        # a relay on the LAN: the sender waits there, and that is where the receiver goes
        relay = lan.bob("r", "relay", "--listen", "0.0.0.0:9000", "--admin", "127.0.0.1:0")
        relay.wait_for(r"bob relay announced on the LAN")
        again = tmp_path / "again"
        _, got = transfer(lan, payload, again, "4326-alpha-abandon")
        assert got[0] == "Using the relay at 10.78.0.3:9000 (found on the LAN)"
        assert (again / "image.bin").read_bytes() == payload.read_bytes()
    finally:
        for proc in (impostor, sender, receiver, relay):
            if proc is not None:
                proc.stop()


# A neighbour that announces a sender for a nameplate and answers every connection with
# a line that is not bob/1 (argv: its address, the nameplate).
BABBLER = """
import asyncio, socket, sys
from retreatkit import mdns
mdns.host_label = lambda: "babbler"

async def main():
    server = socket.create_server((sys.argv[1], 0))
    await mdns.advertise(mdns.RELAY, "not bob", [sys.argv[1]], server.getsockname()[1],
                         {"kind": "sender", "nameplate": sys.argv[2]}, probe=False)
    print("announced", flush=True, file=sys.stderr)
    loop = asyncio.get_running_loop()
    server.setblocking(False)
    while True:
        conn, _ = await loop.sock_accept(server)
        await loop.sock_sendall(conn, b"\\x1b[2J hello\\n")
        conn.close()

asyncio.run(main())
"""


def test_a_false_sender_that_babbles_is_named_as_the_sender(lan: Lan, tmp_path: Path) -> None:
    """What a sender announced on the LAN answers is its own: the receiver says the sender
    answered something that is not bob/1, not the relay, and writes nothing."""
    babbler = lan.run("r", "-c", BABBLER, lan.address["r"], "4327")
    try:
        babbler.wait_for(r"^announced$")
        out = tmp_path / "out"
        out.mkdir()
        code, got = finish(lan.bob("b", "recv", "--yes", "-o", str(out), "4327-alpha-abandon"))
        assert code == 1
        assert re.fullmatch(
            r"Not met at the sender announced at 10\.78\.0\.3:\d+ \(the sender answered"
            r" something that is not bob/1\); trying the relay at relay\.retreat\.lan:9000",
            got[0],
        ), got
        assert got[1:] == [
            f"ERROR: no sender is waiting on nameplate 4327 on this network, and no relay"
            f" answers at relay.retreat.lan:9000 ({NO_NAME}): check the passphrase, or give"
            " --relay HOST:PORT"
        ]
        assert list(out.iterdir()) == []
    finally:
        babbler.stop()


# A relay announced on the LAN at a port that takes connections and never answers
# (argv: its address, its instance name).
SILENT_RELAY = """
import asyncio, socket, sys
from retreatkit import mdns
mdns.host_label = lambda: "impostor"

async def main():
    silent = socket.create_server((sys.argv[1], 0))
    advert = await mdns.advertise(mdns.RELAY, sys.argv[2], [sys.argv[1]],
                                  silent.getsockname()[1], {"kind": "relay"}, probe=False)
    print("announced", flush=True, file=sys.stderr)
    held = []
    loop = asyncio.get_running_loop()
    silent.setblocking(False)
    while True:
        conn, _ = await loop.sock_accept(silent)
        held.append(conn)

asyncio.run(main())
"""

# A sender that holds a relay's one waiting place (argv: the relay's address).
FILLER = """
import socket, sys
s = socket.create_connection((sys.argv[1], 9000), timeout=10)
s.sendall(b"bob/1 send\\n")
print(s.recv(128).decode().strip(), flush=True, file=sys.stderr)
sys.stdin.read()
"""


def test_a_silent_relay_and_a_full_one_leave_the_sender_its_own_rendezvous(
    lan: Lan, payload: Path, tmp_path: Path
) -> None:
    """Two relays announced: one a neighbour's port that never answers, the real one full.
    bob tries both; neither takes the offer, so the sender waits on the LAN itself (and
    says it uses no relay, not one it found), and the receiver, having tried both relays
    at once, finds it there. With room at the real relay again, both meet there."""
    cfg = tmp_path / "retreat.toml"
    cfg.write_text("[relay]\nwaiting = 1\n")
    relay = lan.bob("r", "relay", "--listen", "0.0.0.0:9000", "--admin", "127.0.0.1:0",
                    "--config", str(cfg))  # fmt: skip
    # the neighbour's own address on r's interface: two mDNS responders on one host
    # answer well, a responder beside the browsing bob may take its unicast answers
    ip("-n", lan.hosts["r"], "addr", "add", "10.78.0.4/24", "dev", "eth0")
    impostor = lan.run("r", "-c", SILENT_RELAY, "10.78.0.4", "bob relay 2")
    sender = receiver = filler = None
    try:
        relay.wait_for(r"bob relay announced on the LAN")
        impostor.wait_for(r"^announced$")
        filler = lan.run("b", "-c", FILLER, lan.address["r"], stdin=subprocess.PIPE)
        assert filler.wait_for(r"^ok \d+$")
        out = tmp_path / "out"
        said, got = transfer(lan, payload, out, "4327-alpha-abandon", "--no-qr")
        # each named, with what it did
        assert re.fullmatch(
            r"No relay took the offer \(the relay at 10\.78\.0\.3:9000 says: the relay is full;"
            r" try again later; the relay at 10\.78\.0\.4:\d+ did not answer in 1 s\): the"
            r" receiver finds this computer on the LAN \(nameplate 4327 advertised\)",
            said[1],
        ), said
        assert not any(line.startswith("Using the") for line in said + got)
        assert got[0].startswith("Not met at the 2 relays announced on the LAN ("), got
        assert got[1].startswith("Found the sender on the LAN at 10.78.0.1:"), got
        assert (out / "image.bin").read_bytes() == payload.read_bytes()

        assert filler.popen.stdin is not None
        filler.popen.stdin.close()  # room at the real relay: both sides meet there
        finish(filler)
        again = tmp_path / "again"
        said, got = transfer(lan, payload, again, "4328-alpha-abandon", "--no-qr")
        assert not any("No relay" in line or "Found the sender" in line for line in said + got)
        assert (again / "image.bin").read_bytes() == payload.read_bytes()
    finally:
        if filler is not None and filler.popen.stdin is not None:
            filler.popen.stdin.close()
        for proc in (sender, receiver, filler, impostor, relay):
            if proc is not None:
                proc.stop()


# Announces a service from this host (argv: address, instance) until stdin closes.
ANNOUNCE = """
import asyncio, sys
from retreatkit import mdns

async def main():
    advert = await mdns.advertise(mdns.RELAY, sys.argv[2], [sys.argv[1]], 9000, {"kind": "relay"})
    print("announced", flush=True, file=sys.stderr)
    await asyncio.to_thread(sys.stdin.read)
    await advert.close()

asyncio.run(main())
"""

# Browses until both instances are found; prints each as NAME ADDRESSES.
BROWSE_TWO = """
import asyncio
from retreatkit import mdns

found = asyncio.run(mdns.browse(mdns.RELAY, 20, stop=lambda f: len(f) >= 2))
for f in found:
    print(f.name.split(".")[0], ",".join(f.addresses), sep="\\t", flush=True)
"""


def test_two_machines_of_one_host_name_are_each_found_at_their_own_address(lan: Lan) -> None:
    """Laptops at an event often share a host name (`ubuntu`, `debian`): each announcement
    names its own address, so a browser never takes one machine's address for another's
    (the namespaces here share this machine's host name, as such laptops do)."""
    announcers = [
        lan.run(host, "-c", ANNOUNCE, lan.address[host], f"bob relay {host}", stdin=subprocess.PIPE)
        for host in ("a", "b")
    ]
    try:
        for proc in announcers:
            proc.wait_for(r"^announced$")
        done = subprocess.run(
            ["ip", "netns", "exec", lan.hosts["r"], sys.executable, "-c", BROWSE_TWO],
            capture_output=True, text=True, timeout=TIMEOUT, check=True,
        )  # fmt: skip
        seen = dict(line.split("\t") for line in done.stdout.splitlines())
        assert seen == {"bob relay a": lan.address["a"], "bob relay b": lan.address["b"]}, seen
    finally:
        for proc in announcers:
            assert proc.popen.stdin is not None
            proc.popen.stdin.close()
            proc.stop()


def test_a_silent_relay_does_not_hide_what_the_real_one_says(lan: Lan, tmp_path: Path) -> None:
    """Two relays announced, the first by address a neighbour's port that never answers:
    a receiver whose nameplate no sender holds is told what the real relay said (check the
    passphrase), not that a relay stayed silent."""
    relay = lan.bob("r", "relay", "--listen", "0.0.0.0:9000", "--admin", "127.0.0.1:0")
    impostor = lan.run("a", "-c", SILENT_RELAY, lan.address["a"], "bob relay 2")
    try:
        relay.wait_for(r"bob relay announced on the LAN")
        impostor.wait_for(r"^announced$")
        out = tmp_path / "out"
        out.mkdir()
        code, got = finish(lan.bob("b", "recv", "--yes", "-o", str(out), "4329-alpha-abandon"))
        assert code == 1
        # (and no relay is said to be used: the receiver met no sender at either)
        assert got == [
            "ERROR: the relay at 10.78.0.3:9000 says: no sender is waiting on nameplate 4329"
        ]
        assert list(out.iterdir()) == []
    finally:
        for proc in (impostor, relay):
            proc.stop()


# `bob relay ARGS...` under a host name of its own (argv[1]): two relays on one machine
# would announce the same mDNS name, and the second would give way.
NAMED_RELAY = """
import sys
from retreatkit import mdns
from retreatkit.cli.bob import main
label = sys.argv.pop(1)
mdns.host_label = lambda: label
sys.exit(main(sys.argv[1:]))
"""


def test_two_relays_on_the_lan_take_no_honest_receiver_for_a_guesser(
    lan: Lan, payload: Path, tmp_path: Path
) -> None:
    """The sender waits at both relays; a receiver that meets it at the first need not join
    it at the second too, where the pair would end before a key exchange: that relay would
    count a failed join against the receiver's address, log it as guessing nameplates, and
    throttle it after 8."""
    ip("-n", lan.hosts["r"], "addr", "add", "10.78.0.4/24", "dev", "eth0")
    serve = ("relay", "--admin", "127.0.0.1:0", "--listen")
    relays = [
        lan.run("r", "-c", NAMED_RELAY, label, *serve, f"{address}:9000")
        for label, address in (("one", lan.address["r"]), ("two", "10.78.0.4"))
    ]
    try:
        admins = []
        for relay in relays:  # the two lines come in either order
            relay.wait_for(r"^Admin on |bob relay announced on the LAN")
            relay.wait_for(r"^Admin on |bob relay announced on the LAN")
            (admin,) = {
                m[1] for line in relay.seen if (m := re.match(r"^Admin on (\S+)/status$", line))
            }
            admins.append(admin)
        for n in range(3):
            said, got = transfer(lan, payload, tmp_path / f"out{n}", f"43{n}0-alpha-abandon")
            assert said[1] == "Using the 2 relays found on the LAN: 10.78.0.3:9000, 10.78.0.4:9000"
            # the one where the receiver met the sender
            assert re.fullmatch(
                r"Using the relay at 10\.78\.0\.[34]:9000 \(found on the LAN\)", got[0]
            ), got
        ended = [lan.status("r", admin)["relay"] for admin in admins]
        assert all(isinstance(doc, dict) for doc in ended)
        failed = [doc["ended"]["key exchange failed"] for doc in ended]  # type: ignore[index]
        assert failed == [0, 0], ended
        assert [doc["warnings"] for doc in ended] == [[], []]  # type: ignore[index]
        for relay in relays:
            relay.popen.terminate()
            _, logged = finish(relay)
            assert not any("WARNING" in line for line in logged), logged
    finally:
        for relay in relays:
            relay.stop()


def nobody_waits(lan: Lan, out: Path, passphrase: str) -> bool:
    """A receiver that finds no sender for its nameplate on a LAN without a relay says so."""
    code, said = finish(lan.bob("b", "recv", "--yes", "-o", str(out), passphrase))
    nameplate = passphrase.split("-")[0]
    return (
        code == 1
        and re.fullmatch(
            f"ERROR: no sender is waiting on nameplate {nameplate} on this network, and no relay"
            r" answers at relay\.retreat\.lan:9000 \([^()]+\): check the passphrase, or give"
            r" --relay HOST:PORT",
            said[-1],
        )
        is not None
    )


def test_no_relay_a_wrong_passphrase_closes_an_offer_to_3(lan: Lan, tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("for the three of you\n")
    sender = lan.bob("a", "send", "--no-qr", "--count", "3", str(src))
    try:
        nameplate = sender.wait_for(r"\(nameplate (\d+) advertised\)$")[1]
        passphrase = sender.wait_for(r"^Passphrase: (\S+)$")[1]
        wrong = lan.bob("b", "recv", "--yes", "-o", str(tmp_path), f"{nameplate}-wrong-guess")
        code, got = finish(wrong)
        assert (code, got[-1]) == (
            1,
            "ERROR: wrong passphrase: the other side used a different one."
            " The passphrase is used up: ask the sender to start a new bob send",
        )
        status, said = finish(sender)  # it waited for more receivers: that wait ends too
        assert status == 1
        assert said[-2:] == [
            "Receiver 1 of 3: ERROR: wrong passphrase: the other side used a different one",
            "ERROR: wrong passphrase from a receiver: the offer is closed after 0 of 3."
            " The passphrase is used up: start a new bob send",
        ]
        assert nobody_waits(lan, tmp_path, passphrase)
    finally:
        sender.stop()


def test_a_neighbour_on_the_lan_cannot_stop_a_direct_transfer(
    lan: Lan, payload: Path, tmp_path: Path
) -> None:
    """The sender listens for the direct connection while the receiver decides; a
    neighbour (the relay's host here) that finds the port and connects, says nothing,
    or says the hello with a MAC it cannot know, changes nothing but its own socket."""
    relay = lan.bob("r", "relay", "--listen", "0.0.0.0:9000", "--admin", "127.0.0.1:0")
    sender = receiver = None
    try:
        relay.wait_for(r"bob relay announced on the LAN")
        sender = lan.bob("a", "send", str(payload), BOB_PASSPHRASE="4322-alpha-abandon")
        sender.wait_for(r"^Passphrase: ")
        out = tmp_path / "out"
        out.mkdir()
        receiver = lan.bob("b", "recv", "-o", str(out), "4322-alpha-abandon", stdin=subprocess.PIPE)
        receiver.wait_for(r"^  image.bin  8.4 MB$")  # at the question: both listen by now
        ports = listening(lan, "a")
        assert ports  # the sender's listener, beside nothing else on that host
        neighbour = lan.run("r", "-c", NEIGHBOUR, lan.address["a"], *map(str, ports))
        assert finish(neighbour)[0] == 0
        assert receiver.popen.stdin is not None
        receiver.popen.stdin.write(b"y\n")
        receiver.popen.stdin.close()
        code, got = finish(receiver)
        assert code == 0, got
        status, said = finish(sender)
        assert status == 0, said
        assert "Path: direct" in said and any(line.endswith("Path: direct") for line in got)
        assert (out / "image.bin").read_bytes() == payload.read_bytes()
        assert [p.name for p in out.iterdir()] == ["image.bin"]
    finally:
        for proc in (sender, receiver, relay):
            if proc is not None:
                proc.stop()


NEIGHBOUR = """
import socket, sys, os
host, ports = sys.argv[1], sys.argv[2:]
for port in ports:
    fake = b"bob/1 direct\\nR" + os.urandom(16) + os.urandom(32)  # a MAC it cannot know
    for hello in (b"", fake, b"GET / HTTP/1.0\\r\\n\\r\\n"):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(hello)
            s.settimeout(5)
            try:
                s.recv(4096)
            except OSError:
                pass
"""


def listening(lan: Lan, host: str) -> list[int]:
    """The TCP ports a host's processes listen on, as a neighbour's scan would find."""
    done = subprocess.run(
        ["ip", "netns", "exec", lan.hosts[host], "ss", "-Hltn"],
        capture_output=True, text=True, timeout=TIMEOUT, check=True,
    )  # fmt: skip
    ports = []
    for line in done.stdout.splitlines():
        local = line.split()[3]
        if local.startswith(("0.0.0.0:", "*:")):
            with contextlib.suppress(ValueError):
                ports.append(int(local.rsplit(":", 1)[1]))
    return ports


def test_up_announces_the_relay_and_the_mirror(lan: Lan, tmp_path: Path) -> None:
    cfg = tmp_path / "retreat.toml"
    cfg.write_text(
        '[relay]\nlisten = "0.0.0.0:9000"\n[admin]\nlisten = "127.0.0.1:0"\n'
        f'[mirror]\nlisten = "0.0.0.0:8000"\nstore = "{tmp_path / "store"}"\n'
        'pypi = "http://127.0.0.1:1/simple/"\nopam = "http://127.0.0.1:1/opam"\n'
        '[nameserver]\nlisten = "127.0.0.1:0"\nupstreams = ["127.0.0.1:9"]\n'
    )
    up = lan.run("r", "-m", "retreatkit.cli.main", "--config", str(cfg), "up", "--no-tui")
    try:
        for _ in range(2):  # in either order
            up.wait_for(r"(bob relay|retreatkit mirror) announced on the LAN")
        look = lan.run("b", "-c", BROWSE)
        code, lines = finish(look)
        assert code == 0, lines
        assert sorted(lines) == [
            "_retreat-mirror._tcp.local. 10.78.0.3 8000 path=/",
            "_retreat-relay._tcp.local. 10.78.0.3 9000 kind=relay",
        ]
    finally:
        up.stop()


BROWSE = """
import asyncio, sys
from retreatkit import mdns
async def main():
    for service in (mdns.RELAY, mdns.MIRROR):
        for f in await mdns.browse(service, 3.0, lambda found: bool(found)):
            props = " ".join(f"{k}={v}" for k, v in sorted(f.properties.items()))
            print(service, f.addresses[0], f.port, props, file=sys.stderr)
asyncio.run(main())
"""


def test_up_announces_the_relay_and_the_mirror_it_runs_as_images(lan: Lan, tmp_path: Path) -> None:
    """A guest's network is not the LAN: `up` announces its relay and its mirror for it,
    at the host's forwarded ports, where bob and a browser find them."""
    fake = tmp_path / "bin" / "qemu-system-x86_64"
    fake.parent.mkdir()
    fake.write_text(FAKE_QEMU)
    fake.chmod(0o755)
    cfg = tmp_path / "retreat.toml"
    cfg.write_text(
        '[relay]\nlisten = "0.0.0.0:19700"\n[admin]\nlisten = "127.0.0.1:0"\n'
        '[mirror]\nlisten = "0.0.0.0:18000"\n'
        '[nameserver]\nlisten = "127.0.0.1:0"\nupstreams = ["127.0.0.1:9"]\n'
        f'[images]\nrun = ["relay", "mirror"]\nnetwork = "user"\ndir = "{tmp_path / "images"}"\n'
        f'disk = "{tmp_path / "mirror.disk"}"\ndisk_size = "64M"\n'
    )
    path = f"{fake.parent}{os.pathsep}{os.environ['PATH']}"
    up = lan.run("r", "-c", FAKE_IMAGES, "--config", str(cfg), "up", "--no-tui", PATH=path)
    try:
        up.wait_for(r"^Admin on http://127\.0\.0\.1:\d+/status$")
        in_process = [line for line in up.seen if line.startswith(("Relay ", "Mirror "))]
        assert in_process == [], up.seen  # the guests serve them
        for _ in range(2):  # in either order
            up.wait_for(r"(bob relay|retreatkit mirror) announced on the LAN")
        code, lines = finish(lan.run("b", "-c", BROWSE))
        assert code == 0, lines
        assert sorted(lines) == [
            "_retreat-mirror._tcp.local. 10.78.0.3 18000 path=/",
            "_retreat-relay._tcp.local. 10.78.0.3 19700 kind=relay",
        ]
        code, lines = finish(lan.run("b", "-c", FIND_RELAYS))  # as bob looks
        assert (code, lines) == (0, ["lan 10.78.0.3:19700"]), lines
        up.popen.terminate()
        code, lines = finish(up)
        assert code == 0, lines
        assert lines[-1] == "Stopped: nameserver, vm (guests mirror, relay)", lines
    finally:
        up.stop()


# qemu as the supervisor sees it: the guest's console says it is up, then it serves
# (nothing: no guest boots) until told to stop
FAKE_QEMU = """#!/bin/sh
printf 'Admin on http://0.0.0.0:8080/status\\n'
read line
"""

# `retreatkit` whose image builds write an image folder of no guest at all (qemu is the
# fake above): `up` with `[images] run` builds each image at its start, in a process of
# its own, which the fake build replaces too (a real one fetches packages, and this LAN
# reaches no archive)
FAKE_IMAGES = """
import json, sys
from retreatkit.cli.main import main
from retreatkit.image import build, cpio, vmservice
from retreatkit.image.testing import manifest
initramfs = cpio.initramfs({})
def fake_build(service, out, which_kernel="auto", say=lambda _: None):
    out.mkdir(parents=True, exist_ok=True)
    made = manifest(service, 0, len(initramfs))
    (out / "manifest.json").write_text(json.dumps(made))
    (out / "kernel").write_bytes(b"")
    (out / "initramfs").write_bytes(initramfs)
    return made
async def fake_apart(out, kernel):
    return fake_build(out.name, out)["size_bytes"]
build.build = fake_build
vmservice.build_apart = fake_apart
sys.exit(main(sys.argv[1:]))
"""

# The relays bob finds on the LAN (transfer.find), each as `how host:port`
FIND_RELAYS = """
import asyncio, sys
from retreatkit.transfer import find
for t in asyncio.run(find.on_lan(None, 5.0)).relays:
    print(t.how, f"{t.relay.host}:{t.relay.port}", file=sys.stderr)
"""
