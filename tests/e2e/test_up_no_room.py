"""`retreatkit up` and each service command on a full or read-only disk: one line naming
the folder and what to do, before anything starts (not a service started, then stopped
again by the one that met the disk, nor a kit running on without its state folder)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from retreatkit.admin import token
from retreatkit.mirror.store import Store
from retreatkit.testing import Terminal, fill, read_only_view, scratch_disk

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="a full or read-only disk needs a mount (root)"),
]

ANY = "127.0.0.1:0"
UP = ("up", "--no-tui", "--admin", ANY, "--relay-listen", ANY, "--mirror-listen", ANY,
      "--nameserver-listen", ANY)  # fmt: skip
COMMANDS = {
    "up": UP,
    "relay": ("relay", "--listen", ANY, "--admin", ANY),
    "mirror": ("mirror", "--listen", ANY, "--admin", ANY),
    "nameserver": ("nameserver", "--listen", ANY, "--admin", ANY, "--upstream", "127.0.0.1:9"),
}


def retreatkit(*args: str, state: Path, data: Path) -> subprocess.CompletedProcess[str]:
    """A command run to its end: each of these ends at once, or ran on before (the
    timeout, then, fails the test)."""
    # HOME apart from the data folder: building the mirror asks npm for its registry,
    # and npm writes its own log there
    env = {"XDG_STATE_HOME": str(state), "XDG_DATA_HOME": str(data),
           "HOME": str(data.parent / "home"), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "retreatkit.cli.main", *args],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip


def made_before(state: Path) -> None:
    """The admin token an earlier start made: with it, nothing had to write the state
    folder before the services started, and they ran on without it."""
    token.load_or_create(state / "retreatkit" / "admin-token")


def state_full(state: Path) -> str:
    return (
        f"retreatkit: the state folder {state}/retreatkit is full (0 B free, 100 kB needed to"
        " start): free some space or set XDG_STATE_HOME\n"
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_a_full_state_folder_is_one_line_and_nothing_starts(command: str, tmp_path: Path) -> None:
    with scratch_disk("1m") as state:
        made_before(state)
        fill(state)
        got = retreatkit(*COMMANDS[command], state=state, data=tmp_path / "data")
    assert (got.returncode, got.stderr) == (1, state_full(state))
    assert not (tmp_path / "data").exists()  # not even the mirror's store was made


def test_a_first_start_on_a_full_state_folder_says_so_the_same_way(tmp_path: Path) -> None:
    """It said the admin token could not be written ("No space left on device"), which
    did not say where the room was wanted nor what else could be done."""
    with scratch_disk("1m") as state:
        fill(state)
        got = retreatkit(*UP, state=state, data=tmp_path / "data")
    assert (got.returncode, got.stderr) == (1, state_full(state))


def test_a_read_only_state_folder_is_one_line_and_nothing_starts(tmp_path: Path) -> None:
    made_before(tmp_path / "state")
    with read_only_view(tmp_path / "state") as state:
        got = retreatkit(*UP, state=state, data=tmp_path / "data")
    assert (got.returncode, got.stderr) == (
        1,
        f"retreatkit: the state folder {state}/retreatkit cannot be written (Read-only file"
        " system): make it writable or set XDG_STATE_HOME\n",
    )
    assert not (tmp_path / "data").exists()


def up_on_store(store: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    cfg = tmp / "retreat.toml"
    cfg.write_text(f'[mirror]\nstore = "{store}"\n')
    return retreatkit("--config", str(cfg), *UP, state=tmp / "state", data=tmp / "data")


@pytest.mark.parametrize("before", [False, True], ids=["new store", "store made before"])
def test_a_store_on_a_full_disk_is_one_line_and_nothing_starts(
    tmp_path: Path, before: bool
) -> None:
    """The relay started, then the mirror met the disk and the relay stopped again:
    "Relay listening on ...", "Stopped: relay", then why."""
    with scratch_disk("2m") as disk:
        store = disk / "store"
        if before:
            Store(store).close()
        fill(disk)
        got = up_on_store(store, tmp_path)
    assert (got.returncode, got.stderr) == (
        1,
        f"retreatkit: the mirror's store {store} is full (0 B free, 250 kB needed to start):"
        " free some space or set [mirror] store\n",
    )


@pytest.mark.parametrize("command", ["up", "mirror"])
def test_a_store_on_a_read_only_disk_is_one_line_and_nothing_starts(
    tmp_path: Path, command: str
) -> None:
    Store(tmp_path / "disk" / "store").close()
    with read_only_view(tmp_path / "disk") as disk:
        store = disk / "store"
        if command == "up":
            got = up_on_store(store, tmp_path)
            key = "[mirror] store"
        else:
            got = retreatkit(*COMMANDS["mirror"], "--store", str(store),
                             state=tmp_path / "state", data=tmp_path / "data")  # fmt: skip
            key = "[mirror] store (or --store)"
    assert (got.returncode, got.stderr) == (
        1,
        f"retreatkit: the mirror's store {store} cannot be written (Read-only file system):"
        f" make it writable or set {key}\n",
    )


def up_in_a_terminal(state: Path, tmp: Path) -> tuple[int, str]:
    """`up` with its dashboard, which logs to a file in the state folder."""
    term = Terminal.start(
        [sys.executable, "-m", "retreatkit.cli.main", *(a for a in UP if a != "--no-tui")],
        env={"XDG_STATE_HOME": str(state), "XDG_DATA_HOME": str(tmp / "data"),
             "HOME": str(tmp), "TERM": "xterm-256color"},
    )  # fmt: skip
    try:
        shown = term.until(b"XDG_STATE_HOME\r\n").decode()
        code = term.popen.wait(60)
    finally:
        term.close()
    return code, shown


def test_up_in_a_terminal_with_a_full_state_folder_is_one_line(tmp_path: Path) -> None:
    """Its dashboard ran, and its log file, in the full folder, kept nothing."""
    with scratch_disk("1m") as state:
        made_before(state)
        fill(state)
        code, shown = up_in_a_terminal(state, tmp_path)
    assert (code, shown) == (1, state_full(state).replace("\n", "\r\n"))


def test_up_in_a_terminal_with_a_read_only_state_folder_is_one_line(tmp_path: Path) -> None:
    with scratch_disk("1m", read_only=True) as state:
        code, shown = up_in_a_terminal(state, tmp_path)
    assert (code, shown) == (
        1,
        f"retreatkit: the state folder {state}/retreatkit cannot be written (Read-only file"
        " system): make it writable or set XDG_STATE_HOME\r\n",
    )


def up_with_a_mirror_guest(disk: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    """`up` running the mirror as a VM image, its data disk at `disk`; the relay and the
    nameserver in its own process, started before the guest."""
    cfg = tmp / "retreat.toml"
    cfg.write_text(
        f'[nameserver]\nupstreams = ["127.0.0.1:9"]\n[images]\nrun = ["mirror"]\n'
        f'dir = "{tmp / "images"}"\ndisk = "{disk}"\n'
    )
    return retreatkit("--config", str(cfg), *UP, state=tmp / "state", data=tmp / "data")


def test_a_guests_disk_on_a_full_disk_is_one_line_and_nothing_starts(tmp_path: Path) -> None:
    """The relay and the nameserver started, the mirror's image was built (half a minute),
    and only then did making its disk fail; they stopped again."""
    with scratch_disk("2m") as folder:
        fill(folder)
        got = up_with_a_mirror_guest(folder / "mirror.disk", tmp_path)
    assert (got.returncode, got.stderr) == (
        1,
        f"retreatkit: the folder of the mirror guest's disk {folder} is full (0 B free,"
        " 100 kB needed to start): free some space or set [images] disk\n",
    )
    assert not (tmp_path / "images").exists()  # no image built for nothing


def test_a_guests_disk_with_too_little_room_is_made_before_anything_starts(
    tmp_path: Path,
) -> None:
    """A folder with room to start but not for the disk (mke2fs writes its journal and
    inode tables: ~2 MB on a tmpfs, 86 MB for a 4G disk on ext4): made first, its failure
    is the one line, and nothing else ran."""
    with scratch_disk("1m") as folder:
        got = up_with_a_mirror_guest(folder / "mirror.disk", tmp_path)
        assert not (folder / "mirror.disk").exists()  # no partial disk left
    assert got.returncode == 1
    assert re.fullmatch(
        rf"retreatkit: the mirror guest: cannot make the disk {re.escape(str(folder))}"
        r"/mirror\.disk: mke2fs: No space left on device[^\n]*\n",
        got.stderr,
    ), got.stderr
    assert not (tmp_path / "images").exists()
