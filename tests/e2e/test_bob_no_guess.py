"""What is a guess at the passphrase, with real bob processes: only a well-formed key
exchange message whose confirmation then fails. A false relay on the LAN that pairs and
then sends junk, a malformed message, nothing, or closes, made no guess: the receiver
goes on to its next way to the sender (after 10 s at most). A neighbour that joins a
sender with `--count N` and does the same is no receiver: its place goes to the next.
Relays that do play the key exchange get one guess between them, however many there
are."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from retreatkit.testing import Process, RelayProcess, bob_argv
from tests.e2e.test_bob_lan import PREFIX, Lan, ip, namespace, plug, remove_namespaces

pytestmark = pytest.mark.e2e
TIMEOUT = 60.0
LAN = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="network namespaces need root and iproute2 (ip)",
)
NO_GUESS = "no guess at the passphrase was made"
USED_UP = " The passphrase is used up: ask the sender to start a new bob send"


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[Lan]:
    """a (10.78.0.1) sends, b (10.78.0.2) receives, r (10.78.0.3, and 10.78.0.4) is a
    neighbour that announces relays of its own."""
    prefix = f"{PREFIX}-{secrets.token_hex(3)}"
    names = {"a": f"{prefix}-a", "b": f"{prefix}-b", "r": f"{prefix}-r"}
    address = {"a": "10.78.0.1", "b": "10.78.0.2", "r": "10.78.0.3"}
    made: list[str] = []
    try:
        for ns in (f"{prefix}-sw", *names.values()):
            namespace(ns, made)
        ip("-n", f"{prefix}-sw", "link", "add", "br0", "type", "bridge")
        ip("-n", f"{prefix}-sw", "link", "set", "br0", "up")
        home = tmp_path / "home"
        home.mkdir()
        made_lan = Lan(prefix, names, address, home)
        for host in names:
            plug(made_lan, host)
        ip("-n", names["r"], "addr", "add", "10.78.0.4/24", "dev", "eth0")
        yield made_lan
    finally:
        remove_namespaces(made)


def finish(proc: Process) -> tuple[int, list[str]]:
    code, lines = proc.finish(TIMEOUT)
    assert not any("Traceback" in line for line in lines), lines
    return code, lines


# Relays announced on the LAN at each address given (argv: MODE ADDRESS...), each saying
# `busy` to a sender (which then waits on the LAN itself) and `paired` to a receiver,
# then, by MODE: `junk` a frame that is no PAKE; `side` a PAKE message with the
# receiver's own side byte; `point` one whose point is the identity; `close` reads the
# receiver's PAKE message and closes; `silent` says nothing more; `wrong` plays the key
# exchange with other words; `quiet` plays it until it holds the receiver's CONFIRM, then
# closes. To `status`, once every connection taken before it has ended, it answers how
# many of them got a receiver's CONFIRM: the guesses it could check.
HOSTILE = """
import asyncio, sys
from retreatkit import mdns
from retreatkit.transfer import records
from retreatkit.transfer.codes import Code
from retreatkit.transfer.machine import Session
from retreatkit.transfer.pake import Side
from retreatkit.transfer.records import Kind
mdns.host_label = lambda: "hostile"
mode, addresses = sys.argv[1], sys.argv[2:]
taken = []  # each connection's end, in the order they were taken
confirms = 0

async def frame(reader):
    head = await reader.readexactly(4)
    return head[0], head + await reader.readexactly(int.from_bytes(head[1:], "big"))

