"""Resume and several receivers, with real processes through a real relay that counts the
bytes it forwards: a receiver killed halfway through 256 MiB, then the same two commands
again; a relay killed, and a receiver paused until the sender gave up, then the same
again; `--count 3` with three receivers; a wrong passphrase that closes the offer, last
or first."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from retreatkit.testing import Process, RelayProcess, bob_argv, start_relay
from retreatkit.transfer.codes import Code
from retreatkit.transfer.machine import Aborted, Done
from retreatkit.transfer.offer import Entry, Offer
from retreatkit.transfer.records import RECORD_SIZE
from retreatkit.transfer.testing import Peer

pytestmark = pytest.mark.e2e
TIMEOUT = 60.0
MIB = 1 << 20


def bob(home: dict[str, str], *args: str, **env: str) -> Process:
    return Process.start(bob_argv(*args), env={**home, **env})


def transfers(relay: RelayProcess) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{relay.admin}/relay/transfers", timeout=10) as response:
        doc: dict[str, list[dict[str, Any]]] = json.load(response)
    return doc["recent"]


def recv_once(
    relay: RelayProcess, home: dict[str, str], out: Path, code: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*bob_argv("recv", "--relay", relay.address, "--yes", "-o", str(out)), code],
        capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ, **home},
    )  # fmt: skip


def finish(proc: Process) -> tuple[int, list[str]]:
    code, lines = proc.finish(TIMEOUT)
    assert not any("Traceback" in line for line in lines), lines
    return code, lines


def part_size(folder: Path) -> int:
    size = 0
    for path in folder.glob(".bob-*.part"):
        with contextlib.suppress(FileNotFoundError):
            size = max(size, path.stat().st_size)
    return size


def test_a_receiver_killed_halfway_resumes_and_less_than_half_crosses_again(
    relay: RelayProcess, home: dict[str, str], tmp_path: Path
) -> None:
    src = tmp_path / "image.bin"
    with src.open("wb") as f:
        for _ in range(256):
            f.write(os.urandom(MIB))
    out = tmp_path / "out"
    out.mkdir()
    code = "5151-alpha-abandon"
    path = ("--relay", relay.address, "--no-direct")  # through the relay, which counts
    sender = bob(home, "send", *path, str(src), BOB_PASSPHRASE=code)
    sender.wait_for(r"^Passphrase: ")
    receiver = bob(home, "recv", *path, "--yes", "-o", str(out), code)
    deadline = time.monotonic() + TIMEOUT
    while part_size(out) < 136 * MIB:  # past half: watched in bytes, not in time
        assert receiver.popen.poll() is None and time.monotonic() < deadline, receiver.seen
        select.select([], [], [], 0.005)
    receiver.popen.send_signal(signal.SIGKILL)
    receiver.stop()
    held = part_size(out)
    status, said = finish(sender)
    assert status == 1, said
    first = transfers(relay)[0]["bytes"]

    sender = bob(home, "send", *path, str(src), BOB_PASSPHRASE=code)
    sender.wait_for(r"^Passphrase: ")
    again = subprocess.run(
        [*bob_argv("recv", *path, "--yes", "-o", str(out)), code],
        capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ, **home},
    )  # fmt: skip
    status, said = finish(sender)
    assert (status, again.returncode) == (0, 0), (said, again.stderr)
    lines = again.stderr.splitlines()
    shown = f"{held / 1e6:.1f} MB"
    assert f"Resuming image.bin from {shown} ({shown} already here)" in lines
    second = transfers(relay)[0]["bytes"]
    assert first >= held and second < 128 * MIB  # fewer than half the bytes crossed again
    assert (out / "image.bin").read_bytes() == src.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["image.bin"]  # no part, no record left


KEPT = (
    "The partial files are kept: to resume, ask the sender to run the same bob send again,"
    " and receive it into the same folder."
)
CUT = (  # where the connection ended, as the receiver saw it: never the sender's fault
    "ERROR: the connection ended in the middle of a record",
    "ERROR: the other side closed the connection",
    "ERROR: the connection broke: Connection reset by peer",
)


STOPPED_READING = "ERROR: the other side stopped reading: nothing went out for 1 s"


def midway(
    relay: RelayProcess, home: dict[str, str], tmp_path: Path, *sending: str, mib: int = 64
) -> tuple[Path, Path, Process, Process]:
    """A send of `mib` MiB through the relay, and its receiver once 8 MiB are in its part."""
    src = tmp_path / "big.bin"
    with src.open("wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    path = ("--relay", relay.address, "--no-direct")
    sender = bob(home, "send", *path, *sending, str(src), BOB_PASSPHRASE="5152-alpha-abandon")
    sender.wait_for(r"^Passphrase: ")
    receiver = bob(home, "recv", *path, "--yes", "-o", str(out), "5152-alpha-abandon")
    deadline = time.monotonic() + TIMEOUT
    while part_size(out) < 8 * MIB:  # watched in bytes, not in time
        assert receiver.popen.poll() is None and time.monotonic() < deadline, receiver.seen
        select.select([], [], [], 0.005)
    return src, out, sender, receiver


def resumes(relay: RelayProcess, home: dict[str, str], src: Path, out: Path) -> None:
    """The same send and receive again: the receiver resumes from its part."""
    held = part_size(out)
    assert held >= 8 * MIB and len(list(out.glob(".bob-*.resume"))) == 1
    path = ("--relay", relay.address, "--no-direct")
    sender = bob(home, "send", *path, str(src), BOB_PASSPHRASE="5152-alpha-abandon")
    sender.wait_for(r"^Passphrase: ")
    again = bob(home, "recv", *path, "--yes", "-o", str(out), "5152-alpha-abandon")
    assert [finish(again)[0], finish(sender)[0]] == [0, 0], again.seen
    shown = f"{held / 1e6:.1f} MB"
    assert f"Resuming big.bin from {shown} ({shown} already here)" in again.seen
    assert (out / "big.bin").read_bytes() == src.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["big.bin"]


def test_a_relay_killed_mid_transfer_leaves_the_part_and_the_transfer_resumes(
    relay: RelayProcess, home: dict[str, str], tmp_path: Path
) -> None:
    dying = start_relay()
    try:
        src, out, sender, receiver = midway(dying, home, tmp_path)
        dying.process.popen.kill()
        status, said = finish(receiver)
        assert status == 1 and said[-2] == KEPT and said[-1] in CUT, said
        assert finish(sender)[0] == 1
    finally:
        dying.stop()
    resumes(relay, home, src, out)


def test_ctrl_c_on_a_receive_then_the_same_send_and_receive_resume(
    relay: RelayProcess, home: dict[str, str], tmp_path: Path
) -> None:
    # the user stops a long receive by hand; what arrived stays and the rest travels later
    src, out, sender, receiver = midway(relay, home, tmp_path)
    receiver.popen.send_signal(signal.SIGINT)
    try:
        status, said = finish(receiver)
        assert (status, said[-2:]) == (130, [KEPT, "ERROR: interrupted"]), said
        assert finish(sender)[0] == 1
    finally:
        sender.stop()
    resumes(relay, home, src, out)


def test_a_part_that_does_not_match_is_received_again_and_said_so(
    relay: RelayProcess, home: dict[str, str], tmp_path: Path
) -> None:
    """A receiver killed, its part then changed in its first block: the same two commands
    again receive the file whole, and say so in one line (nothing of the part was kept)."""
    src, out, sender, receiver = midway(relay, home, tmp_path)
    receiver.popen.send_signal(signal.SIGKILL)
    try:
        assert finish(receiver)[0] == -signal.SIGKILL
        assert finish(sender)[0] == 1
    finally:
        sender.stop()
    (part,) = out.glob(".bob-*.part")
    with part.open("r+b") as f:
        f.write(b"not what the sender has")
    path = ("--relay", relay.address, "--no-direct")
    sender = bob(home, "send", *path, str(src), BOB_PASSPHRASE="5152-alpha-abandon")
    sender.wait_for(r"^Passphrase: ")
    again = bob(home, "recv", *path, "--yes", "-o", str(out), "5152-alpha-abandon")
    assert [finish(again)[0], finish(sender)[0]] == [0, 0], again.seen
    said = "The partial big.bin does not match what is offered: receiving all of it again"
    assert said in again.seen and not any("Resuming" in line for line in again.seen)
    assert (out / "big.bin").read_bytes() == src.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["big.bin"]


def test_a_receiver_paused_until_the_sender_gave_up_resumes(
    relay: RelayProcess, home: dict[str, str], tmp_path: Path
) -> None:
    # a closed laptop lid, or Ctrl-Z: the sender gives up; the receiver, back, resumes.
    # 160 MiB: more than the sockets on the way, the relay's pipe and the receiver's own
    # buffers hold, so the sender is still sending when the receiver stops, however late
    # the stop comes after the part passed 8 MiB
    src, out, sender, receiver = midway(relay, home, tmp_path, "--timeout", "1", mib=160)
    receiver.popen.send_signal(signal.SIGSTOP)
    try:
        sent = finish(sender)
    finally:
        receiver.popen.send_signal(signal.SIGCONT)
    try:
        assert sent[0] == 1 and sent[1][-1] == STOPPED_READING, sent
        status, said = finish(receiver)
    finally:
        sender.stop()
        receiver.stop()
    assert status == 1 and said[-2] == KEPT and said[-1] in CUT[:2], said
    resumes(relay, home, src, out)


def test_ctrl_c_mid_folder_keeps_what_arrived_to_resume(
    relay: RelayProcess, home: dict[str, str], tmp_path: Path
) -> None:
    # the half folder stays with its record, so the same send and receive again resume
    # into 'fold/' (not 'fold (1)/' beside it); the sender is told the receiver stopped
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("here before\n")
    offer = Offer(
        entries=(
            Entry(("fold",), is_dir=True),
            Entry(("fold", "a.sh"), size=2, executable=True),
            Entry(("fold", "sub"), is_dir=True),
            Entry(("fold", "sub", "b.bin"), size=MIB),
        )
    )
    code = Code("5153", ("alpha", "abandon"))
    peer = Peer((relay.host, relay.port), code)
    assert peer.line() == b"ok 5153\n"
    receiver = bob(home, "recv", "--relay", relay.address, "--yes", "-o", str(out), str(code))
    try:
        assert peer.line().startswith(b"paired ")
        peer.handshake()
        assert peer.offer(offer)
        sent = peer.session
        peer.sock.sendall(sent.send_data(b"#!") + sent.end_file() + sent.send_data(b"half"))
        deadline = time.monotonic() + TIMEOUT
        while part_size(out / "fold" / "sub") < 4:  # a.sh saved, b.bin under way
            assert receiver.popen.poll() is None and time.monotonic() < deadline, receiver.seen
            select.select([], [], [], 0.005)
        receiver.popen.send_signal(signal.SIGINT)
        status, said = finish(receiver)
        told = peer.event()
    finally:
        peer.close()
        receiver.stop()
    assert (status, said[-2:]) == (130, [KEPT, "ERROR: interrupted"])
    assert told == Aborted("the receiver stopped the transfer")
    names = sorted(p.name for p in out.iterdir())
    assert names[1:] == ["fold", "mine.txt"] and re.fullmatch(r"\.bob-[0-9a-f]+\.resume", names[0])
    assert (out / "fold" / "a.sh").read_bytes() == b"#!"
    [part] = (out / "fold" / "sub").iterdir()
    assert re.fullmatch(r"\.bob-[0-9a-f]+-\d+\.part", part.name) and part.read_bytes() == b"half"


def test_two_receives_into_one_folder_at_once_each_keep_their_file(
    relay: RelayProcess, home: dict[str, str], tmp_path: Path
) -> None:
    # both are asked while big.bin is free; the one that finishes second finds it taken
    out = tmp_path / "out"
    out.mkdir()
    data = os.urandom(MIB)
    offer = Offer(entries=(Entry(("big.bin",), size=len(data)),))
    peers, receivers = [], []
    try:
        for nameplate in ("5161", "5162"):
            code = Code(nameplate, ("alpha", "abandon"))
            peers.append(peer := Peer((relay.host, relay.port), code))
            assert peer.line() == f"ok {nameplate}\n".encode()
            receivers.append(
                bob(home, "recv", "--relay", relay.address, "--yes", "-o", str(out), str(code))
            )
            assert peer.line().startswith(b"paired ")
            peer.handshake()
        for peer in peers:
            assert peer.offer(offer)  # answered: both receivers chose big.bin
        said = []
        for peer, receiver in zip(peers, receivers, strict=True):
            session = peer.session
            for at in range(0, len(data), RECORD_SIZE):
                peer.sock.sendall(session.send_data(data[at : at + RECORD_SIZE]))
            peer.sock.sendall(session.end_file() + session.end())
            assert peer.event() == Done()
            peer.close()
            status, lines = finish(receiver)
            assert status == 0, lines
            said.append(lines[-2:])
    finally:
        for peer in peers:
            peer.close()
        for receiver in receivers:
            receiver.stop()
    assert said[0][-1] == f"Received file written to: {out}/big.bin"
    assert said[1] == [
        "'big.bin' appeared meanwhile: saved as 'big (1).bin'",
        f"Received file written to: {out}/big (1).bin",
    ]
    assert (out / "big.bin").read_bytes() == (out / "big (1).bin").read_bytes() == data


def test_count_3_three_receivers_each_with_its_own_key_exchange(
    relay: RelayProcess, home: dict[str, str], tmp_path: Path
) -> None:
    src = tmp_path / "slides.pdf"
    src.write_bytes(os.urandom(3 * MIB))
    sender = bob(home, "send", "--relay", relay.address, "--count", "3", str(src))
    passphrase = sender.wait_for(r"^Passphrase: (\S+)$")[1]
    sender.wait_for(r"^It lets 3 receivers in; a wrong passphrase closes it\.$")
    outs = [tmp_path / f"out{i}" for i in range(3)]
    receivers = []
    for out in outs:
        out.mkdir()
        receivers.append(
            bob(home, "recv", "--relay", relay.address, "--yes", "-o", str(out), passphrase)
        )
    paths = []
    for receiver in receivers:
        code, lines = finish(receiver)
        assert code == 0, lines
        paths += [line.removeprefix("Path: ") for line in lines if line.startswith("Path: ")]
    status, said = finish(sender)
    assert status == 0, said
    assert said[-1] == "Sent to 3 receivers."
    assert sorted(line for line in said if line.endswith(": done")) == [
        f"Receiver {n} of 3: done" for n in (1, 2, 3)
    ]
    # each receiver's path, named on the sender's side too (direct or relay: a race)
    told = sorted(line for line in said if ": Path: " in line)
    assert [line.split(": Path: ")[0] for line in told] == [f"Receiver {n} of 3" for n in (1, 2, 3)]
    assert sorted(line.split(": Path: ")[1] for line in told) == sorted(paths)
    assert len(paths) == 3 and set(paths) <= {"direct", "relay"}
    for out in outs:
        assert (out / "slides.pdf").read_bytes() == src.read_bytes()
    assert relay.status()["relay"]["transfers_completed"] == 3


@pytest.mark.parametrize(("served", "count"), [(3, 4), (0, 3)])
def test_a_wrong_passphrase_closes_the_offer(
    relay: RelayProcess, home: dict[str, str], tmp_path: Path, served: int, count: int
) -> None:
    # (0, 3): the failed key exchange closes the offer while the sender waits on the
    # relay for the next receivers; that wait ends too, and no connection stays
    src = tmp_path / "notes.txt"
    src.write_text("for the three of you\n")
    sender = bob(home, "send", "--relay", relay.address, "--count", str(count), str(src))
    passphrase = sender.wait_for(r"^Passphrase: (\S+)$")[1]
    nameplate = passphrase.split("-")[0]
    for i in range(served):
        out = tmp_path / f"out{i}"
        out.mkdir()
        got = recv_once(relay, home, out, passphrase)
        assert got.returncode == 0, got.stderr
        assert (out / "notes.txt").read_text() == "for the three of you\n"
    wrong = recv_once(relay, home, tmp_path, f"{nameplate}-wrong-guess")
    assert wrong.returncode == 1
    assert wrong.stderr.splitlines()[-1] == (
        "ERROR: wrong passphrase: the other side used a different one."
        " The passphrase is used up: ask the sender to start a new bob send"
    )
    status, said = finish(sender)
    assert status == 1
    assert said[-2:] == [
        f"Receiver {served + 1} of {count}: ERROR: wrong passphrase: the other side used a"
        " different one",
        f"ERROR: wrong passphrase from a receiver: the offer is closed after {served} of {count}."
        " The passphrase is used up: start a new bob send",
    ]
    # the right passphrase no longer finds anyone: one guess, and the offer is gone
    late = recv_once(relay, home, tmp_path, passphrase)
    assert late.returncode == 1
    assert late.stderr == (
        f"ERROR: the relay at {relay.address} says: no sender is waiting on nameplate {nameplate}\n"
    )


def test_count_9_at_a_relay_with_room_for_one_pair(home: dict[str, str], tmp_path: Path) -> None:
    """`--count 9` holds 8 places at the relay and tops them up as receivers come. At a
    relay at its pairs limit (`pairs = 1`), the top-up after the first pairing is refused
    (`busy`): the receiver just paired is served all the same (the refusal ended the
    offer, that receiver with it), and the next one too."""
    toml = tmp_path / "retreat.toml"
    toml.write_text("[relay]\npairs = 1\n")
    relay = start_relay(toml)
    sender = None
    try:
        src = tmp_path / "slides.pdf"
        src.write_bytes(os.urandom(MIB))
        sender = bob(home, "send", "--relay", relay.address, "--no-direct", "--count", "9",
                     str(src))  # fmt: skip
        passphrase = sender.wait_for(r"^Passphrase: (\S+)$")[1]
        for i in range(2):
            out = tmp_path / f"out{i}"
            out.mkdir()
            got = recv_once(relay, home, out, passphrase)
            assert got.returncode == 0, got.stderr
            assert (out / "slides.pdf").read_bytes() == src.read_bytes()
            sender.wait_for(rf"^Receiver {i + 1} of 9: done$")
        assert not [line for line in sender.seen if "ERROR" in line]
    finally:
        if sender is not None:
            sender.stop()
        relay.stop()
