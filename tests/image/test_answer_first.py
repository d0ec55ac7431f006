"""A guest's service answers before the admin endpoint's code is loaded (and the mirror
before aiohttp's client is).

On an emulated CPU a guest spends about a second importing aiohttp's server; the relay and
the nameserver need none of it to answer, so it loads after they listen, beside them. Run
as the guest runs them, in a fresh interpreter: which modules are loaded when the service
says it listens, and when the admin endpoint says it is up.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from retreatkit.image import spec
from retreatkit.image.lazyinit import lazy_init

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


LAZY_MIRROR = """
import json, os, signal, sys
sys.path.insert(0, sys.argv[2])  # aiohttp with its __init__ made lazy, as the image ships it
from retreatkit.image import spec, standins
standins.load(spec.spec("mirror").first)
from retreatkit import config, loop, serve
from retreatkit.image import guest
cfg = config.load(None)
cfg["admin"]["listen"] = "127.0.0.1:0"
cfg["mirror"].update(listen="127.0.0.1:0", store=sys.argv[1], pypi="http://127.0.0.1:9/")
seen = {}
def say(line):
    if " listening on " in line:
        seen["aiohttp from"] = sys.modules["aiohttp"].__file__
        seen["client when listening"] = "aiohttp.client" in sys.modules
    if line.startswith("Admin on http://"):
        os.kill(os.getpid(), signal.SIGTERM)
loop.run(lambda: serve.serve(guest.services("mirror", cfg), ("127.0.0.1", 0), say, on_lan=False))
print(json.dumps(seen))
"""


def test_a_guests_mirror_listens_before_aiohttps_client_loads(tmp_path: Path) -> None:
    """Its upstream session (and with it aiohttp's client, about a second on an emulated
    CPU) is made after it listens (mirror/resolver.Sessions), where its aiohttp imports
    names when first read (image/lazyinit.py)."""
    assert spec.spec("mirror").lazy == ("aiohttp",)
    real = Path(aiohttp.__file__).parent
    shutil.copytree(
        real, tmp_path / "lib" / "aiohttp", ignore=shutil.ignore_patterns("__pycache__")
    )
    init = tmp_path / "lib" / "aiohttp" / "__init__.py"
    init.write_text(lazy_init("aiohttp", (real / "__init__.py").read_text()))
    done = subprocess.run(
        [sys.executable, "-I", "-c", LAZY_MIRROR, str(tmp_path / "store"), str(tmp_path / "lib")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"aiohttp from": str(init), "client when listening": False}
