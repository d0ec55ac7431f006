"""How a guest reaches the LAN: which network is chosen, what passt is asked, and how a
passt that cannot start is reported (a real passt, no qemu: it fails before a guest)."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import signal
import socket
import sys
from pathlib import Path

import pytest

from retreatkit.image import network, strays
from retreatkit.image.qemu import Forward
from retreatkit.testing import Process, fill, scratch_disk


def test_auto_takes_passt_where_it_is_installed_and_user_otherwise() -> None:
    assert network.choose("auto", found="/usr/bin/passt") == "passt"
    assert network.choose("auto", found="") == "user"
    assert network.choose("user", found="/usr/bin/passt") == "user"
    assert network.choose("passt", found="/usr/bin/passt") == "passt"


def test_a_network_that_cannot_be_had_is_refused_in_one_line() -> None:
    with pytest.raises(network.NetworkError) as missing:
        network.choose("passt", found="")
    assert str(missing.value) == (
        '[images] network = "passt" but passt is not installed (apt-get install passt)'
    )
    with pytest.raises(network.NetworkError) as unknown:
        network.choose("bridge")
    assert str(unknown.value) == "[images] network must be one of auto, passt, user, not 'bridge'"


def test_user_networking_says_how_to_keep_clients_addresses() -> None:
    assert network.describe("user", found="") == (
        "Network: qemu's user networking; every client arrives from 10.0.2.2"
        " (install passt to keep their addresses)"
    )
    # passt is there, and [images] network = "user" chose against it: installing it is
    # not what is missing
    assert network.describe("user", found="/usr/bin/passt") == (
        "Network: qemu's user networking; every client arrives from 10.0.2.2"
        ' (set [images] network = "auto" to keep their addresses)'
    )
    assert network.describe("passt") == "Network: passt; the guest sees each client's own address"


def test_passt_lays_out_the_guests_network_as_qemu_does_and_makes_the_forwards() -> None:
    forwards = [
        Forward("udp", "0.0.0.0", 5300, 53),
        Forward("tcp", "192.168.1.10", 5300, 53),
        Forward("tcp", "127.0.0.1", 41000, 8080),
    ]
    argv = network.passt_argv(Path("/tmp/x/passt.sock"), forwards, "nobody")
    assert argv[1:] == [
        "--foreground", "--one-off", "--ipv4-only", "--socket", "/tmp/x/passt.sock",
        "--address", "10.0.2.15", "--netmask", "24", "--gateway", "10.0.2.2",
        "--dns-forward", "10.0.2.3", "--no-dhcp", "--runas", "nobody",
        "--udp-ports", "5300:53",
        "--tcp-ports", "192.168.1.10/5300:53",
        "--tcp-ports", "127.0.0.1/41000:8080",
    ]  # fmt: skip


@pytest.mark.skipif(shutil.which("passt") is None, reason="passt is not installed (.ci/run does)")
async def test_a_port_already_taken_stops_passt_with_its_own_words(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        passt = network.Passt(tmp_path, [Forward("tcp", "127.0.0.1", port, 9000)])
        with pytest.raises(network.NetworkError) as failed:
            await passt.start()
    assert str(failed.value) == (
        f"passt ended at its start: Failed to bind any port for '-t 127.0.0.1/{port}:9000', exiting"
    )
    assert passt.folder is None  # its socket's folder went with it
    assert (tmp_path / "passt.log").exists()


@pytest.mark.skipif(shutil.which("passt") is None, reason="passt is not installed (.ci/run does)")
async def test_passt_ends_when_its_guest_leaves(tmp_path: Path) -> None:
    passt = network.Passt(tmp_path, [])
    sock = await passt.start()
    folder = sock.parent
    assert passt.process is not None
    if os.geteuid() == 0:  # passt gave up root for nobody, whose folder this is
        status = Path(f"/proc/{passt.process.pid}/status").read_text()
        uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        assert int(uid) == folder.stat().st_uid == pwd.getpwnam("nobody").pw_uid
    with socket.socket(socket.AF_UNIX) as guest:  # qemu's side, as qemu connects
        guest.setblocking(False)
        await asyncio.get_running_loop().sock_connect(guest, str(sock))
    assert await asyncio.wait_for(passt.process.wait(), 10) == 0  # --one-off
    await passt.close()
    assert not folder.exists()


# a supervisor that starts passt and is then killed before any qemu connects to it. passt
# still writes its banner after the line the supervisor waits for, and a write to a pipe
# nobody reads ends it (SIGPIPE, or its own exit on EPIPE); a supervisor killed in use has
# long heard all of it. A forked holder keeps the pipe's reading end open, as that one's
# quiet passt would not need: the passt left behind is then the one this test is about.
STARTS_PASST = """
import asyncio, os, signal, sys
from pathlib import Path
from retreatkit.image import network
from retreatkit.image.qemu import Forward

