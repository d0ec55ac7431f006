"""bob beside a neighbour whose multicast DNS answers are crafted, not zeroconf's: names
with nothing behind them, addresses no announcement should lead to, and many false
senders, each heard before the real one (the neighbour answers at once, and again and
again, where a real responder waits 20-120 ms). Real processes in network namespaces
(test_bob_lan.py's)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from retreatkit.testing import Process
from tests.e2e import test_bob_lan
from tests.e2e.test_bob_lan import NO_NAME, Lan, finish, ip

pytestmark = test_bob_lan.pytestmark
lan = test_bob_lan.lan  # the fixtures
payload = test_bob_lan.payload

# Answers every question about `_retreat-relay._tcp.local.`, or about one of its names,
# at once, and sends every answer again each argv[2] seconds (argv[1]: JSON, a list of
# services, each {"name", "port", "txt", "addresses", "resolves"}). A service that does
# not resolve is its PTR record alone: no SRV, TXT or address records, ever.
NEIGHBOUR_MDNS = """
import json, socket, struct, sys, threading, time
SERVICE = "_retreat-relay._tcp.local."
services = json.loads(sys.argv[1])

def name(text):
    labels = [label.encode() for label in text.rstrip(".").split(".")]
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\\0"

def rr(owner, kind, data, flush=True):
    head = struct.pack(">HHIH", kind, 1 | (0x8000 if flush else 0), 120, len(data))
    return name(owner) + head + data

def records(s, ptr=True):
    full, host = f"{s['name']}.{SERVICE}", f"{s['name'].replace(' ', '-')}.local."
    out = [rr(SERVICE, 12, name(full), flush=False)] if ptr else []
    if s.get("resolves", True):
        pairs = [f"{k}={v}".encode() for k, v in s["txt"].items()]
        txt = b"".join(bytes([len(pair)]) + pair for pair in pairs)
        out += [rr(full, 33, struct.pack(">HHH", 0, 0, s["port"]) + name(host)), rr(full, 16, txt)]
        out += [rr(host, 1, socket.inet_aton(a)) for a in s["addresses"]]
    return out, full.lower(), host.lower()

def send(answers):
    while answers:
        batch, size = [], 0
        while answers and size + len(answers[0]) < 1400:
            size += len(answers[0]); batch.append(answers.pop(0))
        batch = batch or [answers.pop(0)]
        head = struct.pack(">HHHHHH", 0, 0x8400, 0, len(batch), 0, 0)
        sock.sendto(head + b"".join(batch), ("224.0.0.251", 5353))

def questions(data):
    if struct.unpack(">H", data[2:4])[0] & 0x8000:
        return []
    pos, out = 12, []
    for _ in range(struct.unpack(">H", data[4:6])[0]):
        labels, end = [], None
        while data[pos]:
            if data[pos] & 0xC0 == 0xC0:
                end = end or pos + 2
                pos = struct.unpack(">H", data[pos:pos + 2])[0] & 0x3FFF
                continue
            labels.append(data[pos + 1:pos + 1 + data[pos]].decode()); pos += 1 + data[pos]
        pos = (end or pos + 1) + 4
        out.append(".".join(labels).lower() + ".")
    return out

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
sock.bind(("", 5353))
group = socket.inet_aton("224.0.0.251") + socket.inet_aton("0.0.0.0")
sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)

def again(every):
    while True:
        send([r for s in services for r in records(s)[0]])
        time.sleep(every)  # the neighbour's pace, not a synchronisation

if float(sys.argv[2]):
    threading.Thread(target=again, args=(float(sys.argv[2]),), daemon=True).start()
print("announcing", file=sys.stderr, flush=True)
while True:
    data = sock.recv(9000)
    try:
        asked = questions(data)
    except (IndexError, UnicodeDecodeError, struct.error):
        continue
    answers = []
    for s in services:
        mine, full, host = records(s)
        if SERVICE.lower() in asked:
            answers += mine
        elif full in asked or host in asked:
            answers += records(s, ptr=False)[0]
    send(answers)
"""


# Asks for one name (argv[1]) until it resolves: the name is heard on this host.
RESOLVE = """
import asyncio, sys
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf
from retreatkit import mdns

async def main():
    zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
    info = AsyncServiceInfo(mdns.RELAY, f"{sys.argv[1]}.{mdns.RELAY}")
    found = await info.async_request(zc.zeroconf, 20000)
    print("resolved" if found else "not heard", file=sys.stderr)
    await zc.async_close()

