"""The relay's admin surface as the dashboard reads it (docs/admin-api.md)."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from typing import Any

from retreatkit.testing import Process, RelayProcess, bob_argv, start_relay


def get(relay: RelayProcess, path: str) -> Any:
    with urllib.request.urlopen(f"{relay.admin}{path}", timeout=10) as response:
        return json.load(response)


def test_relay_reports_status(relay: RelayProcess) -> None:
    status = relay.status()
    assert status["relay"]["up"] is True
    assert status["relay"]["connections_open"] == 0
    assert status["relay"]["waiting_senders"] == 0
    assert get(relay, "/relay/transfers") == {"active": [], "recent": []}


def test_a_transfer_shows_in_the_list_without_its_words(relay: RelayProcess) -> None:
    sender = Process.start(
        bob_argv("send", "--relay", relay.address, "--text", "hello"),
        env={"BOB_PASSPHRASE": "4321-alpha-abandon"},
    )
    sender.wait_for(r"^Passphrase: ")
    got = subprocess.run(
        bob_argv("recv", "--relay", relay.address, "4321-alpha-abandon"),
        capture_output=True,
        timeout=60,
    )
    assert sender.finish(60)[0] == got.returncode == 0
    listed = get(relay, "/relay/transfers")
    assert listed["active"] == []
    [done] = listed["recent"]
    assert done["nameplate"] == "4321" and done["ended"] == "completed"
    assert set(done) == {
        "nameplate", "bytes", "started_at", "duration_seconds", "rate_bytes_per_second", "ended"
    }  # fmt: skip
    status = relay.status()["relay"]
    assert status["transfers_completed"] == 1 and status["bytes_relayed"] == done["bytes"]
    assert status["ended"]["completed"] == 2
    for doc in (listed, status):
        assert "alpha" not in json.dumps(doc) and "abandon" not in json.dumps(doc)


def test_a_sender_waiting_when_the_relay_stops_is_told_so() -> None:
    """The organiser quits `retreatkit up` while a sender waits: the sender's one line says
    the relay stopped, not only that the connection closed."""
    relay = start_relay()
    sender = Process.start(bob_argv("send", "--relay", relay.address, "--no-qr", "--text", "hi"))
    try:
        sender.wait_for(r"^Passphrase: ")
        assert relay.stop() == 0
        code, said = sender.finish(60)
    finally:
        sender.stop()
    assert code == 1
    assert said[-1] == (
        f"ERROR: the relay at {relay.address} says: it is stopping (its organiser stopped it)"
    )
