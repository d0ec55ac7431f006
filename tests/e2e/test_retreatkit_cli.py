"""`retreatkit up` and `retreatkit relay` as real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import pytest

from retreatkit.testing import Process

pytestmark = pytest.mark.e2e


def retreatkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "retreatkit.cli.main", *args]


def loopback_config(tmp_path: Path, nameserver_extra: str = "") -> Path:
    """Every service on a free loopback port, upstreams that are not there."""
    cfg = tmp_path / "retreat.toml"
    cfg.write_text(
        '[relay]\nlisten = "127.0.0.1:0"\n[admin]\nlisten = "127.0.0.1:0"\n'
        f'[mirror]\nlisten = "127.0.0.1:0"\nstore = "{tmp_path / "store"}"\n'
        'pypi = "http://127.0.0.1:1/simple/"\nopam = "http://127.0.0.1:1/opam"\n'
        '[nameserver]\nlisten = "127.0.0.1:0"\nupstreams = ["127.0.0.1:9"]\n' + nameserver_extra
    )
    return cfg


@pytest.mark.parametrize("command", ["up", "relay"])
def test_serves_relay_and_admin(tmp_path: Path, command: str) -> None:
    cfg = loopback_config(tmp_path)
    proc = Process.start(retreatkit("--config", str(cfg), command))
    try:
        proc.wait_for(r"^Relay listening on 127\.0\.0\.1:\d+$")
        if command == "up":
            proc.wait_for(r"^Mirror listening on http://127\.0\.0\.1:\d+/ ")
            ns = proc.wait_for(r"^Nameserver listening on 127\.0\.0\.1:(\d+) \(UDP and TCP\)$")
            # the services of `up` have names on the LAN
            query = dns.message.make_query("relay.retreat.lan", "A")
            answer = dns.query.udp(query, "127.0.0.1", port=int(ns[1]), timeout=10)
            assert answer.answer and answer.answer[0].name.to_text() == "relay.retreat.lan."
        admin = proc.wait_for(r"^Admin on (http://\S+)/status$")[1]
        with urllib.request.urlopen(f"{admin}/healthz", timeout=10) as r:
            assert r.read() == b"ok\n"
        with urllib.request.urlopen(f"{admin}/status", timeout=10) as r:
            doc = json.load(r)
        assert doc["relay"]["connections_open"] == 0
        expected = {"relay", "mirror", "nameserver"} if command == "up" else {"relay"}
        assert expected <= set(doc)
    finally:
        assert proc.stop() == 0  # SIGTERM is a clean stop


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "retreat.toml"
    cfg.write_text("[relay]\nbogus = 1\n")
    got = subprocess.run(
        retreatkit("--config", str(cfg), "up"), capture_output=True, text=True, timeout=60
    )
    assert got.returncode == 2
    assert got.stderr == f"retreatkit: {cfg}: unknown key 'bogus' in [relay]\n"


def test_up_fetches_blocklists_through_its_mirror(tmp_path: Path) -> None:
    from retreatkit.mirror.lists import list_key
    from retreatkit.mirror.testing import start_upstream

    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "ads.txt").write_text("||ads.example.test^\n")
    upstream = start_upstream(lists)
    url = f"{upstream.url}ads.txt"
    cfg = loopback_config(tmp_path, f'blocklists = ["{url}"]\n')
    proc = Process.start(retreatkit("--config", str(cfg), "up"))
    try:
        mirror = proc.wait_for(r"^Mirror listening on (http://\S+) ")[1]
        ns = proc.wait_for(r"^Nameserver listening on 127\.0\.0\.1:(\d+) ")[1]
        proc.wait_for(r"blocklists loaded: 1 domain$")
        query = dns.message.make_query("ads.example.test", "A")
        answer = dns.query.udp(query, "127.0.0.1", port=int(ns), timeout=10)
        assert answer.answer[0][0].address == "0.0.0.0"
        with urllib.request.urlopen(f"{upstream.url}_stats", timeout=10) as r:
            assert json.load(r)["/ads.txt"] == 1  # fetched by the mirror, for everyone
        upstream.stop()  # the uplink goes; the mirror still has the list
        with urllib.request.urlopen(f"{mirror}lists/{list_key(url)}", timeout=10) as r:
            assert r.read() == b"||ads.example.test^\n"
        missing = f"{mirror}lists/{list_key('http://elsewhere.invalid/x')}"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(missing, timeout=10)
        assert err.value.code == 404  # only the lists it was given: not an open proxy
        err.value.close()
    finally:
        proc.stop()
        upstream.stop()