asyncio.run(main())
"""


def heard(lan: Lan, host: str, name: str) -> bool:
    return finish(lan.run(host, "-c", RESOLVE, name)) == (0, ["resolved"])


def neighbour(lan: Lan, services: list[dict[str, Any]], every: float = 0.02) -> Process:
    """NEIGHBOUR_MDNS on r, announcing `services` (again each `every` seconds, if not 0),
    once it listens."""
    proc = lan.run("r", "-c", NEIGHBOUR_MDNS, json.dumps(services), str(every))
    try:
        proc.wait_for(r"^announcing$")
    except BaseException:
        proc.stop()
        raise
    return proc


def test_names_that_never_resolve_hide_no_sender(lan: Lan, payload: Path, tmp_path: Path) -> None:
    """A neighbour announces eight names with nothing behind them, each heard before the
    real sender: the receiver asks for them side by side, each for half a second, and
    finds the sender, whose records came with its name. (One after the other, they
    took the receiver's whole wait: `no sender is waiting on nameplate 4341`.)"""
    silent = [{"name": f"nothing {n}", "port": 1, "resolves": False} for n in range(8)]
    noise = neighbour(lan, silent)
    sender = receiver = None
    try:
        sender = lan.bob("a", "send", "--no-qr", str(payload), BOB_PASSPHRASE="4341-alpha-abandon")
        sender.wait_for(r"\(nameplate 4341 advertised\)$")
        assert heard(lan, "b", "bob sender 4341")
        out = tmp_path / "out"
        out.mkdir()
        receiver = lan.bob("b", "recv", "--yes", "-o", str(out), "4341-alpha-abandon")
        code, got = finish(receiver)
        assert code == 0, got
        assert got[0].startswith(f"Found the sender on the LAN at {lan.address['a']}:"), got
        assert finish(sender)[0] == 0
        assert (out / "image.bin").read_bytes() == payload.read_bytes()
    finally:
        for proc in (sender, receiver, noise):
            if proc is not None:
                proc.stop()


# Takes connections on every address of its host at a port (argv[1]), and says the first
# line each brings, then closes it.
LISTENER = """
import socket, sys
server = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("listening", file=sys.stderr, flush=True)
while True:
    conn, _ = server.accept()
    conn.settimeout(5)
    try:
        line = conn.recv(200).decode("ascii", "replace").strip()
    except OSError:
        line = ""
    print(f"said {line!r}", file=sys.stderr, flush=True)
    conn.close()
"""
MARK = (
    "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1]))).sendall(b'mark')"
)


def test_announcements_of_loopback_and_nowhere_lead_nobody_to_its_own_ports(
    lan: Lan, tmp_path: Path
) -> None:
    """A neighbour announces relays at 127.0.0.1, at 0.0.0.0 and at multicast and
    broadcast addresses, and a sender at 127.0.0.2, at a port where the receiver's own
    machine listens: neither a sender nor a receiver goes there (they sent `bob/1 send`
    and `bob/1 recv 4342` to their own machine); each does as on a LAN with nothing
    announced."""
    port = 7777
    lies = [
        {"name": "bob relay lo", "addresses": ["127.0.0.1"]},
        {"name": "bob relay any", "addresses": ["0.0.0.0"]},
        {"name": "bob relay all", "addresses": ["224.0.0.251", "255.255.255.255", "10.78.0.255"]},
        {"name": "bob sender 4342", "addresses": ["127.0.0.2"], "nameplate": "4342"},
    ]
    services = [
        {
            "name": lie["name"],
            "port": port,
            "addresses": lie["addresses"],
            "txt": {"kind": "sender", "nameplate": lie["nameplate"]}
            if "nameplate" in lie
            else {"kind": "relay"},
        }
        for lie in lies
    ]
    own = lan.run("b", "-c", LISTENER, str(port))
    noise = sender = None
    try:
        own.wait_for(r"^listening$")
        noise = neighbour(lan, services)
        small = tmp_path / "notes.txt"
        small.write_text("the schedule\n")
        sender = lan.bob("b", "send", "--no-qr", str(small))
        assert re.fullmatch(
            r"No relay on this network: the receiver finds this computer on the LAN"
            r" \(nameplate \d+ advertised\)",
            sender.wait_for(r"^Using |^No relay").string,
        )
        sender.stop()
        out = tmp_path / "out"
        out.mkdir()
        code, got = finish(lan.bob("b", "recv", "--yes", "-o", str(out), "4342-alpha-abandon"))
        assert (code, got) == (
            1,
            [
                "ERROR: no sender is waiting on nameplate 4342 on this network, and no relay"
                f" answers at relay.retreat.lan:9000 ({NO_NAME}): check the passphrase, or"
                " give --relay HOST:PORT"
            ],
        )
        assert finish(lan.run("b", "-c", MARK, str(port)))[0] == 0
        own.wait_for(r"^said 'mark'$")
        assert own.seen == ["listening", "said 'mark'"]  # the first to come
    finally:
        for proc in (sender, noise, own):
            if proc is not None:
                proc.stop()


def test_two_bob_on_a_computer_with_no_network_meet_at_loopback(
    lan: Lan, payload: Path, tmp_path: Path
) -> None:
    """Someone trying bob out on one laptop, offline: the sender announces itself at
    loopback, and the receiver, on no network but loopback, where nobody else could have
    announced anything, finds it there."""
    ip("-n", lan.hosts["a"], "link", "del", "eth0")
    sender = lan.bob("a", "send", "--no-qr", str(payload), BOB_PASSPHRASE="4343-alpha-abandon")
    try:
        sender.wait_for(r"\(nameplate 4343 advertised\)$")
        out = tmp_path / "out"
        out.mkdir()
        code, got = finish(lan.bob("a", "recv", "--yes", "-o", str(out), "4343-alpha-abandon"))
        assert code == 0, got
        assert got[0].startswith("Found the sender on the LAN at 127.0.0.1:"), got
        assert "Path: direct" in got
        assert finish(sender)[0] == 0
        assert (out / "image.bin").read_bytes() == payload.read_bytes()
    finally:
        sender.stop()


def test_on_a_lan_without_ipv4_a_sender_with_no_relay_stops_and_says_why(
    lan: Lan, payload: Path, tmp_path: Path
) -> None:
    """A LAN with IPv6 link-local addresses alone (no DHCP, no router): bob finds a sender
    on the LAN by IPv4 multicast DNS, so the sender was announced at loopback, said `the
    receiver finds this computer on the LAN` and waited for nobody: a receiver elsewhere
    heard nothing, and one on the same computer takes no loopback announcement on a
    computer on a network. It stops, in one line; the receiver says it found no sender."""
    for host in ("a", "b"):
        ip("-n", lan.hosts[host], "-4", "addr", "flush", "dev", "eth0")
    code, said = finish(lan.bob("a", "send", "--no-qr", str(payload)))
    assert (code, said) == (
        1,
        [
            "Sending 8.4 MB file named 'image.bin'",
            "ERROR: no relay on this network, and this computer has no IPv4 address on it,"
            " where a receiver finds a sender on the LAN: give --relay HOST:PORT",
        ],
    )
    out = tmp_path / "out"
    out.mkdir()
    code, got = finish(lan.bob("b", "recv", "--yes", "-o", str(out), "4348-alpha-abandon"))
    assert (code, got) == (
        1,
        [
            "ERROR: no sender is waiting on nameplate 4348 on this network, and no relay"
            f" answers at relay.retreat.lan:9000 ({NO_NAME}): check the passphrase, or"
            " give --relay HOST:PORT"
        ],
    )
    assert list(out.iterdir()) == []


def test_a_neighbour_holding_every_short_nameplate_costs_a_sender_a_longer_one(
    lan: Lan, payload: Path, tmp_path: Path
) -> None:
    """A neighbour answers for `bob sender 1` to `bob sender 99`: a sender with no relay,
    which stopped with `no free nameplate on this network; try again`, finds three of
    them taken and draws from 1-9999; its receiver gets the file."""
    squat = [
        {
            "name": f"bob sender {n}",
            "port": 7000,
            "addresses": [lan.address["r"]],
            "txt": {"kind": "sender", "nameplate": str(n)},
        }
        for n in range(1, 100)
    ]
    noise = neighbour(lan, squat, every=0)
    sender = receiver = None
    try:
        sender = lan.bob("a", "send", "--no-qr", str(payload))
        plate = sender.wait_for(
            r"^No relay on this network: the receiver finds this computer on the LAN"
            r" \(nameplate (\d+) advertised\)$"
        )[1]
        assert 100 <= int(plate) < 10_000, plate
        passphrase = sender.wait_for(r"^Passphrase: (\S+)$")[1]
        assert passphrase.startswith(f"{plate}-")
        out = tmp_path / "out"
        out.mkdir()
        receiver = lan.bob("b", "recv", "--yes", "-o", str(out), passphrase)
        code, got = finish(receiver)
        assert code == 0, got
        assert got[0].startswith(f"Found the sender on the LAN at {lan.address['a']}:"), got
        assert finish(sender)[0] == 0
        assert (out / "image.bin").read_bytes() == payload.read_bytes()
    finally:
        for proc in (sender, receiver, noise):
            if proc is not None:
                proc.stop()


# Takes connections at an address and port (argv) and never says a word.
SILENT = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("listening", file=sys.stderr, flush=True)
held = []
while True:
    held.append(server.accept())
"""


def test_false_senders_heard_first_keep_no_receiver_from_the_real_one(
    lan: Lan, payload: Path, tmp_path: Path
) -> None:
    """Four false senders announced for the nameplate, heard before the real one: one at
    a port that takes the connection and never answers, one at an address nobody holds,
    one at the real sender's own address but a port nobody listens on, one at a port
    that refuses. The receiver tried the first three heard (one per address) and gave
    up; it tries each in turn, the next as soon as one fails or a second after it
    started, and meets the real sender."""
    r = lan.address["r"]
    fakes = [(r, 7000), ("10.78.0.9", 7000), (lan.address["a"], 1), (r, 1)]
    services = [
        {
            "name": f"not bob {n}",
            "port": port,
            "addresses": [address],
            "txt": {"kind": "sender", "nameplate": "4344"},
        }
        for n, (address, port) in enumerate(fakes)
    ]
    silent = lan.run("r", "-c", SILENT, r, "7000")
    noise = sender = receiver = None
    try:
        silent.wait_for(r"^listening$")
        noise = neighbour(lan, services)
        sender = lan.bob("a", "send", "--no-qr", str(payload), BOB_PASSPHRASE="4344-alpha-abandon")
        sender.wait_for(r"\(nameplate 4344 advertised\)$")
        assert heard(lan, "b", "bob sender 4344")
        out = tmp_path / "out"
        out.mkdir()
        receiver = lan.bob("b", "recv", "--yes", "-o", str(out), "4344-alpha-abandon")
        code, got = finish(receiver)
        assert code == 0, got
        assert got[0].startswith(f"Found the sender on the LAN at {lan.address['a']}:"), got
        assert not got[0].endswith(":1"), got
        assert finish(sender)[0] == 0
        assert (out / "image.bin").read_bytes() == payload.read_bytes()
    finally:
        for proc in (sender, receiver, noise, silent):
            if proc is not None:
                proc.stop()


def test_a_neighbour_that_copies_the_senders_name_hides_it_from_no_receiver(
    lan: Lan, payload: Path, tmp_path: Path
) -> None:
    """A neighbour hears `bob sender 4345` announced and announces that very name at a port
    of its own that never answers, at once and again and again: the receiver heard the
    neighbour's records first and took them alone for that name (`Not met at the sender
    announced at 10.78.0.3:7000 (the sender did not answer in time)`, then `no sender is
    waiting on nameplate 4345`). It tries both, and meets the real sender."""
    r = lan.address["r"]
    silent = lan.run("r", "-c", SILENT, r, "7000")
    noise = sender = receiver = None
    try:
        silent.wait_for(r"^listening$")
        sender = lan.bob("a", "send", "--no-qr", str(payload), BOB_PASSPHRASE="4345-alpha-abandon")
        sender.wait_for(r"\(nameplate 4345 advertised\)$")
        copy = {"kind": "sender", "nameplate": "4345"}
        noise = neighbour(
            lan, [{"name": "bob sender 4345", "port": 7000, "addresses": [r], "txt": copy}]
        )
        out = tmp_path / "out"
        out.mkdir()
        receiver = lan.bob("b", "recv", "--yes", "-o", str(out), "4345-alpha-abandon")
        code, got = finish(receiver)
        assert code == 0, got
        assert got[0].startswith(f"Found the sender on the LAN at {lan.address['a']}:"), got
        assert finish(sender)[0] == 0
        assert (out / "image.bin").read_bytes() == payload.read_bytes()
    finally:
        for proc in (sender, receiver, noise, silent):
            if proc is not None:
                proc.stop()


# Asks for one name (argv[1]) until it resolves; prints the host name and port it names.
SERVER = """
import asyncio, sys
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf
from retreatkit import mdns

async def main():
    zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
    info = AsyncServiceInfo(mdns.RELAY, f"{sys.argv[1]}.{mdns.RELAY}")
    if await info.async_request(zc.zeroconf, 20000):
        print(info.server, info.port, file=sys.stderr)
    await zc.async_close()

asyncio.run(main())
"""

# Says, unasked and again and again, that a host name (argv[1]) is at an address (argv[2]).
FALSE_ADDRESS = """
import socket, struct, sys, time
host, address = sys.argv[1], sys.argv[2]
owner = b"".join(bytes([len(label)]) + label.encode() for label in host.rstrip(".").split("."))
record = owner + b"\\0" + struct.pack(">HHIH", 1, 0x8001, 120, 4) + socket.inet_aton(address)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
print("saying", file=sys.stderr, flush=True)
while True:
    sock.sendto(struct.pack(">HHHHHH", 0, 0x8400, 0, 1, 0, 0) + record, ("224.0.0.251", 5353))
    time.sleep(0.02)  # the neighbour's pace, not a synchronisation
"""


def test_a_false_address_for_the_senders_own_host_hides_it_from_no_receiver(
    lan: Lan, payload: Path, tmp_path: Path
) -> None:
    """The sender on r is announced at 10.78.0.3; a neighbour on a says that the sender's
    own host name is at 10.78.0.1 too, where it takes connections at the sender's port and
    never answers. The receiver dialled both addresses as one place, kept the first to take
    the connection (the neighbour's, first in the order of the addresses), and gave up on
    it (`Not met at the sender announced at 10.78.0.1:PORT (the sender did not answer in
    time)`). Each address is a place of its own: the neighbour's costs a second."""
    a = lan.address["a"]
    sender = lan.bob("r", "send", "--no-qr", str(payload), BOB_PASSPHRASE="4346-alpha-abandon")
    noise = receiver = held = None
    try:
        sender.wait_for(r"\(nameplate 4346 advertised\)$")
        code, said = finish(lan.run("a", "-c", SERVER, "bob sender 4346"))
        assert code == 0 and len(said) == 1, said
        host, port = said[0].split()
        held = lan.run("a", "-c", SILENT, a, port)
        held.wait_for(r"^listening$")
        noise = lan.run("a", "-c", FALSE_ADDRESS, host, a)
        noise.wait_for(r"^saying$")
        out = tmp_path / "out"
        out.mkdir()
        receiver = lan.bob("b", "recv", "--yes", "-o", str(out), "4346-alpha-abandon")
        code, got = finish(receiver)
        assert code == 0, got
        assert got[0] == f"Found the sender on the LAN at {lan.address['r']}:{port}", got
        assert finish(sender)[0] == 0
        assert (out / "image.bin").read_bytes() == payload.read_bytes()
    finally:
        for proc in (sender, receiver, noise, held):
            if proc is not None:
                proc.stop()


def test_an_announcement_leads_no_receiver_off_the_lan(
    lan: Lan, payload: Path, tmp_path: Path
) -> None:
    """A neighbour announces senders for the nameplate, heard before the real one, at
    addresses off the LAN: one on the internet, one link-local (169.254/16) that the
    receiver holds no address on. Its host holds both (its neighbours reach them through
    it, as the internet through a gateway): the receiver connected to each and said
    `bob/1 recv 4347` there. Now it dials neither, and meets the real sender."""
    r = lan.address["r"]
    for far in ("203.0.113.7/32", "169.254.9.9/32"):
        ip("-n", lan.hosts["r"], "addr", "add", far, "dev", "lo")
    port = 7100
    there = lan.run("r", "-c", LISTENER, str(port))
    noise = sender = receiver = None
    try:
        there.wait_for(r"^listening$")
        far = {"kind": "sender", "nameplate": "4347"}
        noise = neighbour(
            lan,
            [
                {"name": "bob sender far", "port": port, "addresses": ["203.0.113.7"], "txt": far},
                {"name": "bob sender ll", "port": port, "addresses": ["169.254.9.9"], "txt": far},
            ],
        )
        sender = lan.bob("a", "send", "--no-qr", str(payload), BOB_PASSPHRASE="4347-alpha-abandon")
        sender.wait_for(r"\(nameplate 4347 advertised\)$")
        assert heard(lan, "b", "bob sender 4347")
        out = tmp_path / "out"
        out.mkdir()
        receiver = lan.bob("b", "recv", "--yes", "-o", str(out), "4347-alpha-abandon")
        code, got = finish(receiver)
        assert code == 0, got
        assert got[0].startswith(f"Found the sender on the LAN at {lan.address['a']}:"), got
        assert finish(sender)[0] == 0
        assert (out / "image.bin").read_bytes() == payload.read_bytes()
        assert finish(lan.run("r", "-c", MARK, str(port)))[0] == 0
        there.wait_for(r"^said 'mark'$")
        assert there.seen == ["listening", "said 'mark'"]  # the first to come
        assert r not in " ".join(got)
    finally:
        for proc in (sender, receiver, noise, there):
            if proc is not None:
                proc.stop()
