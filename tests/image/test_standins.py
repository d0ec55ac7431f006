"""prometheus_client in a guest: it renders metrics with its serving modules as stand-ins
(and OpenSSL left out of an image without TLS), and nothing loaded later mistakes a
stand-in for the real module. In a fresh interpreter, as the guest starts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from retreatkit.image import spec, standins

GUEST = """
import json, sys
class LeaveOut:  # what the build leaves out is not there to import, as in the guest
    def find_spec(self, name, path=None, target=None):
        if name in {left_out!r}:
            raise ModuleNotFoundError(name, name=name)
sys.meta_path.insert(0, LeaveOut())
from retreatkit.image import standins
standins.load()
import prometheus_client
from prometheus_client import exposition
serving_loaded = sorted(m for m in {serving!r} if m in sys.modules)
import http, urllib, wsgiref
left_behind = [p for p, c in ((http, "server"), (urllib, "error"), (urllib, "request"),
                              (wsgiref, "simple_server")) if hasattr(p, c)]
import asyncio.sslproto, aiohttp.connector, hashlib, http.server
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
    "serving modules while prometheus_client loaded": serving_loaded,
    "stand-ins left on their packages": [p.__name__ for p in left_behind],
    "exposition's handler": [c.__module__ for c in exposition.MetricsHandler.__mro__],
    "http.server later": http.server.BaseHTTPRequestHandler.__module__,
}}))
"""


def test_prometheus_client_without_openssl() -> None:
    left_out = sorted(set(spec.spec("relay").leave_out) & {"ssl", "_ssl", "_hashlib"})
    assert left_out == ["_hashlib", "_ssl", "ssl"]  # the relay's image leaves OpenSSL out
    done = subprocess.run(
        [sys.executable, "-I", "-c", GUEST.format(left_out=left_out, serving=standins.SERVING)],
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
    assert seen["serving modules while prometheus_client loaded"] == []
    assert seen["stand-ins left on their packages"] == []
    assert seen["exposition's handler"] == [
        "prometheus_client.exposition", "http.server", "retreatkit.image.standins", "builtins"
    ]  # fmt: skip
    assert seen["http.server later"] == "http.server"  # the real one, for whoever wants it


def test_an_image_with_tls_keeps_the_real_ssl() -> None:
    assert "ssl" not in spec.spec("mirror").leave_out
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from retreatkit.image import standins; standins.load(); import ssl, prometheus_client;"
            "from prometheus_client import exposition;"
            "print(exposition.ssl is ssl, ssl.OPENSSL_VERSION[:7])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.split() == ["True", "OpenSSL"]


def test_a_stand_in_gives_a_class_of_its_own_per_name() -> None:
    module = standins.stand_in("socketserver")
    mixin, again, other = module.ThreadingMixIn, module.ThreadingMixIn, module.TCPServer
    assert mixin is again and mixin is not other

    class Both(mixin, other):  # type: ignore[misc,valid-type]  # exposition's servers do this
        pass

    with pytest.raises(RuntimeError, match="this guest does not use this module"):
        Both()
    with pytest.raises(AttributeError):
        module.__path__  # noqa: B018  (not a package: importing beneath it fails plainly)


DNSPYTHON = """
import json, sys
from retreatkit.image import spec, standins
standins.load(spec.spec("nameserver").first)
import dns._features, dns.message, dns.name
print(json.dumps({
    "metadata loaded": "importlib.metadata" in sys.modules,
    "idna": dns._features.have("idna"),
    "dnssec": dns._features.have("dnssec"),
    "name": dns.name.from_text("Retreat.LAN").to_text(),
}))
"""


def test_dnspython_checks_its_features_without_package_metadata() -> None:
    # a guest ships no package metadata: each feature check finds nothing, as it would
    # with importlib.metadata there, but without loading it
    done = subprocess.run(
        [sys.executable, "-I", "-c", DNSPYTHON],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = json.loads(done.stdout)
    assert seen == {
        "metadata loaded": False, "idna": False, "dnssec": False, "name": "Retreat.LAN."
    }  # fmt: skip


AIOHTTP = """
import asyncio, json, sys
from retreatkit.image import standins
standins.load(("aiohttp.web",))  # as the mirror's guest starts
stood_in = sorted(m for m in standins.AIOHTTP_UNUSED if m in sys.modules)
import aiohttp, aiohttp.helpers
from aiohttp import web

async def fetch() -> str:
    app = web.Application()
    app.router.add_get("/", lambda request: web.Response(text="served"))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:  # a session as the mirror makes one: trusting nothing in the environment
        async with aiohttp.ClientSession(trust_env=False) as session:
            async with session.get(f"http://127.0.0.1:{port}/") as response:
                return await response.text()
    finally:
        await runner.cleanup()

try:
    aiohttp.helpers.getproxies()
    proxies = "read"
except RuntimeError as exc:
    proxies = str(exc)
import urllib.request
print(json.dumps({
    "loaded while aiohttp loaded": stood_in,
    "fetched": asyncio.run(fetch()),
    "environment's proxies": proxies,
    "urllib.request later": urllib.request.urlopen.__module__,
}))
"""


def test_aiohttp_serves_and_fetches_beside_its_stand_ins() -> None:
    done = subprocess.run(
        [sys.executable, "-I", "-c", AIOHTTP],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""},  # never read
    )
    seen = json.loads(done.stdout)
    assert seen == {
        "loaded while aiohttp loaded": [],
        "fetched": "served",
        "environment's proxies": "a stand-in: this guest does not use this module",
        "urllib.request later": "urllib.request",  # the real one, for whoever wants it
    }
    assert spec.spec("mirror").first == ("aiohttp.web",)  # the image that loads it this way
