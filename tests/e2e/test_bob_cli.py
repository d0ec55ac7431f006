"""bob send and bob recv as real processes through a real relay; the text users see is pinned."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from retreatkit.testing import Process, RelayProcess, bob_argv, scratch_disk

pytestmark = pytest.mark.e2e
TIMEOUT = 120


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def start_send(
    relay: RelayProcess, *args: str, passphrase: str | None = None, stdin: object = None
) -> Process:
    proc = Process.start(
        bob_argv("send", "--relay", relay.address, *args),
        stdin=stdin if stdin is not None else subprocess.DEVNULL,  # type: ignore[arg-type]
        env={"BOB_PASSPHRASE": passphrase} if passphrase else None,
    )
    proc.wait_for(r"^Passphrase: ")
    return proc


def recv(
    relay: RelayProcess,
    *args: str,
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        bob_argv("recv", "--relay", relay.address, *args),
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def out(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "out"
    folder.mkdir()
    yield folder


def test_big_file_arrives_whole(relay: RelayProcess, tmp_path: Path, out: Path) -> None:
    src = tmp_path / "disk.img"
    with src.open("wb") as f:
        for _ in range(256):
            f.write(os.urandom(1 << 20))
    sender = start_send(relay, str(src), passphrase="17-alpha-beta")
    got = recv(relay, "--yes", "--output", str(out), "17-alpha-beta")
    code, lines = sender.finish(TIMEOUT)
    assert got.returncode == 0, got.stderr
    assert code == 0, lines
    assert sha256(out / "disk.img") == sha256(src)
    assert lines == [
        "Sending 268.4 MB file named 'disk.img'",
        "Passphrase: yours, on nameplate 17 (its words are not shown)",
        "On the other computer, please run:",
        "",
        f"bob recv --relay {relay.address}",
        "",
        "Path: direct",  # both on this computer, as the relay saw them
        "Transfer complete.",
    ]
    assert got.stderr.splitlines()[1:] == [
        "  disk.img  268.4 MB",
        "Path: direct",
        f"Received file written to: {out}/disk.img",
    ]
    assert got.stderr.startswith("Offer from 127.0.0.1:")
    assert got.stderr.splitlines()[0].endswith(": 1 file (268.4 MB)")
    assert [p.name for p in out.iterdir()] == ["disk.img"]


def test_folder_tree_keeps_structure(relay: RelayProcess, tmp_path: Path, out: Path) -> None:
    tree = tmp_path / "proj"
    (tree / "src" / "deep" / "er").mkdir(parents=True)
    (tree / "empty").mkdir()
    (tree / "README").write_text("read me\n" * 1000)  # compressible
    (tree / "src" / "main.py").write_bytes(os.urandom(300_000))
    (tree / "src" / "deep" / "er" / "zero").write_bytes(b"")
    run = tree / "run.sh"
    run.write_text("#!/bin/sh\necho hi\n")
    run.chmod(0o4755)  # setuid must not survive
    (tree / "link").symlink_to("/etc/passwd")
    sender = start_send(relay, str(tree), passphrase="3-tree-frog")
    got = recv(relay, "-y", "-o", str(out), "3-tree-frog")
    code, lines = sender.finish(TIMEOUT)
    assert (code, got.returncode) == (0, 0), (lines, got.stderr)
    assert lines[:2] == [
        "Skipping proj/link (symlink)",
        "Sending 4 files (308.0 kB) in folder 'proj'",
    ]
    received = out / "proj"
    assert sorted(str(p.relative_to(received)) for p in received.rglob("*")) == [
        "README",
        "empty",
        "run.sh",
        "src",
        "src/deep",
        "src/deep/er",
        "src/deep/er/zero",
        "src/main.py",
    ]
    for rel in ("README", "run.sh", "src/main.py", "src/deep/er/zero"):
        assert sha256(received / rel) == sha256(tree / rel)
    mode = stat.S_IMODE((received / "run.sh").stat().st_mode)
    assert mode & 0o100 and not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX)
    assert got.stderr.splitlines()[-1] == f"Received 4 files into: {out}"


def test_text_goes_to_stdout(relay: RelayProcess) -> None:
    sender = start_send(relay, "--text", "héllo wörld\nline two")
    passphrase = sender.seen[-1].removeprefix("Passphrase: ")
    got = recv(relay, passphrase)
    code, lines = sender.finish(TIMEOUT)
    assert (code, got.returncode) == (0, 0), (lines, got.stderr)
    assert got.stdout == "héllo wörld\nline two\n"
    assert lines[0] == "Sending text message (22 bytes)"
    assert lines[-1] == "Transfer complete."


def test_generated_passphrase_and_stdin(relay: RelayProcess, tmp_path: Path, out: Path) -> None:
    data = tmp_path / "data"
    data.write_bytes(os.urandom(1_000_000))
    with data.open("rb") as stdin:
        sender = start_send(relay, "-", stdin=stdin)
    passphrase = sender.seen[-1].removeprefix("Passphrase: ")
    number, *words = passphrase.split("-")
    assert number.isdigit() and len(words) == 2
    assert sender.seen[0] == "Sending unknown size file named 'stdin'"
    got = recv(relay, "--yes", "--output", str(out), env={"BOB_PASSPHRASE": passphrase})
    code, lines = sender.finish(TIMEOUT)
    assert (code, got.returncode) == (0, 0), (lines, got.stderr)
    assert (out / "stdin").read_bytes() == data.read_bytes()


def test_passphrase_prompt_and_yes_prompt(relay: RelayProcess, tmp_path: Path, out: Path) -> None:
    src = tmp_path / "photo.jpg"
    src.write_bytes(b"jpeg")
    (out / "photo.jpg").write_bytes(b"mine")  # must survive
    sender = start_send(relay, str(src), passphrase="8-apple-pie")
    got = recv(relay, "--output", str(out), input="8-apple-pie\n\n")
    code, lines = sender.finish(TIMEOUT)
    assert (code, got.returncode) == (0, 0), (lines, got.stderr)
    assert (out / "photo.jpg").read_bytes() == b"mine"
    assert (out / "photo (1).jpg").read_bytes() == b"jpeg"
    err = got.stderr.splitlines()  # each prompt's line ended: a pipe echoes nothing
    assert err[0] == "Enter passphrase: "
    assert err[1].startswith("Offer from 127.0.0.1:")
    assert err[2] == "  photo (1).jpg  (renamed: 'photo.jpg' exists)  4 bytes"
    assert err[3:] == [
        f"Accept into {out}? [Y/n] ",
        "Path: direct",
        f"Received file written to: {out}/photo (1).jpg",
    ]


def test_the_last_line_names_the_folder_the_prompt_named(
    relay: RelayProcess, tmp_path: Path
) -> None:
    """Received into the working folder (no --output): the prompt said where, absolute,
    and the last line said `.`, which tells nobody where the files went. A zero-width
    space in the folder's name shows escaped in both, as in a name."""
    here = tmp_path / "recv\u200bone"
    here.mkdir()
    tree = tmp_path / "d"
    (tree / "sub").mkdir(parents=True)
    (tree / "a").write_text("a")
    (tree / "sub" / "b").write_text("b")
    sender = start_send(relay, str(tree), passphrase="19-alpha-beta")
    got = subprocess.run(
        bob_argv("recv", "--relay", relay.address, "19-alpha-beta"),
        input="\n", capture_output=True, text=True, timeout=TIMEOUT, cwd=here,
    )  # fmt: skip
    code, lines = sender.finish(TIMEOUT)
    assert (code, got.returncode) == (0, 0), (lines, got.stderr)
    shown = str(tmp_path) + "/recv\\u200bone"
    assert got.stderr.splitlines()[-3:] == [
        f"Accept into {shown}? [Y/n] ",
        "Path: direct",
        f"Received 2 files into: {shown}",
    ]
    assert (here / "d" / "sub" / "b").read_text() == "b"