async def serve(reader, writer):
    global confirms
    ended = asyncio.get_running_loop().create_future()
    before = list(taken)
    taken.append(ended)
    try:
        line = await reader.readline()
        if line == b"status\\n":
            await asyncio.gather(*before)
            writer.write(f"{confirms}\\n".encode())
            return
        if line.startswith(b"bob/1 send"):
            writer.write(b"busy the relay is full; try again later\\n")
            return
        writer.write(b"paired 10.78.0.9:1\\n")
        if mode == "junk":
            writer.write(b"\\x00\\x00\\x00\\x04junk")
        elif mode == "side":
            writer.write(records.frame(Kind.PAKE, b"B" + bytes(range(32))))
        elif mode == "point":
            writer.write(records.frame(Kind.PAKE, b"A\\x01" + bytes(31)))
        elif mode == "close":
            await frame(reader)
            return
        elif mode in ("wrong", "quiet"):
            nameplate = line.split()[2].decode()
            session = Session(Side.SENDER, Code(nameplate, ("wrong", "guess")))
            writer.write(session.start())
            kind, theirs = await frame(reader)
            session.receive_data(theirs)
            session.next_event()
            if mode == "wrong":
                writer.write(session.data_to_send())
        while True:
            kind, _ = await frame(reader)
            if kind == Kind.CONFIRM:
                confirms += 1
                if mode == "quiet":
                    return
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
        ended.set_result(None)

async def main():
    for address in addresses:
        await asyncio.start_server(serve, address, 9000)
        await mdns.advertise(mdns.RELAY, f"hostile relay {address}", [address], 9000,
                             {"kind": "relay"}, probe=False)
    print("announced", flush=True, file=sys.stderr)
    await asyncio.Event().wait()

asyncio.run(main())
"""

# Asks each hostile relay (argv: its addresses) for its `status`: the most it answers.
STATUS = """
import socket, sys
said = []
for address in sys.argv[1:]:
    with socket.create_connection((address, 9000), timeout=30) as sock:
        sock.sendall(b"status\\n")
        said.append(int(sock.makefile().readline()))
