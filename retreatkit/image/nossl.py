"""prometheus_client in an image without TLS: OpenSSL stays out of the relay's and the
nameserver's images.

prometheus_client imports `ssl` at the top of its exposition module, for its push gateway
and its TLS exporter, which no guest uses; with `ssl` come `_ssl` and OpenSSL's libcrypto
and libssl, 2.2 MB of an 11 MB image. The relay and the nameserver speak no TLS, so their
images leave all of that out. Before anything imports prometheus_client, `load()` gives it
a stand-in `ssl` that holds whatever its definitions read at import time, then takes the
stand-in away again, so every other module (asyncio, aiohttp, urllib) finds `ssl` absent,
as each of them allows, and never mistakes the stand-in for TLS.
"""

from __future__ import annotations

import sys
import types
from typing import Any

LEFT_OUT = ("ssl", "_ssl", "_hashlib")  # hashlib falls back to the interpreter's own hashes


class NoTLS:
    """What any name of the stand-in is: a type (annotations read it), never usable."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("this image has no TLS")


def _any_name(name: str) -> type[NoTLS]:
    if name.startswith("__"):  # a module's own attributes (__path__, __file__) stay absent
        raise AttributeError(name)
    return NoTLS


def load() -> None:
    """Import prometheus_client, with a stand-in `ssl` only if the real one is absent."""
    try:
        import ssl  # noqa: F401  (an image with TLS: nothing to do)

        return
    except ImportError:
        pass
    stand_in = types.ModuleType("ssl", "a stand-in: this image has no TLS")
    vars(stand_in)["__getattr__"] = _any_name  # PEP 562: every name resolves
    sys.modules["ssl"] = stand_in
    try:
        import prometheus_client  # noqa: F401
    finally:
        del sys.modules["ssl"]