def test_declined_fails_both_sides(relay: RelayProcess, tmp_path: Path, out: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x")
    sender = start_send(relay, str(src), passphrase="9-not-now")
    got = recv(relay, "-o", str(out), "9-not-now", input="n\n")
    code, lines = sender.finish(TIMEOUT)
    assert (code, got.returncode) == (1, 1)
    assert lines[-1] == "ERROR: the receiver declined the transfer"
    said = got.stderr.splitlines()[-2:]
    assert said == [f"Accept into {out}? [Y/n] ", "ERROR: transfer declined"]
    assert list(out.iterdir()) == []


def test_a_question_nobody_can_answer_is_no_decline(
    relay: RelayProcess, tmp_path: Path, out: Path
) -> None:
    """The receiver's input ended before its user answered (a script's, say): nobody
    declined, and the sender hears what happened and what to do."""
    (tmp_path / "f").write_bytes(b"x")
    sender = start_send(relay, str(tmp_path / "f"), passphrase="23-not-now")
    got = recv(relay, "-o", str(out), "23-not-now", input="")
    code, lines = sender.finish(TIMEOUT)
    assert (code, got.returncode) == (1, 1)
    assert got.stderr.splitlines()[-2:] == [
        f"Accept into {out}? [Y/n] ",
        "ERROR: no answer on stdin: transfer declined",
    ]
    assert lines[-1] == (
        "ERROR: the other side says: nobody answered the receiver's question (its input"
        " ended): ask it to receive where it can answer, or with --yes"
    )
    assert list(out.iterdir()) == []


def test_wrong_passphrase_fails_both_and_burns_nameplate(
    relay: RelayProcess, tmp_path: Path, out: Path
) -> None:
    src = tmp_path / "secret.txt"
    src.write_text("top secret")
    sender = start_send(relay, str(src), passphrase="5-alpha-beta")
    got = recv(relay, "--yes", "-o", str(out), "5-alpha-gamma")
    code, lines = sender.finish(TIMEOUT)
    assert (code, got.returncode) == (1, 1)
    assert lines[-1] == (
        "ERROR: wrong passphrase: the other side used a different one."
        " The passphrase is used up: start a new bob send"
    )
    assert got.stderr == (
        "ERROR: wrong passphrase: the other side used a different one."
        " The passphrase is used up: ask the sender to start a new bob send\n"
    )
    assert list(out.iterdir()) == []
    # one online guess per session: the right code no longer finds the sender
    again = recv(relay, "--yes", "-o", str(out), "5-alpha-beta")
    assert again.returncode == 1
    assert again.stderr == (
        f"ERROR: the relay at {relay.address} says: no sender is waiting on nameplate 5\n"
    )


def test_relay_unreachable(tmp_path: Path) -> None:
    got = subprocess.run(
        bob_argv("recv", "--relay", "127.0.0.1:1", "4-some-code"),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert got.returncode == 1
    assert got.stderr == (
        "ERROR: cannot reach the relay at 127.0.0.1:1: Connection refused (--relay names"
        " 127.0.0.1:1: check it, or leave it out to let bob look for one on the LAN)\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["send"], "bob: nothing to send: give a PATH, - for stdin, or --text TEXT\n"),
        (
            ["send", "--passphrase", "7-purple-sofa", "x"],
            "bob: a passphrase on the command line shows in ps to everyone on this computer"
            " while bob waits; set BOB_PASSPHRASE instead\n",
        ),
        (["send", "--text", "hi", "file"], "bob: give --text or paths, not both\n"),
        (
            ["recv", "--relay", "nonsense:port", "4-a-b"],
            "bob: expected HOST:PORT, got 'nonsense:port'\n",
        ),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    got = subprocess.run(bob_argv(*args), capture_output=True, text=True, timeout=TIMEOUT)
    assert (got.returncode, got.stderr) == (2, message)


def test_an_output_folder_it_cannot_write_is_found_before_the_key_exchange(
    relay: RelayProcess, tmp_path: Path, out: Path
) -> None:
    (tmp_path / "f").write_text("still on offer\n")
    sender = start_send(relay, str(tmp_path / "f"), passphrase="18-alpha-beta")
    why = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    with scratch_disk("1m", read_only=True) as readonly:
        got = recv(relay, "--yes", "-o", str(readonly), "18-alpha-beta")
    said = f"bob: --output {readonly}: cannot write there ({why})\n"
    assert (got.returncode, got.stderr) == (2, said)
    missing = recv(relay, "--yes", "-o", str(tmp_path / "nope"), "18-alpha-beta")
    said = f"bob: --output {tmp_path / 'nope'}: not a folder\n"
    assert (missing.returncode, missing.stderr) == (2, said)
    # nothing reached the sender: the same passphrase still works
    again = recv(relay, "--yes", "-o", str(out), "18-alpha-beta")
    assert again.returncode == 0, again.stderr
    assert sender.finish(TIMEOUT)[0] == 0
    assert (out / "f").read_text() == "still on offer\n"


def test_missing_path_exits_1(tmp_path: Path) -> None:
    got = subprocess.run(
        bob_argv("send", "--relay", "127.0.0.1:1", str(tmp_path / "nope")),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert got.returncode == 1
    assert got.stderr == f"ERROR: cannot send {tmp_path / 'nope'}: No such file or directory\n"


def test_over_the_entry_limit_says_to_send_one_stream(tmp_path: Path) -> None:
    def send_photos() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            bob_argv("send", "--relay", "127.0.0.1:1", "photos"),
            capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path,
        )  # fmt: skip

    (tmp_path / "photos").mkdir()
    for i in range(99_999):  # with the folder: 100 000 entries, the most an offer lists
        os.close(os.open(tmp_path / "photos" / f"{i}.jpg", os.O_CREAT | os.O_WRONLY, 0o644))
    got = send_photos()
    assert got.stderr.splitlines()[-1].startswith("ERROR: cannot reach the relay at 127.0.0.1:1")
    (tmp_path / "photos" / "one more.jpg").touch()
    got = send_photos()
    assert (got.returncode, got.stderr) == (
        1,
        "ERROR: cannot send: over 100000 files and folders, more than one offer may list;"
        " send them as one stream instead: tar c photos | bob send --name photos.tar -\n",
    )


def test_help_mentions_the_other_bob() -> None:
    got = subprocess.run(bob_argv("--help"), capture_output=True, text=True, timeout=TIMEOUT)
    assert got.returncode == 0
    assert "Not dinosaure/bob" in got.stdout
    for command in ("send", "recv", "relay"):
        sub = subprocess.run(
            [sys.executable, "-m", "retreatkit.cli.bob", command, "--help"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert sub.returncode == 0 and f"usage: bob {command}" in sub.stdout


def test_a_relay_whose_admin_token_others_can_read_says_so_in_one_line(tmp_path: Path) -> None:
    """It said "ERROR: TokenError: ... (a bug in bob)": the fix is the organiser's chmod."""
    token = tmp_path / "state" / "retreatkit" / "admin-token"
    token.parent.mkdir(parents=True)
    token.write_text("t0ken\n")
    token.chmod(0o644)
    relay = Process.start(
        bob_argv("relay", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"),
        env={"XDG_STATE_HOME": str(tmp_path / "state")},
    )
    code, lines = relay.finish(30)
    assert (code, lines[-1]) == (
        1,
        f"bob relay: the admin token {token} is open to others: chmod 600 {token}",
    )
    assert not any("Traceback" in line or "a bug in bob" in line for line in lines), lines


def test_a_relay_whose_port_is_taken_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        relay = Process.start(
            bob_argv("relay", "--listen", f"127.0.0.1:{port}", "--admin", "127.0.0.1:0"),
            env={"XDG_STATE_HOME": str(tmp_path / "state")},
        )
        code, lines = relay.finish(30)
    assert (code, lines[-1]) == (
        1,
        "bob relay: cannot start: error while attempting to bind on address"
        f" ('127.0.0.1', {port}): address already in use",
    )


def test_a_relay_whose_config_would_turn_everyone_away_says_which_key(tmp_path: Path) -> None:
    """`bob relay --config` checks the relay's limits as `retreatkit relay` does: it
    started with `per_ip = 0` and a `wait_timeout` of nan, refusing every sender."""
    cfg = tmp_path / "retreat.toml"
    cfg.write_text("[relay]\nper_ip = 0\nwait_timeout = nan\n")
    argv = bob_argv("relay", "--config", str(cfg), "--listen", "127.0.0.1:0")
    relay = Process.start(
        [*argv, "--admin", "127.0.0.1:0"],
        env={"XDG_STATE_HOME": str(tmp_path / "state")},
    )
    try:
        assert relay.finish(30) == (
            2,
            [
                "bob: [relay] per_ip must be above 0, not 0",
                "bob: [relay] wait_timeout must be a finite number above 0, not nan",
            ],
        )
    finally:
        relay.stop()  # a relay that started (the old code did) is not left behind
