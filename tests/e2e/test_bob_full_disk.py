"""`bob recv` onto a disk that fills up, with real processes on a tmpfs this test mounts
(root only): the disk filled by someone else after the question, mid-file or before the
record of where things go could be written; an offer of many small files whose blocks do
not fit. One line, exit 1, the sender told; what arrived kept, and the same two commands
again, once there is room, resume from it."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from retreatkit.testing import Process, RelayProcess, bob_argv, scratch_disk

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="a full disk needs a tmpfs mount (root)"),
]
TIMEOUT = 60.0
MIB = 1 << 20
KEPT_FULL = (
    "What arrived is kept: free space on that disk, then ask the sender to run the same"
    " bob send again, and receive it into the same folder to resume."
)
TOLD = "ERROR: the other side says: the receiver's disk is full"


@pytest.fixture
def disk() -> Iterator[Path]:
    with scratch_disk("8m") as folder:
        yield folder


def bob(home: dict[str, str], *args: str, stdin: int = subprocess.DEVNULL, **env: str) -> Process:
    return Process.start(bob_argv(*args), env={**home, **env}, stdin=stdin)


def finished(proc: Process) -> tuple[int, list[str]]:
    code, lines = proc.finish(TIMEOUT)
    assert not any("Traceback" in line for line in lines), lines
    return code, lines


def fill(disk: Path, leave: int) -> None:
    """Someone else's file takes all but `leave` bytes of the disk."""
    st = os.statvfs(disk)
    (disk / "filler").write_bytes(bytes(max(0, st.f_bavail * st.f_frsize - leave)))


def filled_at_the_question(
    relay: RelayProcess, home: dict[str, str], disk: Path, src: Path, code: str, leave: int
) -> tuple[tuple[int, list[str]], tuple[int, list[str]]]:
    """A send and a receive whose disk fills while its user reads the offer (after the
    space check, before the yes); their exit codes and lines."""
    via = ("--relay", relay.address, "--no-direct")
    sender = bob(home, "send", *via, str(src), BOB_PASSPHRASE=code)
    sender.wait_for(r"^Passphrase: ")
    receiver = bob(home, "recv", *via, "-o", str(disk), code, stdin=subprocess.PIPE)
    receiver.wait_for(rf"^  {src.name}")
    fill(disk, leave)
    assert receiver.popen.stdin is not None
    receiver.popen.stdin.write(b"y\n")
    receiver.popen.stdin.close()
    return finished(receiver), finished(sender)


def test_a_disk_that_fills_mid_file_keeps_what_arrived_and_resumes_once_freed(
    relay: RelayProcess, home: dict[str, str], disk: Path, tmp_path: Path
) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(4 * MIB))
    code = "5252-alpha-abandon"
    (status, said), (sent, told) = filled_at_the_question(relay, home, disk, src, code, MIB)
    full = f"ERROR: cannot write big.bin: the disk of {disk} is full (No space left on device)"
    assert (status, said[-2:]) == (1, [KEPT_FULL, full]), said
    assert (sent, told[-1]) == (1, TOLD), told
    part, record, filler = sorted(p.name for p in disk.iterdir())  # and nothing else
    key = re.fullmatch(r"\.bob-([0-9a-f]{32})\.resume", record)
    assert key and (part, filler) == (f".bob-{key[1][:16]}-0.part", "filler")
    held = (disk / part).stat().st_size
    assert 0 < held < src.stat().st_size
    assert not list(Path(home["HOME"]).rglob("*"))  # nothing outside the output folder

    (disk / "filler").unlink()  # room again: the same two commands resume
    sender = bob(home, "send", "--relay", relay.address, str(src), BOB_PASSPHRASE=code)
    sender.wait_for(r"^Passphrase: ")
    receiver = bob(home, "recv", "--relay", relay.address, "--yes", "-o", str(disk), code)
    status, said = finished(receiver)
    assert status == 0 and any(
        re.fullmatch(r"Resuming big\.bin from [\d.]+ [kM]B \([\d.]+ [kM]B already here\)", line)
        for line in said
    ), said
    assert finished(sender)[0] == 0
    assert (disk / "big.bin").read_bytes() == src.read_bytes()
    assert sorted(p.name for p in disk.iterdir()) == ["big.bin"]


def test_a_disk_too_full_for_the_resume_record_leaves_nothing(
    relay: RelayProcess, home: dict[str, str], disk: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "fold"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"a" * 1000)
    (status, said), (sent, told) = filled_at_the_question(
        relay, home, disk, folder, "5353-alpha-abandon", 0
    )
    assert status == 1 and re.fullmatch(
        rf"ERROR: cannot write \.bob-[0-9a-f]{{32}}\.resume: the disk of {disk} is full"
        r" \(No space left on device\)",
        said[-1],
    ), said
    assert KEPT_FULL not in said
    assert (sent, told[-1]) == (1, TOLD), told
    assert [p.name for p in disk.iterdir()] == ["filler"]  # its folder gone, no record


def test_many_small_files_that_fit_in_bytes_but_not_in_blocks_are_refused_at_once(
    relay: RelayProcess, home: dict[str, str], disk: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(2100):  # 210 kB, and 8.6 MB in 4 KiB blocks: more than the disk
        (folder / f"{i:04}.txt").write_bytes(b"x" * 100)
    sender = bob(home, "send", "--relay", relay.address, str(folder))
    passphrase = sender.wait_for(r"^Passphrase: (\S+)")[1]
    receiver = bob(home, "recv", "--relay", relay.address, "--yes", "-o", str(disk), passphrase)
    status, said = finished(receiver)
    assert status == 1 and re.fullmatch(
        rf"ERROR: not enough space in {disk}: 210 kB offered \(8\.6 MB on that disk\),"
        r" [\d.]+ MB free",
        said[-1],
    ), said
    assert finished(sender)[1][-1] == (
        "ERROR: the other side says: the receiver has not enough free space"
    )
    assert list(disk.iterdir()) == []
