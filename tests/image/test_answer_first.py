"""A guest's service answers before the admin endpoint's code is loaded.

On an emulated CPU a guest spends about a second importing aiohttp's server; the relay and
the nameserver need none of it to answer, so it loads after they listen, beside them. Run
as the guest runs them, in a fresh interpreter: which modules are loaded when the service
says it listens, and when the admin endpoint says it is up.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

GUEST = """
import json, os, signal, sys
from retreatkit.image import spec, standins
name = sys.argv[1]
standins.load(spec.spec(name).first)  # as the guest's init does, before the service's imports
from retreatkit import config, loop, serve
from retreatkit.image import guest
cfg = config.load(None)
cfg["admin"]["listen"] = "127.0.0.1:0"
cfg[name]["listen"] = "127.0.0.1:0"
cfg["nameserver"]["upstreams"] = ["127.0.0.1:9"]  # never asked: nothing is queried
watched = ("aiohttp", "aiohttp.web", "retreatkit.admin.app", "http.server", "tomllib",
           "importlib.metadata")
seen = {}
def say(line):
    if " listening on " in line:
        seen["listening"] = [m for m in watched if m in sys.modules]
    if line.startswith("Admin on http://"):
        seen["admin"] = [m for m in watched if m in sys.modules]
        os.kill(os.getpid(), signal.SIGTERM)
loop.run(lambda: serve.serve(guest.services(name, cfg), ("127.0.0.1", 0), say, on_lan=False))
print(json.dumps(seen))
"""


@pytest.mark.parametrize("service", ["relay", "nameserver"])
def test_the_service_listens_before_the_admin_code_loads(service: str) -> None:
    done = subprocess.run(
        [sys.executable, "-I", "-c", GUEST, service],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["listening"] == []
    assert seen["admin"] == ["aiohttp", "aiohttp.web", "retreatkit.admin.app"]


def test_a_guests_mirror_offers_no_wheel_of_the_kit(tmp_path: Path) -> None:
    # a guest's kit is compiled modules without sources or package metadata: the wheel
    # it would make is nothing, so it does not try (a process facing the LAN does)
    from retreatkit import config, hosting
    from retreatkit.image import guest

    cfg = config.load(None)
    cfg["mirror"]["store"] = str(tmp_path / "store")
    [in_guest] = guest.services("mirror", cfg)
    [on_lan] = hosting.services(argparse.Namespace(command="mirror"), cfg)
    assert (in_guest.offers_own_wheel, on_lan.offers_own_wheel) == (False, True)  # type: ignore[attr-defined]
