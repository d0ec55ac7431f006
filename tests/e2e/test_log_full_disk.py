"""`retreatkit up` with its state folder on a full disk (a tmpfs filled to the last
byte), in a real terminal (tmux): the log it cannot write is an alarm on the dashboard
and a line in /status, never a traceback on its screen, and goes once writes work."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from retreatkit.admin import token as admin_token
from retreatkit.testing import fill, scratch_disk

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("tmux") is None, reason="tmux is missing (.ci/run installs it)"
    ),
    pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (.ci/run does)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a full disk needs a mount (root)"),
]
DEADLINE = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def until(what: str, check: Any) -> Any:
    """`check()` once it gives something true; polled, as a terminal and /status say
    nothing when they change."""
    deadline = time.monotonic() + DEADLINE
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never came; last: {found!r}")
        time.sleep(0.2)


def test_a_log_the_full_disk_keeps_from_being_written_is_an_alarm(tmp_path: Path) -> None:
    admin, dns = free_port(), free_port()
    blocklist = tmp_path / "blocks.txt"
    blocklist.write_text("ads.example.test\nmore.example.test\n")
    cfg = tmp_path / "retreat.toml"
    cfg.write_text(
        f'[relay]\nlisten = "127.0.0.1:{free_port()}"\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'[mirror]\nlisten = "127.0.0.1:{free_port()}"\nstore = "{tmp_path / "store"}"\n'
        'pypi = "http://127.0.0.1:1/simple/"\nopam = "http://127.0.0.1:1/opam"\n'
        f'[nameserver]\nlisten = "127.0.0.1:{dns}"\nupstreams = ["127.0.0.1:9"]\n'
        f'blocklists = ["{blocklist}"]\n'
    )
    server = f"rklogfull-{os.getpid()}"

    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", "-L", server, *args], capture_output=True, text=True,
                              check=True, timeout=10).stdout  # fmt: skip

    with scratch_disk("1m") as state:
        token = admin_token.load_or_create(state / "retreatkit" / "admin-token")
        log = state / "retreatkit" / "retreatkit.log"
        env = {"XDG_STATE_HOME": str(state), "HOME": str(tmp_path), "TERM": "xterm-256color"}
        up = shlex.join([sys.executable, "-P", "-m", "retreatkit.cli.main", "--config", str(cfg),
                         "up"])  # fmt: skip
        shell = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + f" {up}; sleep 600"
        tmux("new-session", "-d", "-s", "dash", "-x", "160", "-y", "50", f"env {shell}")
        try:
            status = f"http://127.0.0.1:{admin}/status"

            def warnings() -> list[str] | None:
                try:
                    with urllib.request.urlopen(status, timeout=5) as r:
                        said = json.load(r)["process"]["warnings"]
                except OSError:
                    return None
                return list(said)

            def dig(name: str) -> None:
                argv = ["dig", "@127.0.0.1", "-p", str(dns), "+short", "+tries=1", name]
                subprocess.run(argv, capture_output=True, timeout=30, check=True)

            # `up` refuses to start on a full disk: the disk fills once it runs, and the
            # next line it logs (a blocked name, at DEBUG) finds no room
            assert until("the first /status", lambda: warnings() == [])
            put = urllib.request.Request(
                f"http://127.0.0.1:{admin}/loglevel", data=b"debug", method="PUT",
                headers={"Authorization": f"Bearer {token}"},
            )  # fmt: skip
            urllib.request.urlopen(put, timeout=5).close()
            fill(state)
            dig("more.example.test")  # its line may still fit the last page the log holds
            line = f"the log {log} cannot be written: No space left on device"
            assert until("the warning in /status", warnings) == [line]

            seen = [""]

            def alarm() -> bool:
                seen[0] = tmux("capture-pane", "-p", "-t", "dash")
                return f"! {line}" in " ".join(seen[0].split())  # wrapped to the width

            try:
                until("the alarm on the dashboard", alarm)
            except AssertionError:
                raise AssertionError(f"no alarm; the screen:\n{seen[0]}") from None
            screen = seen[0]
            assert "Logging error" not in screen and "Traceback" not in screen
            (state / "filler").unlink()  # room again: the next line is written
            dig("ads.example.test")
            assert until("the alarm gone", lambda: warnings() == [])
            blocked = "ads.example.test A from 127.0.0.1: blocked by the rule ads.example.test"
            assert re.search(rf" retreatkit\.nameserver DEBUG {re.escape(blocked)}, NOERROR$",
                             log.read_text(), re.M)  # fmt: skip
            assert "Logging error" not in tmux("capture-pane", "-p", "-t", "dash")
        finally:
            subprocess.run(["tmux", "-L", server, "kill-server"], capture_output=True, timeout=10)
