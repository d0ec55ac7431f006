"""What a person types and sees, with real processes (and a real terminal where it
matters): four-letter prefixes, completion and "did you mean" before the key exchange,
streams named and written to stdout, --version, and the QR code."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from retreatkit.cli import qr
from retreatkit.testing import Process, RelayProcess, Terminal, bob_argv
from retreatkit.transfer.codes import parse
from retreatkit.transfer.records import RECORD_SIZE

pytestmark = pytest.mark.e2e
TIMEOUT = 60.0
CODE = "3131-abandon-ability"


def send(relay: RelayProcess, *args: str, stdin: object = subprocess.DEVNULL) -> Process:
    proc = Process.start(
        bob_argv("send", "--relay", relay.address, *args),
        env={"BOB_PASSPHRASE": CODE},
        stdin=stdin,  # type: ignore[arg-type]
    )
    proc.wait_for(r"^Passphrase: ")
    return proc


def recv(relay: RelayProcess, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        bob_argv("recv", "--relay", relay.address, *args),
        capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_version_on_every_command() -> None:
    for args in ([], ["send"], ["recv"]):
        got = subprocess.run(bob_argv(*args, "--version"), capture_output=True, text=True)
        assert got.returncode == 0
        assert got.stdout.startswith("bob ") and got.stdout.endswith(" (protocol bob/1)\n")
    kit = subprocess.run(
        [sys.executable, "-m", "retreatkit.cli.main", "--version"], capture_output=True, text=True
    )
    assert kit.returncode == 0 and kit.stdout.startswith("retreatkit ")


def test_four_letter_prefixes_are_the_words(relay: RelayProcess, tmp_path: Path) -> None:
    sender = send(relay, "--text", "hi")
    got = recv(relay, "3131-aban-abil")
    assert (sender.finish(TIMEOUT)[0], got.returncode) == (0, 0), got.stderr
    assert got.stdout == b"hi\n"


def test_a_nameplate_with_leading_zeros_is_the_same_nameplate(relay: RelayProcess) -> None:
    sender = Process.start(
        bob_argv("send", "--relay", relay.address, "--text", "hi"),
        env={"BOB_PASSPHRASE": "0555-abandon-ability"},
    )
    assert sender.wait_for(r"^Passphrase: .*$")[0] == (
        "Passphrase: yours, on nameplate 555 (its words are not shown)"
    )
    got = recv(relay, "00555-aban-abil")
    assert (sender.finish(TIMEOUT)[0], got.returncode) == (0, 0), got.stderr
    assert got.stdout == b"hi\n"


def test_a_typo_with_nobody_to_ask_stops_before_the_key_exchange(relay: RelayProcess) -> None:
    sender = send(relay, "--text", "still on offer")
    got = recv(relay, "3131-abandon-abilty")  # stdin is no terminal: nobody to ask
    assert (got.returncode, got.stderr.decode()) == (
        2,
        "bob: '3131-abandon-abilty' has a word bob never chooses: did you mean"
        " 3131-abandon-ability? Nothing was sent: run again with the passphrase you mean"
        " (from BOB_PASSPHRASE it is taken as typed)\n",
    )
    got = recv(relay, CODE)  # the offer was not used up
    assert (sender.finish(TIMEOUT)[0], got.returncode, got.stdout) == (0, 0, b"still on offer\n")
    as_typed = subprocess.run(
        bob_argv("recv", "--relay", "127.0.0.1:1"),
        capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, "BOB_PASSPHRASE": "3131-abandon-abilty"},
    )  # fmt: skip
    assert as_typed.stderr.splitlines()[0] == (
        "Note: '3131-abandon-abilty' has a word bob never chooses (did you mean"
        " 3131-abandon-ability?); using it as typed"
    )


def test_a_named_stream_in_and_one_file_out_on_stdout(relay: RelayProcess, tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    src = tmp_path / "data"
    src.write_bytes(data)
    with src.open("rb") as stdin:
        sender = send(relay, "--name", "backup.tar", "-", stdin=stdin)
    assert sender.seen[0] == "Sending unknown size file named 'backup.tar'"
    got = recv(relay, "--yes", "--stdout", CODE)
    assert (sender.finish(TIMEOUT)[0], got.returncode) == (0, 0), got.stderr
    assert got.stdout == data  # and nothing else: every word bob says is on stderr
    assert got.stderr.decode().splitlines()[1] == "  backup.tar  unknown size"


def out_line(proc: Process) -> bytes:
    """The next line `proc` writes on stdout, read as it comes; b"" if none in TIMEOUT."""
    assert proc.popen.stdout is not None
    fd, got = proc.popen.stdout.fileno(), b""
    while not got.endswith(b"\n"):
        if not select.select([fd], [], [], TIMEOUT)[0]:
            return b""
        byte = os.read(fd, 1)
        if not byte:
            break
        got += byte
    return got


def test_a_stream_that_pauses_is_sent_as_it_comes(relay: RelayProcess) -> None:
    """`tail -f log | bob send -`, or someone typing: what stdin gave went out only once a
    whole megabyte had come, so the receiver saw nothing, and gave up when it stayed quiet
    longer than its timeout."""
    sender = send(relay, "-", stdin=subprocess.PIPE)
    receiver: Process | None = None
    try:
        assert sender.popen.stdin is not None
        receiver = Process.start(bob_argv("recv", "--relay", relay.address, "--yes",
                                          "--stdout", CODE))  # fmt: skip
        sender.popen.stdin.write(b"the first line\n")
        sender.popen.stdin.flush()
        assert out_line(receiver) == b"the first line\n"  # the sender's stdin still open
        sender.popen.stdin.write(b"the last line\n")
        sender.popen.stdin.close()
        assert out_line(receiver) == b"the last line\n"
        assert (receiver.finish(TIMEOUT)[0], sender.finish(TIMEOUT)[0]) == (0, 0)
    finally:
        sender.stop()
        if receiver is not None:
            receiver.stop()


def out_bytes(proc: Process, count: int) -> bytes:
    """The next `count` bytes `proc` writes on stdout, read as they come; fewer if none
    come in TIMEOUT."""
    assert proc.popen.stdout is not None
    fd, got = proc.popen.stdout.fileno(), b""
    while len(got) < count and select.select([fd], [], [], TIMEOUT)[0]:
        chunk = os.read(fd, count - len(got))
        if not chunk:
            break
        got += chunk
    return got


def test_a_stream_that_pauses_after_whole_records_is_sent_as_it_comes(
    relay: RelayProcess,
) -> None:
    """stdin paused just after whole records (a read that filled its buffer): what it gave
    was held until more came or a megabyte had, so a receiver of a live sender saw
    nothing. The pipe holds the three records before the sender reads any, so each of its
    reads is a whole one."""
    ours, theirs = os.pipe2(os.O_CLOEXEC)
    with open(theirs, "wb", buffering=0) as writer:
        try:
            fcntl.fcntl(theirs, fcntl.F_SETPIPE_SZ, 4 * RECORD_SIZE)
            first = os.urandom(3 * RECORD_SIZE)
            writer.write(first)  # the pipe takes it all: nothing reads it yet
            sender = send(relay, "-", stdin=ours)
        finally:
            os.close(ours)
        receiver: Process | None = None
        try:
            receiver = Process.start(bob_argv("recv", "--relay", relay.address, "--yes",
                                              "--stdout", CODE))  # fmt: skip
            assert out_bytes(receiver, len(first)) == first  # the sender's stdin still open
            writer.write(b"the end\n")
            writer.close()
            assert out_bytes(receiver, 8) == b"the end\n"
            assert (receiver.finish(TIMEOUT)[0], sender.finish(TIMEOUT)[0]) == (0, 0)
        finally:
            sender.stop()
            if receiver is not None:
                receiver.stop()


def test_stdout_takes_one_file_only(relay: RelayProcess, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_text("a")
    sender = send(relay, str(tmp_path / "d"))
    got = recv(relay, "--yes", "--stdout", CODE)
    code, lines = sender.finish(TIMEOUT)
    assert (code, got.returncode) == (1, 1)
    assert got.stderr.decode().splitlines()[-1] == (
        "ERROR: not accepted: --stdout takes one file, and this is 1 file (1 byte) in folders:"
        " ask the sender to send it again, and receive it without --stdout"
    )
    # the receiver's user declined nothing: the sender hears why, and what to do
    assert lines[-1] == (
        "ERROR: the other side says: the receiver asked for the offer on its standard"
        " output, which takes one file or text: send it one file, or ask it to receive into"
        " a folder"
    )
    assert got.stdout == b""


def test_name_needs_the_stream() -> None:
    got = subprocess.run(
        bob_argv("send", "--name", "x", "file"), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert (got.returncode, got.stderr) == (
        2,
        "bob: --name names the stream: give it with - alone\n",
    )


def test_count_refuses_the_stream_it_could_read_only_once(relay: RelayProcess) -> None:
    """stdin is read once: a second receiver of `--count 2 -` got an empty file, and both
    sides said it was done. bob says so before any passphrase, and reads nothing."""
    sender = Process.start(
        bob_argv("send", "--relay", relay.address, "--count", "2", "-"), stdin=subprocess.PIPE
    )
    try:
        sender.wait_for(r"^bob: |^Passphrase: ")
        assert sender.seen[-1].startswith("bob: "), sender.seen  # not on to a passphrase
        code, lines = sender.finish(TIMEOUT)
    finally:
        assert sender.popen.stdin is not None
        sender.popen.stdin.close()
        sender.stop()
    assert (code, lines) == (
        2,
        [
            "bob: --count: stdin (-) can be read only once, so it goes to one receiver; save it"
            " to a file to send it to several"
        ],
    )


# -- a real terminal --------------------------------------------------------------------------


def test_completion_and_did_you_mean_at_the_prompt(relay: RelayProcess, tmp_path: Path) -> None:
    sender = send(relay, "--text", "typed by hand")
    receiver = Terminal.start(bob_argv("recv", "--relay", relay.address))
    try:
        receiver.until(b"Enter passphrase")
        receiver.type(b"3131-aban\t")  # Tab completes the word and adds the dash
        assert b"3131-abandon-" in receiver.until(b"abandon-")
        receiver.type(b"abilty\r")  # a typo in the last word
        asked = receiver.until(b"as typed] ")
        assert b"'3131-abandon-abilty' has a word bob never chooses:" in asked
        assert b"did you mean 3131-abandon-ability? [Y/n, n keeps it as typed] " in asked
        receiver.type(b"\r")
        assert b"typed by hand" in receiver.until(b"typed by hand")
        assert receiver.popen.wait(TIMEOUT) == 0
    finally:
        receiver.close()
    assert sender.finish(TIMEOUT)[0] == 0


def test_no_answer_to_did_you_mean_sends_nothing(relay: RelayProcess) -> None:
    """Ctrl-D at "did you mean" is neither answer: bob stops before the key exchange, so
    the sender's passphrase is not used up."""
    sender = send(relay, "--text", "still waiting")
    receiver = Terminal.start(bob_argv("recv", "--relay", relay.address, "3131-abandon-abilty"))
    try:
        receiver.until(b"as typed] ")
        receiver.type(b"\x04")
        assert b"bob: no answer: nothing was sent" in receiver.until(b"nothing was sent")
        assert receiver.popen.wait(TIMEOUT) == 2
    finally:
        receiver.close()
    # the offer is still open: the right passphrase takes it
    receiver = Terminal.start(bob_argv("recv", "--relay", relay.address, "3131-abandon-ability"))
    try:
        assert b"still waiting" in receiver.until(b"still waiting")
        assert receiver.popen.wait(TIMEOUT) == 0
    finally:
        receiver.close()
    assert sender.finish(TIMEOUT)[0] == 0