print("confirms", max(said), flush=True, file=sys.stderr)
"""


@LAN
@pytest.mark.parametrize(
    ("mode", "what"),
    [
        ("junk", "the other side is not speaking bob/1"),
        ("side", "the other side sent a malformed key exchange message"),
        ("point", "the other side sent a malformed key exchange message"),
        ("close", "the other side closed the connection before its key exchange"),
        ("silent", "the other side sent no key exchange message in 10 s"),
    ],
)
def test_a_false_relay_whose_pair_makes_no_key_exchange_is_passed_by(
    lan: Lan, tmp_path: Path, mode: str, what: str
) -> None:
    """The receiver tries the relay announced on the LAN first. What it is paired with
    there sends no well-formed key exchange message (or none within 10 s, however long
    --timeout is): no guess was made, so the receiver says what that relay did and goes
    on to the sender, which waits on the LAN itself, and the file arrives."""
    src = tmp_path / "notes.txt"
    src.write_text("for you\n")
    out = tmp_path / "out"
    out.mkdir()
    hostile = lan.run("r", "-c", HOSTILE, mode, "10.78.0.4")
    sender = receiver = None
    try:
        hostile.wait_for(r"^announced$")
        sender = lan.bob("a", "send", "--no-qr", str(src), BOB_PASSPHRASE="4411-alpha-abandon")
        sender.wait_for(r"\(nameplate 4411 advertised\)$")
        receiver = lan.bob(
            "b", "recv", "--timeout", "600", "--yes", "-o", str(out), "4411-alpha-abandon"
        )
        code, got = finish(receiver)
        assert code == 0, got
        port = re.fullmatch(r"Found the sender on the LAN at 10\.78\.0\.1:(\d+)", got[1])
        assert port is not None, got
        assert got[0] == (
            f"Not met at the relay at 10.78.0.4:9000 ({what}; {NO_GUESS}); trying the sender"
            f" announced at 10.78.0.1:{port[1]}"
        )
        assert finish(sender)[0] == 0
        assert (out / "notes.txt").read_text() == "for you\n"
    finally:
        for proc in (hostile, sender, receiver):
            if proc is not None:
                proc.stop()


@LAN
@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("wrong", "wrong passphrase: the other side used a different one"),
        ("quiet", "the sender's key exchange did not finish: the other side closed the connection"),
    ],
)
def test_relays_that_play_the_key_exchange_get_one_guess_between_them(
    lan: Lan, tmp_path: Path, mode: str, error: str
) -> None:
    """Two relays announced, both playing the key exchange with other words: the first
    to pair gets the receiver's CONFIRM (its one guess), whether it answers with a wrong
    one or goes away with it, and that ends the search: the other never gets one."""
    hostile = lan.run("r", "-c", HOSTILE, mode, "10.78.0.3", "10.78.0.4")
    try:
        hostile.wait_for(r"^announced$")
        out = tmp_path / "out"
        out.mkdir()
        code, got = finish(lan.bob("b", "recv", "--yes", "-o", str(out), "4412-alpha-abandon"))
        assert (code, got) == (1, [f"ERROR: {error}.{USED_UP}"])
        # the receiver is gone, and every connection it made to them with it
        status = finish(lan.run("r", "-c", STATUS, "10.78.0.3", "10.78.0.4"))
        assert status == (0, ["confirms 1"])
        assert list(out.iterdir()) == []
    finally:
        hostile.stop()


def bare_join(relay: RelayProcess, nameplate: str, silent: bool = False) -> socket.socket:
    """Join the sender on `nameplate` as a receiver would, and make no key exchange:
    end our side at once (reading what comes until the sender closes), or, `silent`,
    say nothing and hold the connection."""
    sock = socket.create_connection((relay.host, relay.port), timeout=TIMEOUT)
    sock.sendall(f"bob/1 recv {nameplate}\n".encode())
    assert sock.recv(1) == b"p"  # `paired`, read no further
    if not silent:
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass
    return sock


def receive(relay: RelayProcess, passphrase: str, out: Path, home: dict[str, str]) -> Path:
    """`bob recv` through `relay` into the new folder `out`, which it returns; it must
    succeed."""
    out.mkdir()
    got = subprocess.run(
        [*bob_argv("recv", "--relay", relay.address, "--yes", "-o", str(out)), passphrase],
        capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ, **home},
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    return out


def test_count_joiners_that_make_no_key_exchange_are_no_receivers(
    relay: RelayProcess, home: dict[str, str], tmp_path: Path
) -> None:
    """`--count 2` at a relay: three connections join and end without a key exchange,
    a fourth joins and says nothing. None is a receiver, each is said, and its place goes
    to the next to join: the silent one holds none of the key exchanges up (the first
    receiver gets the file while it waits), and gives its place up after 10 s."""
    src = tmp_path / "slides.pdf"
    src.write_bytes(os.urandom(1 << 20))
    sender = Process.start(
        bob_argv("send", "--relay", relay.address, "--count", "2", str(src)), env=home
    )
    silent = None
    try:
        passphrase = sender.wait_for(r"^Passphrase: (\S+)$")[1]
        nameplate = passphrase.split("-")[0]
        for _ in range(3):
            with bare_join(relay, nameplate) as sock:
                port = sock.getsockname()[1]
            sender.wait_for(
                rf"^Not counted as a receiver: 127\.0\.0\.1:{port} \(the other side closed the"
                rf" connection before its key exchange; {NO_GUESS}\)$"
            )
        silent = bare_join(relay, nameplate, silent=True)
        for n in range(2):
            out = receive(relay, passphrase, tmp_path / f"out{n}", home)
            assert (out / "slides.pdf").read_bytes() == src.read_bytes()
            sender.wait_for(rf"^Receiver {n + 1} of 2: done$")
            if n == 0:  # both places were taken: the silent one's comes free
                port = silent.getsockname()[1]
                sender.wait_for(
                    rf"^Not counted as a receiver: 127\.0\.0\.1:{port} \(the other side sent no"
                    rf" key exchange message in 10 s; {NO_GUESS}\)$"
                )
        status, said = finish(sender)
        assert status == 0, said
        assert said[-1] == "Sent to 2 receivers."
        assert not [line for line in said if "ERROR" in line]
    finally:
        if silent is not None:
            silent.close()
        sender.stop()


def test_count_joiners_whose_first_frame_is_too_long_are_no_receivers(
    relay: RelayProcess, home: dict[str, str], tmp_path: Path
) -> None:
    """`--count 2` at a relay: two joiners each send a frame header claiming 16 MiB where a
    key exchange message should come. Neither is a receiver: each is said and gives its
    place up, and the two real receivers after them get the file (the sender had kept
    both places for ever, waiting on them)."""
    src = tmp_path / "notes.txt"
    src.write_bytes(os.urandom(1000))
    sender = Process.start(
        bob_argv("send", "--relay", relay.address, "--count", "2", str(src)), env=home
    )
    try:
        passphrase = sender.wait_for(r"^Passphrase: (\S+)$")[1]
        nameplate = passphrase.split("-")[0]
        for _ in range(2):
            with bare_join(relay, nameplate, silent=True) as sock:
                port = sock.getsockname()[1]
                sock.sendall(struct.pack(">I", (1 << 24) | 0xFFFFFF))
                sender.wait_for(
                    rf"^Not counted as a receiver: 127\.0\.0\.1:{port} \(the peer sent a"
                    rf" 16777215-byte record \(limit \d+\); {NO_GUESS}\)$"
                )
        for n in range(2):
            out = receive(relay, passphrase, tmp_path / f"out{n}", home)
            assert (out / "notes.txt").read_bytes() == src.read_bytes()
        status, said = finish(sender)
        assert status == 0, said
        assert said[-1] == "Sent to 2 receivers."
        assert not [line for line in said if "ERROR" in line]
    finally:
        sender.stop()


# Find `bob sender N` on the LAN as any neighbour can, join it (argv: N, K) K times and
# end each at once, reading what comes until the sender closes; each join's own port.
JOINS = """
import asyncio, socket, sys
from retreatkit import mdns
nameplate, times = sys.argv[1], int(sys.argv[2])
found = asyncio.run(mdns.browse(mdns.RELAY, 10, stop=lambda f: any(
    x.properties.get("nameplate") == nameplate for x in f)))
