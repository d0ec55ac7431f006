"""prometheus_client in a guest: what its exposition module imports for serving and pushing
metrics, which no guest does, is a stand-in while it loads.

The exposition module imports, at its top, an HTTP server (http.server, socketserver,
wsgiref), urllib's client for its push gateway and `ssl` for its TLS exporter. A guest
only renders metrics (`generate_latest`) for its admin endpoint, which aiohttp serves.
Loading those modules is a quarter of what a relay imports before it can answer, about
0.3 s on an emulated CPU; `ssl` also brings OpenSSL (libcrypto and libssl, 2.2 MB) into
images that speak no TLS (the relay's and the nameserver's).

`load()` imports prometheus_client with stand-ins for those modules: each name read from
one is a class of its own (exposition derives its servers from them), never usable. Then
the stand-ins go away, so any module imported later (aiohttp, asyncio, urllib) finds the
real module, or `ssl` absent where the image leaves it out, as each of them allows, and
never mistakes a stand-in for the real thing.

dnspython (in the nameserver's image) checks its optional features (IDNA 2008, DNSSEC, DoH)
at import by reading installed versions with importlib.metadata. A guest ships no package
metadata, so every check finds nothing either way; with a stand-in importlib.metadata the
checks cost nothing instead of 0.2 s under emulation, and the build's probe, which runs
where the metadata is, sees what the guest will see.

aiohttp's server (in an image whose service imports it before it answers: the mirror's)
imports at its top urllib's client and netrc, for the proxies and credentials a session
takes from the environment and ~/.netrc when it trusts the environment (no session in the
kit does: a guest talks to the upstreams it was given), and uuid, for the boundary of a
multipart body it sends. With stand-ins for those three the mirror's guest holds 0.7 MB
less and loads ten modules fewer before it answers. aiohttp's client, which the mirror's
guest loads later (its __init__ is made lazy: image/lazyinit.py), imports pickle for
saving a cookie jar to a file: that one is shipped, since no stand-in is in place then.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

LEFT_OUT = ("ssl", "_ssl", "_hashlib")  # hashlib falls back to the interpreter's own hashes
# what prometheus_client's exposition imports only to serve or push metrics
SERVING = (
    "http.server",
    "socketserver",
    "urllib.error",
    "urllib.request",
    "wsgiref.simple_server",
)

# what aiohttp's server imports only for sessions that trust the environment and
# multipart bodies it sends (above)
AIOHTTP_UNUSED = ("urllib.request", "netrc", "uuid")
# what a module a guest's service imports before it answers (its spec's `first`) is
# imported beside
BESIDE = {"dns._features": ("importlib.metadata",), "aiohttp.web": AIOHTTP_UNUSED}


class StandIn:
    """The base of every name a stand-in module gives: a type, never usable."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a stand-in: this guest does not use this module")


def stand_in(module: str) -> types.ModuleType:
    """A module whose every name is a class of its own (a class may derive from two)."""
    made: dict[str, type] = {}

    def any_name(name: str) -> type:
        if name.startswith("__"):  # a module's own attributes (__path__, __file__) stay absent
            raise AttributeError(name)
        return made.setdefault(name, type(name, (StandIn,), {"__module__": module}))

    found = types.ModuleType(module, "a stand-in: this guest does not use it")
    vars(found)["__getattr__"] = any_name  # PEP 562: every name resolves
    return found


def _missing(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return True
    return False


def load(first: tuple[str, ...] = ()) -> None:
    """Import prometheus_client with stand-ins for its serving modules (and for `ssl` where
    the image leaves it out), then each of `first` (what the service imports before it
    answers: dnspython's feature checks, aiohttp) beside its own, then take the stand-ins
    away."""
    left_out = ["ssl"] if _missing("ssl") else []
    _import_beside("prometheus_client", [*SERVING, *left_out])
    for module in first:
        _import_beside(module, [*BESIDE[module], *left_out])


def _import_beside(module: str, stand_ins: list[str]) -> None:
    """Import `module` while each of `stand_ins` not loaded yet is a stand-in."""
    if module in sys.modules:
        return
    names = [m for m in stand_ins if m not in sys.modules]
    for name in names:
        sys.modules[name] = stand_in(name)
    try:
        importlib.import_module(module)
    finally:
        for name in names:  # found in sys.modules, none became an attribute of its package
            del sys.modules[name]
