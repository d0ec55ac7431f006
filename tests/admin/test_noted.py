"""Admin endpoints noting themselves for a `retreatkit tui` with no --connect: a note per
running process, gone when it stops, a killed process's note removed by the next reader;
and a real relay on a port nobody chose, found."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from retreatkit.admin import noted
from retreatkit.testing import Process, bob_argv
from retreatkit.tui import run


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state" / "retreatkit" / "endpoints"


def test_a_note_is_read_while_its_process_runs_and_forgotten(state: Path) -> None:
    path = noted.note("http://127.0.0.1:40123")
    assert path is not None and path.parent == state
    assert path.stat().st_mode & 0o777 == 0o600
    assert noted.noted() == ["http://127.0.0.1:40123"]
    noted.forget(path)
    assert noted.noted() == []


def test_a_killed_processs_note_goes_and_junk_is_not_read(state: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    state.mkdir(parents=True)
    dead = state / gone.stdout.strip()
    dead.write_text("http://127.0.0.1:1\n")
    (state / "notes.txt").write_text("http://127.0.0.1:2\n")  # not a process's number
    path = noted.note("http://127.0.0.1:3")
    assert path is not None
    path.write_bytes(b"\xff" * 300)  # not a URL
    assert noted.noted() == []
    assert not dead.exists()


async def test_a_relay_on_a_port_nobody_chose_is_found_without_connect(
    tmp_path: Path, state: Path
) -> None:
    relay = Process.start(bob_argv("relay", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"),
                          env={"XDG_STATE_HOME": str(tmp_path / "state")})  # fmt: skip
    try:
        admin = relay.wait_for(r"^Admin on (http://\S+)/status$")[1]
        assert noted.noted() == [admin]
        found = await run.endpoints([], None, find=False)
        assert [e.url for e in found] == [admin]
        named = await run.endpoints(["127.0.0.1:9"], None, find=False)
        assert [e.url for e in named] == ["http://127.0.0.1:9"]  # --connect: only those
    finally:
        assert relay.stop() == 0
    assert noted.noted() == []
    assert [e.url for e in await run.endpoints([], None, find=False)] == [run.DEFAULT]


def test_a_killed_process_not_yet_reaped_is_not_running(state: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state.mkdir(parents=True)
        (state / str(child.pid)).write_text("http://127.0.0.1:4\n")
        assert noted.noted() == ["http://127.0.0.1:4"]
        child.kill()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped: a zombie
        assert noted.noted() == []
    finally:
        child.kill()
        child.wait()