sender = next(f for f in found if f.properties.get("nameplate") == nameplate)
for _ in range(times):
    sock = socket.create_connection((sender.addresses[0], sender.port), timeout=30)
    sock.sendall(f"bob/1 recv {nameplate}\\n".encode())
    assert sock.recv(1) == b"p"
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(4096):
        pass
    print("joined from", sock.getsockname()[1], flush=True, file=sys.stderr)
"""


@LAN
def test_count_on_the_lan_neighbours_joining_without_a_key_exchange_are_no_receivers(
    lan: Lan, tmp_path: Path
) -> None:
    """`--count 2` with no relay: the sender waits on the LAN itself. A neighbour finds
    its announcement and joins three times without a key exchange; both receivers still
    get the file."""
    src = tmp_path / "notes.txt"
    src.write_text("for the two of you\n")
    sender = lan.bob("a", "send", "--no-qr", "--count", "2", str(src))
    try:
        nameplate = sender.wait_for(r"\(nameplate (\d+) advertised\)$")[1]
        passphrase = sender.wait_for(r"^Passphrase: (\S+)$")[1]
        code, joins = finish(lan.run("r", "-c", JOINS, nameplate, "3"))
        assert code == 0, joins
        for line in joins:
            port = line.removeprefix("joined from ")
            sender.wait_for(
                rf"^Not counted as a receiver: 10\.78\.0\.3:{port} \(the other side closed the"
                rf" connection before its key exchange; {NO_GUESS}\)$"
            )
        for n in range(2):
            out = tmp_path / f"out{n}"
            out.mkdir()
            code, got = finish(lan.bob("b", "recv", "--yes", "-o", str(out), passphrase))
            assert code == 0, got
            assert (out / "notes.txt").read_text() == "for the two of you\n"
        status, said = finish(sender)
        assert status == 0, said
        assert said[-1] == "Sent to 2 receivers."
    finally:
        sender.stop()