@pytest.mark.parametrize(
    ("code", "asked", "typed"),
    [
        ((), b"(Tab completes words): ", b"12-ab"),  # readline's prompt
        (("3131-abandon-abilty",), b"as typed] ", b"n"),  # a plain line on a terminal
    ],
)
def test_ctrl_c_at_a_prompt_says_so_on_a_line_of_its_own(
    code: tuple[str, ...], asked: bytes, typed: bytes
) -> None:
    """What was typed stays on the prompt's line; the error starts the next one."""
    receiver = Terminal.start(bob_argv("recv", "--relay", "127.0.0.1:1", *code))
    try:
        receiver.until(asked)
        receiver.type(typed)
        receiver.until(typed)
        receiver.type(b"\x03")
        shown = receiver.until(b"ERROR: interrupted\r\n")
        # a terminal may echo Ctrl-C as ^C, after what was typed
        assert shown.removeprefix(b"^C") == b"\r\nERROR: interrupted\r\n"
        assert receiver.popen.wait(TIMEOUT) == 130
    finally:
        receiver.close()


def test_ctrl_c_at_a_prompt_on_a_pipe_ends_the_prompt_s_line() -> None:
    proc = subprocess.Popen(
        bob_argv("recv", "--relay", "127.0.0.1:1"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stderr is not None
    try:
        shown = b""
        while not shown.endswith(b"Enter passphrase: "):
            chunk = proc.stderr.read1(4096)
            assert chunk, shown
            shown += chunk
        proc.send_signal(signal.SIGINT)
        assert proc.stderr.read() == b"\nERROR: interrupted\n"
        assert proc.wait(TIMEOUT) == 130
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stderr.close()
        proc.stdout.close()  # type: ignore[union-attr]


def test_ctrl_c_with_no_prompt_writes_over_its_echo_and_exits_130(relay: RelayProcess) -> None:
    """A sender waiting for its receiver: the terminal echoes the key as ^C at the start
    of a line, and the error used to follow it there ("^CERROR: interrupted"). 130 is
    what a shell reports for a command Ctrl-C stopped, and what `retreatkit` exits with."""
    sender = Terminal.start(bob_argv("send", "--relay", relay.address, "--no-qr", "--text", "x"))
    try:
        sender.until(b"bob recv --relay")
        sender.until(b"\r\n\r\n")
        sender.type(b"\x03")
        assert sender.popen.wait(TIMEOUT) == 130
        shown = sender.until(b"ERROR: interrupted\r\n")
        # the line starts over the echo, if any: on the screen, ERROR at the left
        assert shown.removeprefix(b"^C") == b"\rERROR: interrupted\r\n"
    finally:
        sender.close()


def test_the_passphrase_as_a_qr_code_on_a_terminal(relay: RelayProcess) -> None:
    for extra, shown in (((), True), (("--no-qr",), False)):
        sender = Terminal.start(bob_argv("send", "--relay", relay.address, *extra, "--text", "x"))
        try:
            text = sender.until(b"bob recv --relay").decode()
            passphrase = text.split("Passphrase: ")[1].split()[0]
            drawn = sender.until(b"\r\n\r\n" if not shown else b"\x1b[0m\r\n\r\n").decode()
            lines = [ln for ln in drawn.split("\r\n") if ln.startswith("\x1b[30;47m")]
            if shown:
                import segno

                expected = segno.make(qr.payload(parse(passphrase)), error="m", micro=False)
                want = [[bool(c) for c in row] for row in expected.matrix_iter(border=2)]
                assert qr.matrix_of(lines)[: len(want)] == want  # what a phone would read
            else:
                assert lines == []
        finally:
            sender.close()


def test_help_says_where_bob_connects_in_order() -> None:
    got = subprocess.run(bob_argv("--help"), capture_output=True, text=True, timeout=TIMEOUT)
    text = " ".join(got.stdout.split())
    assert (
        "Where bob connects, in this order: --relay HOST:PORT; else $BOB_RELAY; else the"
        " relays that announce themselves on the LAN (zeroconf, _retreat-relay._tcp), or"
        " for the receiver the sender itself when it announces the passphrase's number (the"
        " LAN's relays first, then every sender announcing it at once: only one that"
        " proves the passphrase counts); else relay.retreat.lan:9000. Anyone can announce"
        " a relay: bob takes one for each address announced, at most 4, in the order of the"
        " addresses, with relay.retreat.lan first when any is announced and the name"
        " resolves. The sender asks them all at once and waits at each that answers (it"
        " stops waiting a moment after the first answer, or after 1 s); the receiver tries"
        " them in that order, each until it answers or for 1 s."
        " Each at up to 4 of the addresses it announces on this computer's networks (never"
        " one elsewhere), each a moment after the one before: bob names the one that"
        " answered. A sender that no relay takes (none answers, or each is full or busy)"
        " waits for the receiver on the LAN itself."
    ) in text
