"""What `bob send` and `bob recv` say, in process: where a relay's address came from and
what to do about it, why an offer was refused, and where the files went. The peer on the
other side, where there is one, is a real `bob send` through a real relay."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from retreatkit.cli import bob, relayhelp
from retreatkit.testing import Process, RelayProcess, bob_argv
from retreatkit.transfer import find
from retreatkit.transfer.link import NoAnswer, Relay, RelayError, Unreachable

TIMEOUT = 60.0
LOOK = "to let bob look for one on the LAN"


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No relay or passphrase from the environment the tests run in; and the objects
    bob.main freezes (gc.freeze, for its exit) are the collector's again afterwards."""
    monkeypatch.delenv("BOB_RELAY", raising=False)
    monkeypatch.delenv("BOB_PASSPHRASE", raising=False)
    yield
    gc.unfreeze()


def last_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert bob.main(argv) == 1
    return capsys.readouterr().err.splitlines()[-1]


REFUSED = "ERROR: cannot reach the relay at 127.0.0.1:1: Connection refused"


@pytest.mark.parametrize(
    ("argv", "env", "advice"),
    [
        (
            ["send", "--text", "hi"],
            "127.0.0.1:1",
            f"BOB_RELAY names 127.0.0.1:1: check it, give --relay HOST:PORT, or unset it {LOOK}",
        ),
        (
            ["recv", "4-abandon-ability"],
            "127.0.0.1:1",
            f"BOB_RELAY names 127.0.0.1:1: check it, give --relay HOST:PORT, or unset it {LOOK}",
        ),
        (
            ["send", "--relay", "127.0.0.1:1", "--text", "hi"],
            None,
            f"--relay names 127.0.0.1:1: check it, or leave it out {LOOK}",
        ),
        (
            ["recv", "--relay", "127.0.0.1:1", "4-abandon-ability"],
            "127.0.0.1:2",
            "--relay names 127.0.0.1:1: check it, or leave it out to use BOB_RELAY's 127.0.0.1:2",
        ),
        (
            ["recv", "--relay", "127.0.0.1:1", "4-abandon-ability"],
            "127.0.0.1:1",
            f"--relay and BOB_RELAY name 127.0.0.1:1: check it, or leave out both {LOOK}",
        ),
    ],
)
def test_a_relay_out_of_reach_is_named_with_where_its_address_came_from(
    argv: list[str],
    env: str | None,
    advice: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With BOB_RELAY set, bob said to "give --relay HOST:PORT or set BOB_RELAY": to set
    what was set."""
    if env is not None:
        monkeypatch.setenv("BOB_RELAY", env)
    assert last_error(argv, capsys) == f"{REFUSED} ({advice})"


def test_a_relay_from_the_lan_or_the_default_name_is_said_to_be_so() -> None:
    gone = Unreachable(Relay("10.77.0.1", 9000), "Connection refused")
    lan = find.Target(Relay("10.77.0.1", 9000), "lan")
    assert str(relayhelp.advised(gone, lan)) == (
        "cannot reach the relay at 10.77.0.1:9000: Connection refused (announced on the LAN:"
        " give --relay HOST:PORT, or set BOB_RELAY, for another relay)"
    )
    silent = NoAnswer("the relay did not answer in time")
    default = find.Target(Relay("10.77.0.53", 9000), "default")  # the name, resolved
    assert str(relayhelp.advised(silent, default)) == (
        "the relay did not answer in time (relay.retreat.lan:9000 is the relay bob tries when"
        " given none and none is announced: give --relay HOST:PORT or set BOB_RELAY)"
    )
    set_by_env = find.Target(Relay("10.77.0.1", 9999), "BOB_RELAY")
    assert str(relayhelp.advised(silent, set_by_env)) == (
        "the relay did not answer in time (BOB_RELAY names 10.77.0.1:9999: check it, give"
        f" --relay HOST:PORT, or unset it {LOOK})"
    )
    # the relay answered: what it said stands alone; a sender on the LAN is no relay
    said = RelayError("the relay says: no sender is waiting on nameplate 4")
    assert relayhelp.advised(said, set_by_env) is said
    assert relayhelp.advised(gone, find.Target(gone.relay, "peer")) is gone


def send(relay: RelayProcess, path: Path, passphrase: str) -> Process:
    proc = Process.start(
        bob_argv("send", "--relay", relay.address, str(path)),
        env={"BOB_PASSPHRASE": passphrase},
    )
    proc.wait_for(r"^Passphrase: ")
    return proc


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    tree = tmp_path / "d"
    (tree / "sub").mkdir(parents=True)
    (tree / "a").write_text("a")
    (tree / "sub" / "b").write_text("b")
    return tree


def test_stdout_refuses_a_folder_and_the_sender_hears_why(
    relay: RelayProcess, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The receiver's user declined nothing, yet the sender was told "the receiver
    declined the transfer"."""
    sender = send(relay, folder, "21-alpha-beta")
    try:
        argv = ["recv", "--relay", relay.address, "--yes", "--stdout", "21-alpha-beta"]
        said = last_error(argv, capsys)
        code, lines = sender.finish(TIMEOUT)
    finally:
        sender.stop()
    assert said == (
        "ERROR: not accepted: --stdout takes one file, and this is 2 files (2 bytes) in"
        " folders: ask the sender to send it again, and receive it without --stdout"
    )
    assert (code, lines[-1]) == (
        1,
        "ERROR: the other side says: the receiver asked for the offer on its standard"
        " output, which takes one file or text: send it one file, or ask it to receive into"
        " a folder",
    )


def test_the_last_line_names_the_folder_absolute(
    relay: RelayProcess,
    folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    here = tmp_path / "recv\u200bone"
    here.mkdir()
    monkeypatch.chdir(here)
    sender = send(relay, folder, "22-alpha-beta")
    try:
        status = bob.main(["recv", "--relay", relay.address, "--yes", "22-alpha-beta"])
        assert (status, sender.finish(TIMEOUT)[0]) == (0, 0)
    finally:
        sender.stop()
    shown = f"{tmp_path}/recv\\u200bone"
    assert capsys.readouterr().err.splitlines()[-1] == f"Received 2 files into: {shown}"
