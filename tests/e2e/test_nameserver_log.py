"""What the organiser's log says, from a real nameserver process: its upstream (a zone
served by the test) going silent and coming back, and actions over the admin endpoint
with the token."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from retreatkit.nameserver.fakes import Zone
from retreatkit.nameserver.testing import NameserverProcess, ZoneUpstream, start_nameserver

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (.ci/run does)"),
]
ZONE = Zone("$TTL 60\n@ SOA ns.test. h.test. 1 3600 600 86400 60\n*.example A 198.51.100.7\n")
STAMP = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "  # the log's own time, before each line


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[NameserverProcess, ZoneUpstream]]:
    upstream = ZoneUpstream(ZONE)
    config = tmp_path / "retreat.toml"
    config.write_text("[nameserver]\nupstream_recheck = 1.0\n")  # a down upstream: 1 s, not 30
    ns = start_nameserver("--upstream", upstream.address, config=config)
    yield ns, upstream
    ns.stop()
    upstream.stop()


def dig(port: int, name: str) -> subprocess.Popen[str]:
    argv = ["dig", "@127.0.0.1", "-p", str(port), "+time=5", "+tries=1", "+short", name]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


def answer(port: int, name: str) -> str:
    return dig(port, name).communicate(timeout=30)[0].strip()


def logged(ns: NameserverProcess, text: str, level: str = "INFO") -> None:
    """Wait for this very line from the nameserver's log."""
    ns.process.wait_for(STAMP + re.escape(f"retreatkit.nameserver {level} {text}") + "$")


def test_an_upstream_going_silent_and_coming_back_is_a_line_per_change(
    served: tuple[NameserverProcess, ZoneUpstream],
) -> None:
    ns, upstream = served
    where = f"upstream {upstream.address}"
    assert answer(ns.port, "a.example.test") == "198.51.100.7"
    logged(ns, f"{where} is up")
    upstream.silent = True
    # three questions at once, none answered: each fails after its 1.5 s, together
    asking = [dig(ns.port, f"{n}.silent.example.test") for n in range(3)]
    for client in asking:
        client.communicate(timeout=30)  # SERVFAIL, from us
    logged(ns, f"{where} is failing (was up): no answer in time")
    down = "no answer in time, 3 failures in a row; next check in 1 s"
    logged(ns, f"{where} is down (was failing): {down}", "WARNING")
    upstream.silent = False
    # every question gets SERVFAIL at once until the recheck's check question passes
    deadline = time.monotonic() + 30
    while answer(ns.port, "b.example.test") != "198.51.100.7":
        assert time.monotonic() < deadline, "the upstream back was never asked again"
        time.sleep(0.05)  # polling: nothing says when the recheck falls due
    logged(ns, f"{where} is up (was down)")
    lines = [line.split(" INFO ", 1)[-1].split(" WARNING ", 1)[-1] for line in ns.process.seen]
    assert [line for line in lines if line.startswith("upstream ")] == [
        f"{where} is up",
        f"{where} is failing (was up): no answer in time",
        f"{where} is down (was failing): {down}",
        f"{where} is up (was down)",
    ]  # one line per change, not one per failed query


def test_names_whose_servers_are_silent_leave_the_upstream_up() -> None:
    """Three names in a zone whose own servers never answer, asked at once, while the
    upstream answers everything else (a check question among them): up it stays, no
    line (before: down, and every other name SERVFAIL for 30 s)."""
    upstream = ZoneUpstream(ZONE, silent_under="dead.example.test")
    ns = start_nameserver("--upstream", upstream.address)
    where = f"upstream {upstream.address}"
    try:
        assert answer(ns.port, "a.example.test") == "198.51.100.7"
        asking = [dig(ns.port, f"{n}.dead.example.test") for n in range(3)]
        for client in asking:
            client.communicate(timeout=30)  # SERVFAIL, from us
        assert answer(ns.port, "b.example.test") == "198.51.100.7"
        ns.process.popen.terminate()
        _, seen = ns.process.finish()
        assert [line for line in seen if f"{where} is" in line][-1].endswith(f"INFO {where} is up")
        assert len([line for line in seen if f"{where} is" in line]) == 1  # no other state
    finally:
        ns.stop()
        upstream.stop()


def test_admin_actions_over_http_are_a_line_each(
    served: tuple[NameserverProcess, ZoneUpstream],
) -> None:
    ns, _ = served
    done = ns.request("POST", "/nameserver/blocking/pause", {"minutes": 5})
    assert isinstance(done, dict)
    until = done["blocking"].removeprefix("paused until ")
    logged(ns, f"admin (127.0.0.1): blocking paused for 5 min, until {until}")
    ns.request("PUT", "/nameserver/records/wiki.retreat.lan", {"value": "10.53.0.9"})
    logged(ns, "admin (127.0.0.1): local name wiki.retreat.lan set: A 10.53.0.9 (new)")
    assert answer(ns.port, "wiki.retreat.lan") == "10.53.0.9"