async def main():
    passt = network.Passt(Path(sys.argv[1]), [Forward("tcp", "127.0.0.1", int(sys.argv[2]), 9000)])
    await passt.start()
    holder = os.fork()
    if holder == 0:  # the test's pipes are not its to hold: the test waits on them
        quiet = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(quiet, fd)
        while True:
            signal.pause()
    print(passt.process.pid, passt.folder, holder, file=sys.stderr, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.skipif(shutil.which("passt") is None, reason="passt is not installed (.ci/run does)")
async def test_a_passt_left_by_a_killed_supervisor_gives_its_ports_to_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # the marks: this test's
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    killed = Process.start([sys.executable, "-c", STARTS_PASST, str(tmp_path), str(port)])
    holder = 0
    try:
        pid, folder, held = killed.wait_for(r"^(\d+) (\S+) (\d+)$").groups()
        holder = int(held)
    finally:
        os.kill(killed.pid, signal.SIGKILL)
        killed.finish()
    request.addfinalizer(lambda: holder and os.kill(holder, signal.SIGKILL))
    assert strays.started_at(int(pid)) is not None  # left behind, holding the port
    with socket.socket() as taken, pytest.raises(OSError):
        taken.bind(("127.0.0.1", port))
    again = network.Passt(tmp_path, [Forward("tcp", "127.0.0.1", port, 9000)])
    await again.start()  # the same forward: it fails on a taken port (test above)
    try:
        assert strays.started_at(int(pid)) is None
        assert not Path(folder).exists()
        assert [p.name for p in strays.marks_dir().iterdir()] == [f"{again.process.pid}.json"]
    finally:
        again.kill()
        await again.close()
    assert list(strays.marks_dir().iterdir()) == []  # ended as it should: its mark goes


@pytest.mark.skipif(shutil.which("passt") is None, reason="passt is not installed (.ci/run does)")
@pytest.mark.skipif(os.geteuid() != 0, reason="a full disk needs a tmpfs mount (root)")
async def test_a_passt_a_full_disk_cannot_note_is_one_line_and_leaves_no_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty mark no sweep could read stayed for ever, and the line said '[Errno 28]'."""
    with scratch_disk("1m") as disk:
        monkeypatch.setenv("XDG_STATE_HOME", str(disk))
        strays.marks_dir().mkdir(parents=True)
        fill(disk)
        passt = network.Passt(tmp_path, [])
        with pytest.raises(network.NetworkError) as failed:
            await passt.start()
        assert str(failed.value) == (
            f"cannot note passt in {strays.marks_dir()}: No space left on device"
        )
        assert list(strays.marks_dir().iterdir()) == []
        assert passt.process is not None and passt.process.returncode is not None  # ended


def test_a_sweep_ends_only_a_passt_whose_owner_is_gone(tmp_path: Path) -> None:
    """A mark names a process by pid and start time, and it must be a passt serving the
    socket the mark names: this test's own process, noted as a passt, is left alone."""
    me = [os.getpid(), strays.started_at(os.getpid())]
    mine = strays.mark(Path("/tmp/retreatkit-passt-mine/passt.sock"), os.getpid(), tmp_path)
    gone = tmp_path / "2.json"  # an owner no pid can be; a "passt" that is not one
    gone.write_text(json.dumps({"owner": [1 << 23, 1], "passt": me, "socket": "/tmp/x.sock"}))
    junk = tmp_path / "3.json"
    junk.write_text("not json")
    assert strays.sweep(tmp_path) == []  # nothing killed: this process is no passt
    assert mine.exists() and junk.exists() and not gone.exists()
