"""bob beside a neighbour that announces relays by zeroconf, from a machine of its own on
the LAN, at ports that take every connection and never say a word (tarpits). The real
relay is announced too, at an address after the neighbour's, so each side meets a
tarpit before it in the order of the addresses. Real processes in network namespaces
(test_bob_lan.py's); what each side tried is what the neighbour saw, not how long it
took."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

from retreatkit.testing import Process
from tests.e2e import test_bob_lan
from tests.e2e.test_bob_lan import (
    NETNS,
    Lan,
    finish,
    ip,
    namespace,
    plug,
    remove_namespaces,
    transfer,
)  # fmt: skip

pytestmark = test_bob_lan.pytestmark
lan = test_bob_lan.lan  # the fixtures
payload = test_bob_lan.payload

REAL = "10.78.0.20"  # the real relay's address: after every one the neighbour holds

# The neighbour (argv: its addresses, then its ports): a relay announced at each address
# and port, under a host name of its own (the namespaces share this machine's), each
# taking connections and never answering one. It says who connected where, in the order
# each port took them.
TARPITS = """
import asyncio, select, socket, sys, threading
from retreatkit import mdns
mdns.host_label = lambda: "neighbour"
addresses = [a for a in sys.argv[1:] if "." in a]
ports = [int(p) for p in sys.argv[1:] if "." not in p]
servers = [socket.create_server((a, p)) for a in addresses for p in ports]
adverts = []

async def announce():
    for a in addresses:
        for p in ports:
            adverts.append(await mdns.advertise(
                mdns.RELAY, f"bob relay {a} {p}", [a], p, {"kind": "relay"}, probe=False))
    print("announced", file=sys.stderr, flush=True)
    await asyncio.Event().wait()

threading.Thread(target=asyncio.run, args=(announce(),), daemon=True).start()
held = []
while True:
    for server in select.select(servers, [], [])[0]:
        conn, peer = server.accept()
        held.append(conn)  # never a word, never closed
        here = server.getsockname()
        print(f"took {peer[0]} at {here[0]}:{here[1]}", file=sys.stderr, flush=True)
"""

# Connects once to each address:port given (argv), from the neighbour's own machine.
KNOCK = """
import socket, sys
for place in sys.argv[1:]:
    address, port = place.rsplit(":", 1)
    socket.create_connection((address, int(port)), timeout=10).close()
