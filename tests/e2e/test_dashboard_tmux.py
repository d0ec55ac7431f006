"""`retreatkit up` in a real terminal (tmux): the dashboard over three real services, a
bob transfer, a dig, the reload action, and a clean quit."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from retreatkit.mirror.testing import make_wheel, pip_download, start_upstream, write_pypi
from retreatkit.testing import Process, bob_argv
from retreatkit.tui.fmt import size

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("tmux") is None, reason="tmux is missing (.ci/run installs it)"
    ),
]
DEADLINE = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pane:
    server: str  # a tmux server of its own (-L), so nothing collides with another test
    state: Path
    admin: str
    relay: int
    mirror: int
    dns: int
    blocklist: Path

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.server, *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "dash")

    def wait(self, pattern: str) -> str:
        """The screen once `pattern` shows on it (the dashboard redraws every second)."""
        deadline = time.monotonic() + DEADLINE
        while True:
            text = self.screen()
            if re.search(pattern, text, re.M):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} never showed; the screen:\n{text}")
            time.sleep(0.2)  # polling a terminal: tmux has no "changed" event

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "dash", *keys)

    def up_pid(self) -> int | None:
        """The `retreatkit up` process, as its admin endpoint says (None once it is gone)."""
        try:
            with urllib.request.urlopen(f"{self.admin}/status", timeout=5) as r:
                pid = json.load(r)["process"]["pid"]
        except (OSError, ValueError, KeyError):
            return None
        return int(pid)


def open_pane(tmp: Path, cwd: Path | None = None, pypi: str = "http://127.0.0.1:1/simple/") -> Pane:
    """`retreatkit up` with its dashboard in a tmux terminal of its own, run in `cwd`;
    its mirror's PyPI upstream is `pypi` (by default one that is down)."""
    blocklist = tmp / "blocks.txt"
    blocklist.write_text("ads.example.test\n")
    admin, relay, mirror, dns = free_port(), free_port(), free_port(), free_port()
    cfg = tmp / "retreat.toml"
    cfg.write_text(
        f'[relay]\nlisten = "127.0.0.1:{relay}"\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'[mirror]\nlisten = "127.0.0.1:{mirror}"\nstore = "{tmp / "store"}"\n'
        f'pypi = "{pypi}"\nopam = "http://127.0.0.1:1/opam"\n'
        f'[nameserver]\nlisten = "127.0.0.1:{dns}"\nupstreams = ["127.0.0.1:9"]\n'
        f'blocklists = ["{blocklist}"]\n'
    )
    env = {
        "XDG_STATE_HOME": str(tmp / "state"),
        "XDG_DATA_HOME": str(tmp / "data"),
        "HOME": str(tmp),
        "TERM": "xterm-256color",
    }
    # -P: as the `retreatkit` script, it imports the kit installed, never one in its folder
    up = shlex.join([sys.executable, "-P", "-m", "retreatkit.cli.main", "--config", str(cfg), "up"])
    # after the dashboard: the exit code, then whether the terminal is back to normal
    shell = f"{up}; echo EXIT=$?; stty -a | head -1; sleep 600"
    p = Pane(
        f"rkdash-{os.getpid()}-{tmp.name}",
        tmp / "state",
        f"http://127.0.0.1:{admin}",
        relay,
        mirror,
        dns,
        blocklist,
    )
    p.tmux(
        "new-session",
        "-d",
        "-c",
        str(cwd or Path.cwd()),
        "-s",
        "dash",
        "-x",
        "160",
        "-y",
        "50",
        "env "
        + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        + f" sh -c {shlex.quote(shell)}",
    )
    return p


def close_pane(p: Pane) -> None:
    """The terminal goes, and whatever it ran with it: a test never leaves a process."""
    pid = p.up_pid()
    subprocess.run(["tmux", "-L", p.server, "kill-server"], capture_output=True, timeout=10)
    if pid is not None and not gone(pid, DEADLINE):
        os.kill(pid, signal.SIGKILL)


def gone(pid: int, within: float) -> bool:
    """Whether process `pid` has ended within `within` seconds (it is not our child)."""
    deadline = time.monotonic() + within
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return True  # reaped, between any two looks at /proc
        if stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]:
            return True  # a zombie: ended, waiting for its parent to notice
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)  # polling /proc: a process that is not our child has no wait()


