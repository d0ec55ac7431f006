"""`kill -HUP` of a running process, as docs/operations.md tells the organiser after editing
a blocklist: it reloads what it can and says so, and never ends the process."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from retreatkit.image.testing import isolated_env, retreatkit_argv, up_config
from retreatkit.testing import Process

pytestmark = pytest.mark.e2e
TIMEOUT = 60.0


def test_up_reloads_its_lists_on_sighup_and_says_from_which_file(tmp_path: Path) -> None:
    lists = tmp_path / "blocks.txt"
    lists.write_text("0.0.0.0 ads.example\n")
    config = up_config(
        tmp_path,
        f'blocklists = ["{lists}"]\n',
    )
    env = isolated_env(tmp_path / "home")
    up = Process.start(retreatkit_argv("--config", str(config), "up", "--no-tui"), env=env)
    try:
        up.wait_for(r"^Admin on http://", TIMEOUT)
        lists.write_text("0.0.0.0 ads.example\n0.0.0.0 new.example\nnot a rule!\n")
        up.popen.send_signal(signal.SIGHUP)
        up.wait_for(
            f"^SIGHUP: nameserver: blocklists reloaded: 2 entries from {lists}"
            r" \(1 bad line skipped\)$",
            TIMEOUT,
        )
    finally:
        up.popen.send_signal(signal.SIGTERM)
        code, lines = up.finish(TIMEOUT)
    assert code == 0, lines
    assert lines[-1] == "Stopped: relay, mirror, nameserver"


def test_a_process_with_nothing_to_reload_survives_sighup(tmp_path: Path) -> None:
    """The relay alone caught no SIGHUP: its default action ended the process, silently."""
    env = isolated_env(tmp_path / "home")
    argv = retreatkit_argv("relay", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0")
    relay = Process.start(argv, env=env)
    try:
        relay.wait_for(r"^Admin on http://", TIMEOUT)
        relay.popen.send_signal(signal.SIGHUP)
        relay.wait_for(r"^SIGHUP: nothing to reload \(relay\)$", TIMEOUT)
    finally:
        relay.popen.send_signal(signal.SIGTERM)
        code, lines = relay.finish(TIMEOUT)
    assert code == 0, lines
    assert lines[-1] == "Stopped: relay"
