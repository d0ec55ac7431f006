"""An image without TLS: prometheus_client works with OpenSSL left out, and nothing else
mistakes its stand-in `ssl` for TLS. In a fresh interpreter, as the guest starts."""

from __future__ import annotations

import json
import subprocess
import sys

from retreatkit.image import spec

GUEST = """
import json, sys
class LeaveOut:  # what the build leaves out is not there to import, as in the guest
    def find_spec(self, name, path=None, target=None):
        if name in {left_out!r}:
            raise ModuleNotFoundError(name, name=name)
sys.meta_path.insert(0, LeaveOut())
from retreatkit.image import nossl
nossl.load()
import asyncio.sslproto, aiohttp.connector, hashlib, prometheus_client
counter = prometheus_client.Counter("guest_things", "things", registry=None)
registry = prometheus_client.CollectorRegistry()
registry.register(counter)
counter.inc()
try:
    import ssl
    later = "imported"
except ImportError:
    later = "absent"
print(json.dumps({{
    "metrics": prometheus_client.generate_latest(registry).decode(),
    "ssl later": later,
    "aiohttp's ssl": repr(aiohttp.connector.ssl),
    "asyncio's ssl": repr(asyncio.sslproto.ssl),
    "sha256": hashlib.sha256(b"x").hexdigest()[:8],
    "loaded": sorted(m for m in sys.modules if m in {left_out!r}),
}}))
"""


def test_prometheus_client_without_openssl() -> None:
    left_out = sorted(set(spec.spec("relay").leave_out) & {"ssl", "_ssl", "_hashlib"})
    assert left_out == ["_hashlib", "_ssl", "ssl"]  # the relay's image leaves OpenSSL out
    done = subprocess.run(
        [sys.executable, "-c", GUEST.format(left_out=left_out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = json.loads(done.stdout)
    assert "guest_things_total 1.0" in seen["metrics"]
    assert seen["ssl later"] == "absent"
    assert seen["aiohttp's ssl"] == "None"
    assert seen["asyncio's ssl"] == "None"
    assert seen["sha256"] == "2d711642"
    assert seen["loaded"] == []


def test_an_image_with_tls_keeps_the_real_ssl() -> None:
    assert "ssl" not in spec.spec("mirror").leave_out
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from retreatkit.image import nossl; nossl.load(); import ssl, prometheus_client;"
            "from prometheus_client import exposition;"
            "print(exposition.ssl is ssl, ssl.OPENSSL_VERSION[:7])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.split() == ["True", "OpenSSL"]