"""


@contextlib.contextmanager
def neighbour(lan: Lan, addresses: list[str], ports: list[int]) -> Iterator[Process]:
    """TARPITS on a machine of its own (`n`), plugged into the LAN at `addresses`, once
    every relay is announced."""
    made: list[str] = []
    proc = None
    try:
        namespace(f"{lan.prefix}-n", made)
        lan.hosts["n"], lan.address["n"] = made[0], addresses[0]
        plug(lan, "n")
        for extra in addresses[1:]:
            ip("-n", lan.hosts["n"], "addr", "add", f"{extra}/24", "dev", "eth0")
        proc = lan.run("n", "-c", TARPITS, *addresses, *map(str, ports))
        proc.wait_for(r"^announced$")
        yield proc
    finally:
        if proc is not None:
            proc.stop()
        remove_namespaces(made)


def tried(lan: Lan, tarpits: Process, places: list[str]) -> dict[str, list[str]]:
    """Which machine connected to which of the neighbour's `places` (address:port), so far:
    the neighbour knocks at each itself and reads until it heard every knock (each port
    takes its connections in order, so all that came before were said)."""
    assert finish(lan.run("n", "-c", KNOCK, *places))[0] == 0
    own = {place.rsplit(":", 1)[0] for place in places}  # a knock comes from where it goes
    knocked: set[str] = set()
    while knocked != set(places):
        match = tarpits.wait_for(r"^took (\S+) at (\S+)$")
        if match[1] in own:
            knocked.add(match[2])
    seen: dict[str, list[str]] = {}
    for line in tarpits.seen:
        match = re.fullmatch(r"took (\S+) at (\S+)", line)
        if match and match[1] not in own:
            seen.setdefault(match[1], []).append(match[2])
    return seen


def real_relay(lan: Lan) -> Process:
    """`bob relay` on r at REAL alone, announced there."""
    ip("-n", lan.hosts["r"], "addr", "add", f"{REAL}/24", "dev", "eth0")
    relay = lan.bob("r", "relay", "--listen", f"{REAL}:9000", "--admin", "127.0.0.1:0")
    try:
        relay.wait_for(r"bob relay announced on the LAN")
    except BaseException:
        relay.stop()
        raise
    return relay


def test_six_tarpit_relays_from_one_neighbour_cost_each_side_one_try(
    lan: Lan, payload: Path, tmp_path: Path
) -> None:
    """A neighbour announces six relays, at six ports of its one address, before the real
    relay in the order of the addresses; none ever answers. Each side took the first four
    it heard, in the order heard: the sender waited 5 s on the tarpits among them, and the
    two sides often took different ones, the receiver never the real relay (`ERROR: the
    relay did not answer in time`). Now both take one relay of each address, so the
    same two: the sender asks both at once and holds its nameplate at the one that
    answers, the receiver tries the neighbour's first, gives up on it, and meets the
    sender at the real relay. With the real relay gone, the sender waits on the LAN
    itself, and each side names the relay that did not answer."""
    ports = list(range(9101, 9107))
    with neighbour(lan, ["10.78.0.9"], ports) as tarpits:
        relay = real_relay(lan)
        try:
            said, got = transfer(lan, payload, tmp_path / "out", "4351-alpha-abandon", "--no-qr")
        finally:
            relay.stop()  # and nobody finds it any more
        assert said[1] == f"Using the relay at {REAL}:9000 (found on the LAN)", said
        assert got[0] == f"Using the relay at {REAL}:9000 (found on the LAN)", got
        assert (tmp_path / "out" / "image.bin").read_bytes() == payload.read_bytes()
        # one try each, at the same one of the six: the one at the lowest port
        places = [f"10.78.0.9:{port}" for port in ports]
        assert tried(lan, tarpits, places) == {
            lan.address["a"]: ["10.78.0.9:9101"],
            lan.address["b"]: ["10.78.0.9:9101"],
        }
        small = tmp_path / "notes.txt"
        small.write_text("the schedule\n")
        sender = lan.bob("a", "send", "--no-qr", str(small), BOB_PASSPHRASE="4352-alpha-abandon")
        try:
            assert sender.wait_for(r"^No relay").string == (
                "No relay took the offer (the relay at 10.78.0.9:9101 did not answer in 1 s):"
                " the receiver finds this computer on the LAN (nameplate 4352 advertised)"
            )
            out = tmp_path / "again"
            out.mkdir()
            code, got = finish(lan.bob("b", "recv", "--yes", "-o", str(out), "4352-alpha-abandon"))
            assert code == 0, got
            assert re.fullmatch(
                r"Not met at the relay at 10\.78\.0\.9:9101 \(the relay at 10\.78\.0\.9:9101 did"
                r" not answer in 1 s\); trying the sender announced at 10\.78\.0\.1:\d+",
                got[0],
            ), got
            assert got[1].startswith("Found the sender on the LAN at 10.78.0.1:"), got
            assert finish(sender)[0] == 0
        finally:
            sender.stop()
        assert (out / "notes.txt").read_text() == "the schedule\n"


# The event's nameserver, as `retreatkit up` runs it (and a --record for the relay's name).
NAMESERVER = (
    "-m", "retreatkit.cli.main", "nameserver", "--listen", "0.0.0.0:53",
    "--admin", "127.0.0.1:0", "--upstream", "127.0.0.1:9",
)  # fmt: skip


def test_relays_announced_never_push_out_the_one_the_events_nameserver_names(
    lan: Lan, payload: Path, tmp_path: Path
) -> None:
    """The event's nameserver names relay.retreat.lan, as `retreatkit up` does, and the
    neighbour announces a tarpit at each of four addresses before the real relay's:
    bob took only announced relays once any was heard, at most four, so never the real
    one. Now the relay the nameserver names is tried first, beside the others: the
    sender holds its nameplate there, and the receiver meets it there without trying any
    of the neighbour's."""
    server = lan.run("r", *NAMESERVER, "--record", f"relay.retreat.lan={REAL}")
    try:
        server.wait_for(r"^Admin on ")
        for host in ("a", "b"):
            (NETNS / lan.hosts[host] / "resolv.conf").write_text(f"nameserver {lan.address['r']}\n")
        addresses = [f"10.78.0.{n}" for n in range(9, 13)]
        with neighbour(lan, addresses, [9000]) as tarpits:
            relay = real_relay(lan)
            try:
                said, got = transfer(
                    lan, payload, tmp_path / "out", "4353-alpha-abandon", "--no-qr"
                )
            finally:
                relay.stop()
            places = [f"{address}:9000" for address in addresses]
            seen = tried(lan, tarpits, places)
            assert lan.address["b"] not in seen, seen  # the receiver tried none of them
            assert sorted(seen[lan.address["a"]]) == sorted(places)  # the sender asked each once
            assert said[1] == f"Using the relay at {REAL}:9000 (relay.retreat.lan)", said
            assert got[0] == f"Using the relay at {REAL}:9000 (relay.retreat.lan)", got
            assert (tmp_path / "out" / "image.bin").read_bytes() == payload.read_bytes()
    finally:
        server.stop()
