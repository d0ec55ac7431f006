"""`retreatkit up` as the organiser meets it: every conflict at once, keys named, the
addresses attendees use, a plain stop; `retreatkit tui` against nothing."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from retreatkit.testing import Process

pytestmark = pytest.mark.e2e


def run(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "XDG_STATE_HOME": str(tmp / "state"),
        "XDG_DATA_HOME": str(tmp / "data"),
        "HOME": str(tmp),
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        [sys.executable, "-m", "retreatkit.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def udp_only(sock: socket.socket) -> None:
    """Bind `sock` (UDP) to a port whose TCP twin is free, so only UDP conflicts: on a busy
    machine the kernel's pick for UDP can be a port some TCP connection holds."""
    while True:
        with socket.socket(type=socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with socket.socket() as tcp:
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
        try:
            sock.bind(("127.0.0.1", port))
            return
        except OSError:
            continue


def test_every_port_conflict_at_once(tmp_path: Path) -> None:
    with socket.socket() as a, socket.socket() as b, socket.socket(type=socket.SOCK_DGRAM) as c:
        a.bind(("127.0.0.1", 0))
        a.listen()
        b.bind(("127.0.0.1", 0))
        b.listen()
        udp_only(c)
        taken = [s.getsockname()[1] for s in (a, b, c)]
        got = run(
            "up",
            "--no-tui",
            "--relay-listen",
            f"127.0.0.1:{taken[0]}",
            "--admin",
            f"127.0.0.1:{taken[1]}",
            "--mirror-listen",
            "127.0.0.1:0",
            "--nameserver-listen",
            f"127.0.0.1:{taken[2]}",
            tmp=tmp_path,
        )
    assert got.returncode == 1
    assert got.stderr.splitlines() == [
        f"retreatkit: cannot start: relay: TCP 127.0.0.1:{taken[0]} is in use by another program: change [relay] listen (or --relay-listen)",  # noqa: E501
        f"retreatkit: cannot start: nameserver: UDP 127.0.0.1:{taken[2]} is in use by another program: change [nameserver] listen (or --nameserver-listen)",  # noqa: E501
        f"retreatkit: cannot start: admin: TCP 127.0.0.1:{taken[1]} is in use by another program: change [admin] listen (or --admin)",  # noqa: E501
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_up_started_again_says_it_already_runs(tmp_path: Path) -> None:
    """The organiser who lost its terminal, or whose `up` runs under systemd, types
    `retreatkit up` for the dashboard: four lines said the ports were in use by "another
    program", which was retreatkit; the last line now says so, and what opens the dashboard."""
    admin, relay, mirror, dns = (free_port() for _ in range(4))
    cfg = tmp_path / "retreat.toml"
    cfg.write_text(
        f'[admin]\nlisten = "127.0.0.1:{admin}"\n[relay]\nlisten = "127.0.0.1:{relay}"\n'
        f'[mirror]\nlisten = "127.0.0.1:{mirror}"\nstore = "{tmp_path / "store"}"\n'
        f'[nameserver]\nlisten = "127.0.0.1:{dns}"\nupstreams = ["127.0.0.1:9"]\n'
    )
    argv = [sys.executable, "-m", "retreatkit.cli.main", "--config", str(cfg), "up", "--no-tui"]
    first = Process.start(
        argv, env={"XDG_STATE_HOME": str(tmp_path / "s"), "XDG_DATA_HOME": str(tmp_path / "d")}
    )
    try:
        first.wait_for(r"^Attendees use:$")
        again = run("--config", str(cfg), "up", "--no-tui", tmp=tmp_path)
        assert again.returncode == 1
        lines = again.stderr.splitlines()
        assert lines[0] == (
            f"retreatkit: cannot start: relay: TCP 127.0.0.1:{relay} is in use by another"
            " program: change [relay] listen (or --relay-listen)"
        )
        assert lines[-1] == (
            f"retreatkit: retreatkit already runs here (PID {first.pid}: relay, mirror,"
            f" nameserver; admin 127.0.0.1:{admin}): `retreatkit tui` opens its dashboard,"
            " or stop it first"
        )
        assert len(lines) == 5
    finally:
        assert first.stop() == 0


def test_bad_values_name_their_keys(tmp_path: Path) -> None:
    store = tmp_path / "store-file"
    store.write_text("not a folder")
    cfg = tmp_path / "retreat.toml"
    cfg.write_text(
        f'[relay]\nlisten = "nonsense"\nhandshake_timeout = nan\n'
        f'[mirror]\nindex_ttl = -5\nread_timeout = inf\nstore = "{store}"\n'
        f'[nameserver]\nblocklists = ["{tmp_path / "gone.txt"}"]\n'
    )
    got = run("--config", str(cfg), "up", "--no-tui", tmp=tmp_path)
    assert got.returncode == 2
    assert got.stderr.splitlines() == [
        "retreatkit: [relay] listen (or --relay-listen): expected HOST:PORT, got 'nonsense'",
        "retreatkit: [relay] handshake_timeout must be a finite number above 0, not nan",
        "retreatkit: [mirror] read_timeout must be a finite number above 0, not inf",
        "retreatkit: [mirror] index_ttl must be 0 or more, not -5",
        f"retreatkit: [mirror] store: {store} is a file; name a folder",
        f"retreatkit: [nameserver] blocklists: {tmp_path / 'gone.txt'}: No such file or directory",
    ]


def test_a_key_a_flag_also_sets_names_the_flag_where_the_command_has_it(tmp_path: Path) -> None:
    cfg = tmp_path / "retreat.toml"
    cfg.write_text("[relay]\npairs = 0\n")
    relay = run("--config", str(cfg), "relay", tmp=tmp_path)
    assert (relay.returncode, relay.stderr) == (
        2,
        "retreatkit: [relay] pairs (or --pairs) must be above 0, not 0\n",
    )
    up = run("--config", str(cfg), "up", "--no-tui", tmp=tmp_path)  # up has no --pairs
    assert (up.returncode, up.stderr) == (2, "retreatkit: [relay] pairs must be above 0, not 0\n")


def test_up_says_what_attendees_use_and_when_it_stops(tmp_path: Path) -> None:
    argv = [
        sys.executable,
        "-m",
        "retreatkit.cli.main",
        "up",
        "--no-tui",
        "--admin",
        "127.0.0.1:0",
        "--relay-listen",
        "127.0.0.1:0",
        "--mirror-listen",
        "127.0.0.1:0",
        "--nameserver-listen",
        "127.0.0.1:0",
    ]
    cfg = tmp_path / "retreat.toml"
    cfg.write_text(
        f'[mirror]\nstore = "{tmp_path / "store"}"\npypi = "http://127.0.0.1:1/s/"\n'
        'public_url = "http://mirror.retreat.test:28000"\n'
        'opam = "http://127.0.0.1:1/o"\n[nameserver]\nupstreams = ["127.0.0.1:9"]\n'
    )
    argv[3:3] = ["--config", str(cfg)]
    proc = Process.start(
        argv, env={"XDG_STATE_HOME": str(tmp_path / "s"), "XDG_DATA_HOME": str(tmp_path / "d")}
    )
    try:
        proc.wait_for(r"^Attendees use:$")
        relay = proc.wait_for(
            r"^  bob relay: 127\.0\.0\.1:(\d+) \(loopback only: attendees cannot reach it\)$"
        )
        assert int(relay[1]) > 0
        proc.wait_for(r"^  package mirror: http://mirror\.retreat\.test:28000/ \(its page")
        proc.wait_for(r"^  DNS server: 127\.0\.0\.1 port \d+ ")
    finally:
        assert proc.stop() == 0
    _code, lines = proc.finish()
    assert lines[-2:] == ["Stopping...", "Stopped: relay, mirror, nameserver"]
    assert not any("Traceback" in line for line in lines)


def test_tui_against_nothing_is_one_line(tmp_path: Path) -> None:
    got = run("tui", "--connect", "127.0.0.1:9", tmp=tmp_path)
    assert got.returncode == 1
    assert got.stderr == (
        "retreatkit: no admin endpoint reachable: 127.0.0.1:9: cannot connect (connection refused)\n"  # noqa: E501
    )


def test_tui_against_a_port_that_speaks_no_http_is_one_line(tmp_path: Path) -> None:
    """A relay's port given for the admin endpoint: it answers, but not in HTTP."""
    import threading

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def answer() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:
                    conn.recv(4096)
                    conn.sendall(b"error not a bob/1 request\n")

        threading.Thread(target=answer, daemon=True).start()
        got = run("tui", "--connect", f"http://127.0.0.1:{port}", tmp=tmp_path)
    assert got.returncode == 1
    assert got.stderr == (
        f"retreatkit: no admin endpoint reachable: 127.0.0.1:{port}: the answer is not HTTP:"
        f" is http://127.0.0.1:{port} an admin endpoint?\n"
    )


def test_a_store_another_process_holds_is_one_line(tmp_path: Path) -> None:
    """A second `retreatkit up` (or `mirror`) on the first's store: what it started stops,
    and the organiser reads why in one line, no traceback."""
    store = tmp_path / "store"
    first = Process.start(
        [sys.executable, "-m", "retreatkit.cli.main", "mirror", "--listen", "127.0.0.1:0",
         "--admin", "127.0.0.1:0", "--store", str(store)],
        env={"XDG_STATE_HOME": str(tmp_path / "state1"), "HOME": str(tmp_path)},
    )  # fmt: skip
    try:
        first.wait_for(r"^Admin on ")
        cfg = tmp_path / "retreat.toml"
        cfg.write_text(f'[mirror]\nstore = "{store}"\n')
        got = run(
            "--config", str(cfg), "up", "--no-tui", "--relay-listen", "127.0.0.1:0",
            "--admin", "127.0.0.1:0", "--mirror-listen", "127.0.0.1:0",
            "--nameserver-listen", "127.0.0.1:0", tmp=tmp_path,
        )  # fmt: skip
    finally:
        first.stop()
    assert got.returncode == 1
    assert "Traceback" not in got.stderr
    assert got.stderr.splitlines()[-1] == (
        f"retreatkit: the mirror: the store {store} is in use by another retreatkit process;"
        " stop it first (or send files to the running mirror)"
    )