def up_started(p: Pane) -> int:
    """The `retreatkit up` process, once its dashboard shows every service up."""
    p.wait(r"^\s+nameserver\s+127\.0\.0\.1:\d+\s+up")
    up = p.up_pid()
    assert up is not None
    return up


def dashboard_of(up: int) -> int:
    """The dashboard process `retreatkit up` runs (its one child)."""
    (child,) = (int(c) for c in Path(f"/proc/{up}/task/{up}/children").read_text().split())
    return child


def blocked_answer(p: Pane) -> str:
    """What the nameserver answers for the name its blocklist holds."""
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(p.dns), "+short", "+tries=1", "ads.example.test"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout.strip()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PyPI upstream holding one wheel: its simple index's URL."""
    root = tmp_path_factory.mktemp("upstream")
    write_pypi(root, {"demo-dep": [make_wheel("demo-dep", "2.0", pad=200_000)]})
    server = start_upstream(root)
    try:
        yield f"{server.url}simple/"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pane(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Pane]:
    p = open_pane(tmp_path_factory.mktemp("dash"), pypi=upstream)
    try:
        # every service up before any test talks to one (each test may run alone)
        p.wait(r"^\s+nameserver\s+127\.0\.0\.1:\d+\s+up")
        p.wait(r"^\s+relay\s+127\.0\.0\.1:\d+\s+up")
        p.wait(r"^\s+mirror\s+127\.0\.0\.1:\d+\s+up")
        yield p
    finally:
        close_pane(p)


def test_overview_shows_three_services_up(pane: Pane) -> None:
    text = pane.wait(r"^\s+nameserver\s+127\.0\.0\.1:\d+\s+up")
    # each at its own address, not the admin endpoint's
    for service, port in (("relay", pane.relay), ("mirror", pane.mirror), ("nameserver", pane.dns)):
        assert re.search(rf"^\s+{service}\s+127\.0\.0\.1:{port}\s+up\s", text, re.M)
    assert "Attendees use" in text
    # waited for, not read off the first screen: the mirror's alarm (the kit is not seeded
    # here) pushed it out of an early frame, one drawn at 80x24 in this 160x50 terminal
    dns = f"DNS server: 127.0.0.1 port {pane.dns} (loopback only: attendees cannot reach it)"
    pane.wait(re.escape(dns))


def test_the_mirror_screen_says_what_crossed_the_uplink(pane: Pane, tmp_path: Path) -> None:
    index = f"http://127.0.0.1:{pane.mirror}/pypi/simple/"
    for attempt in ("fetched", "from the store"):
        got = pip_download(index, "demo-dep", tmp_path / attempt, tmp_path)
        assert got.returncode == 0, got.stderr
    with urllib.request.urlopen(f"{pane.admin}/status", timeout=5) as r:
        s = json.load(r)["mirror"]
    assert s["upstream_bytes"] > 200_000  # the wheel, once
    pane.keys("3")
    pane.wait(
        re.escape(
            f"sent to clients from the store {size(s['bytes_from_cache'])} · as it was fetched"
            f" {size(s['bytes_from_upstream'])}"
        )
    )
    pane.wait(
        re.escape(
            f"over the uplink: files {size(s['upstream_bytes'])} · index pages"
            f" {size(s['upstream_index_bytes'])} · saved {size(s['bytes_saved'])}"
        )
    )


def test_a_dig_shows_in_the_query_log(pane: Pane) -> None:
    assert blocked_answer(pane) == "0.0.0.0"
    pane.keys("4")
    pane.wait(r"127\.0\.0\.1\s+ads\.example\.test\s+A\s+blocked")


