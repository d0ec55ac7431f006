"""What a bob run loads, seen from outside (`python -X importtime`): every module costs each
run CPU time, whatever the file's size, so what only some paths use loads only on them.
A run given its relay (--relay or BOB_RELAY) never looks for one on the LAN (zeroconf);
with --no-direct it lists no addresses of its own (ifaddr, whose import runs `ldconfig
-p`); a transfer that resumes nothing hashes nothing (blake3); without a terminal there is
no QR code (segno), no completing prompt (readline) and no progress bar (rich)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from retreatkit.testing import Process, RelayProcess, bob_argv

pytestmark = pytest.mark.e2e
TIMEOUT = 60
NEVER = ("zeroconf", "blake3", "segno", "readline", "rich")


def traced(*args: str) -> list[str]:
    """bob's argv, the interpreter reporting each module it imports on stderr."""
    python, *rest = bob_argv(*args)
    return [python, "-X", "importtime", *rest]


def loaded(lines: list[str]) -> set[str]:
    """The top-level packages imported, from -X importtime's lines."""
    names = {line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")}
    return {name.split(".")[0] for name in names} - {"imported package"}


def said(lines: list[str]) -> list[str]:
    return [line for line in lines if not line.startswith("import time:")]


@pytest.mark.parametrize(
    ("given", "direct"),
    [("--relay", False), ("--relay", True), ("BOB_RELAY", False)],
    ids=["relay-no-direct", "relay-direct", "env-no-direct"],
)
def test_a_run_loads_only_what_its_path_uses(
    relay: RelayProcess, tmp_path: Path, home: dict[str, str], given: str, direct: bool
) -> None:
    src = tmp_path / "note.txt"
    src.write_bytes(b"hi\n")
    out = tmp_path / "out"
    out.mkdir()
    where = ["--relay", relay.address] if given == "--relay" else []
    # an empty BOB_RELAY is none: the user's own is not this test's
    env = {**home, "BOB_RELAY": relay.address if given == "BOB_RELAY" else ""}
    flags = [*where, *([] if direct else ["--no-direct"])]
    sender = Process.start(
        traced("send", *flags, str(src)), env={**env, "BOB_PASSPHRASE": "31-alpha-beta"}
    )
    sender.wait_for(r"^Passphrase: ")
    got = subprocess.run(
        traced("recv", *flags, "--yes", "--output", str(out), "31-alpha-beta"),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, **env},
    )
    code, lines = sender.finish(TIMEOUT)
    receiver = got.stderr.splitlines()
    assert code == 0, said(lines)
    assert got.returncode == 0, said(receiver)
    assert (out / "note.txt").read_bytes() == b"hi\n"
    path = "Path: direct" if direct else "Path: relay"
    assert path in said(lines)
    assert path in said(receiver)
    for side in (loaded(lines), loaded(receiver)):
        assert "retreatkit" in side  # the trace is read as it should be
        assert sorted(side & set(NEVER)) == []
        # the addresses a direct connection is offered: only when it is tried
        assert ("ifaddr" in side) is direct