def test_a_bob_transfer_shows_on_the_relay_screen(pane: Pane) -> None:
    relay = f"127.0.0.1:{pane.relay}"
    sender = Process.start(
        bob_argv("send", "--relay", relay, "--text", "hello"),
        env={"BOB_PASSPHRASE": "42-alpha-beta"},
    )
    try:
        sender.wait_for(r"^Passphrase: ")
        got = subprocess.run(
            bob_argv("recv", "--relay", relay, "42-alpha-beta"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert got.returncode == 0 and got.stdout == "hello\n"
    finally:
        sender.stop()
    pane.keys("2")
    pane.wait(r"^\s+42\s+.*completed")


def test_reload_action_reloads_a_changed_blocklist(pane: Pane) -> None:
    pane.blocklist.write_text("ads.example.test\ntracker.example.test\n")
    pane.keys("4")
    pane.wait(r"Query log")
    pane.keys("r")
    pane.wait(r"blocklists reloaded")
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(pane.dns), "+short", "+tries=1", "tracker.example.test"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout.strip() == "0.0.0.0"


def test_at_80x24_times_read_as_the_rooms_clock_and_a_dnsmasq_name_is_added(
    pane: Pane,
) -> None:
    """A normal terminal, 80x24: the mirror says since when an upstream is down in the
    machine's own time (17:50, never an ISO timestamp in UTC) and for how long, each
    state whole; `NAME=ADDRESS`, as organisers type it, adds a name dig then finds."""
    # opam's upstream is a port nothing listens on: asked for its index, it goes down
    with contextlib.suppress(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{pane.mirror}/opam/index.tar.gz", timeout=30)
    with urllib.request.urlopen(f"{pane.admin}/status", timeout=5) as r:
        opam = json.load(r)["mirror"]["upstreams"]["opam"]
    since = datetime.fromisoformat(opam["down_since_at"]).astimezone().strftime("%H:%M")
    pane.tmux("resize-window", "-t", "dash", "-x", "80", "-y", "24")
    try:
        pane.keys("3")
        text = pane.wait(rf"upstream down: http://127\.0\.0\.1:1 since {since} \(")
        assert not re.search(r"\d{4}-\d\d-\d\dT\d\d", text), text
        pane.wait(r"^\s+opam\s+down\s+(just now|\d+ min ago)\s")
        pane.wait(r"^\s+apt/debian-security\s+unknown\s")  # whole: it was `apt/debian…`
        pane.keys("4")
        pane.wait(r"Query log")
        pane.keys("a")
        pane.wait(r"Add a local name: NAME=ADDRESS")
        pane.tmux("send-keys", "-t", "dash", "-l", "printer.retreat.lan=10.0.0.9")
        pane.keys("Enter")
        pane.wait(r"added printer\.retreat\.lan: A 10\.0\.0\.9")
    finally:
        pane.tmux("resize-window", "-t", "dash", "-x", "160", "-y", "50")
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(pane.dns), "+short", "+tries=1", "printer.retreat.lan"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout.strip() == "10.0.0.9"


def test_q_stops_everything_and_leaves_the_terminal_sane(pane: Pane) -> None:
    pane.keys("1")
    pane.wait(r"Overview")
    pane.keys("q")
    pane.wait(r"Quit and stop mirror, nameserver, relay for everyone on the LAN\?")
    pane.keys("y")
    text = pane.wait(r"^EXIT=\d+")
    assert "EXIT=0" in text
    assert re.search(r"^Stopped: relay, mirror, nameserver$", text, re.M)
    flags = pane.tmux(
        "display", "-p", "-t", "dash", "#{alternate_on} #{mouse_any_flag} #{cursor_flag}"
    ).split()
    assert flags == ["0", "0", "1"]  # main screen, no mouse reporting, cursor shown
    assert "-icanon" not in text and "-echo " not in text  # stty: cooked mode, echo on
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{pane.admin}/healthz", timeout=5)


def test_a_lost_terminal_never_stalls_the_lan_and_stops_cleanly(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The dashboard runs in a process of its own: frozen, it leaves the services serving;
    its terminal gone (a dropped SSH session), everything stops and says so."""
    p = open_pane(tmp_path_factory.mktemp("hangup"))
    try:
        up = up_started(p)
        dashboard = dashboard_of(up)
        os.kill(dashboard, signal.SIGSTOP)  # a dashboard that hangs
        try:
            assert blocked_answer(p) == "0.0.0.0"  # the LAN's DNS still answers
        finally:
            os.kill(dashboard, signal.SIGCONT)
        subprocess.run(["tmux", "-L", p.server, "kill-server"], capture_output=True, timeout=10)
        assert gone(dashboard, DEADLINE) and gone(up, DEADLINE)
        log = (p.state / "retreatkit" / "retreatkit.log").read_text()
        assert "Stopped: relay, mirror, nameserver" in log
    finally:
        close_pane(p)


@pytest.mark.parametrize(
    "sig", [signal.SIGKILL, signal.SIGHUP, signal.SIGTERM], ids=["SIGKILL", "SIGHUP", "SIGTERM"]
)
def test_a_killed_dashboard_starts_again_and_the_lan_keeps_its_services(
    tmp_path_factory: pytest.TempPathFactory, sig: signal.Signals
) -> None:
    """A dashboard that crashes or is killed is not the organiser quitting: the services
    go on serving, the dashboard comes back and says what happened; q still stops all.
    A SIGHUP meant for `up`'s blocklists (`kill -HUP $(pgrep -f retreatkit)`) that hits
    the dashboard too is such a kill while its terminal is still there. A plain `kill` of
    the dashboard (SIGTERM) is one too: it stopped every service, as a quit does."""
    p = open_pane(tmp_path_factory.mktemp("killed"))
    try:
        up = up_started(p)
        first = dashboard_of(up)
        os.kill(first, sig)
        assert gone(first, DEADLINE)
        assert blocked_answer(p) == "0.0.0.0"  # the LAN's DNS still answers
        assert p.up_pid() == up
        p.keys("5")
        p.wait(rf"WARNING\s+the dashboard ended \(killed by signal {sig.value}\)")  # cut
        log = (p.state / "retreatkit" / "retreatkit.log").read_text()
        assert (
            f"WARNING the dashboard ended (killed by signal {sig.value}); it starts again, the"
            " services never stopped\n" in log
        )
        assert dashboard_of(up) != first
        p.keys("q")
        p.wait(r"Quit and stop mirror, nameserver, relay for everyone on the LAN\?")
        p.keys("y")
        text = p.wait(r"^EXIT=\d+")
        assert "EXIT=0" in text and gone(up, DEADLINE)
    finally:
        close_pane(p)


def test_bytes_that_are_not_utf8_leave_the_dashboard_running(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A terminal rebuilt under the dashboard (tmux reattached, an SSH session resumed)
    reports the mouse in the old X10 form, one raw byte a coordinate: past column 95 that
    byte is not UTF-8, and nor is a paste from a Latin-1 terminal. Textual's input thread
    died on the first such byte and took the dashboard (and, as a quit, every service)
    with it; the same dashboard now reads on and answers the next key."""
    p = open_pane(tmp_path_factory.mktemp("bytes"))
    try:
        up = up_started(p)
        dashboard = dashboard_of(up)
        p.tmux("send-keys", "-t", "dash", "-H", "1b", "5b", "4d", "20", "ff", "e0")  # X10
        p.tmux("send-keys", "-t", "dash", "-H", "63", "61", "66", "e9")  # "café", Latin-1
        p.keys("2")
        p.wait(r"retreatkit · Relay ·")
        assert dashboard_of(up) == dashboard
        p.keys("5")
        p.wait(r"Nameserver listening on")
        assert "the dashboard ended" not in p.screen()
    finally:
        close_pane(p)


IMPOSTOR = """import pathlib
pathlib.Path(__file__).with_name("ran").write_text("the code in the current folder ran")
raise SystemExit(3)
"""


def test_a_killed_up_takes_its_dashboard_and_the_terminal_is_the_shells_again(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """`up` killed (the OOM killer, kill -9): its dashboard ends with it, rather than stay
    on the terminal fighting the shell for keys. Started in a folder that holds another
    retreatkit (a checkout), the dashboard is still the running kit's own code."""
    tmp = tmp_path_factory.mktemp("orphan")
    other = tmp / "checkout" / "retreatkit" / "cli"
    other.mkdir(parents=True)
    (other.parent / "__init__.py").write_text("")
    (other / "__init__.py").write_text("")
    (other / "main.py").write_text(IMPOSTOR)
    p = open_pane(tmp, cwd=tmp / "checkout")
    try:
        up = up_started(p)
        dashboard = dashboard_of(up)
        os.kill(up, signal.SIGKILL)
        assert gone(dashboard, DEADLINE)
        deadline = time.monotonic() + DEADLINE
        while (flags := terminal_modes(p)) != ["0", "0"] and time.monotonic() < deadline:
            time.sleep(0.2)  # polling a terminal: tmux has no "changed" event
        assert flags == ["0", "0"]  # main screen, no mouse reporting
        assert not (other / "ran").exists()
    finally:
        close_pane(p)


def terminal_modes(p: Pane) -> list[str]:
    """Whether the terminal shows the alternate screen, and reports the mouse."""
    return p.tmux("display", "-p", "-t", "dash", "#{alternate_on} #{mouse_any_flag}").split()
