"""Whose fault each upstream failure is, and its words: plain, one line, none of the
upstream's bytes (the real upstreams behind them: tests/mirror/test_bad_upstream.py)."""

from __future__ import annotations

import asyncio
import errno
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from retreatkit.image.tlstesting import make_ca, server_chain
from retreatkit.mirror import faults
from retreatkit.mirror.faults import Fault

URL_ = URL("http://upstream.test/x")
INFO = aiohttp.RequestInfo(URL_, "GET", {}, URL_)  # type: ignore[arg-type]
JUNK = "Got more than 8190 bytes when reading: b'aaaa'"


def refused(message: str) -> aiohttp.ClientResponseError:
    return aiohttp.ClientResponseError(INFO, (), status=400, message=message)


def connector(err: int) -> aiohttp.ClientConnectorError:
    key: Any = type("Key", (), {"host": "upstream.test", "port": 80, "ssl": False})()
    return aiohttp.ClientConnectorError(key, OSError(err, "x"))


@pytest.mark.parametrize(
    ("exc", "fault", "words"),
    [
        (aiohttp.TooManyRedirects(INFO, ()), Fault.ANSWERED,
         "upstream redirected too many times for f.whl"),
        (refused(JUNK), Fault.ANSWERED, "upstream sent a header over 8 KB for f.whl"),
        (refused("Too many headers received"), Fault.ANSWERED,
         "upstream sent too many headers for f.whl"),
        (refused("Bad status line:\n  b'HTTX'"), Fault.ANSWERED,
         "upstream sent a malformed answer for f.whl"),
        (aiohttp.NonHttpUrlRedirectClientError("ftp://x/"), Fault.ANSWERED,
         "upstream redirected f.whl to an address the mirror cannot follow"),
        (aiohttp.ClientPayloadError(JUNK), Fault.ANSWERED, "upstream cut f.whl short"),
        (aiohttp.ServerDisconnectedError(), Fault.HUNG_UP,
         "upstream closed the connection without answering for f.whl"),
        (aiohttp.ClientOSError(errno.ECONNRESET, "x"), Fault.HUNG_UP,
         "upstream connection failed for f.whl: connection reset by peer"),
        (connector(errno.ECONNREFUSED), Fault.UNREACHABLE, None),
    ],
)  # fmt: skip
def test_whose_fault_and_the_words(exc: Exception, fault: Fault, words: str | None) -> None:
    assert faults.of(exc) is fault
    if words is not None:
        assert faults.words(exc, "f.whl") == words


def test_the_rate_floor() -> None:
    floor = faults.Floor(rate=1024, window=60, since=0)
    assert floor.keeps_up(10 << 20, 1.0)  # a fast start
    assert floor.keeps_up(1, 59.0)  # then nothing, but inside the first window
    assert floor.keeps_up(1, 61.0)  # a window done: 10 MB in 61 s; the next one starts
    assert floor.keeps_up(1000, 100.0)
    assert not floor.keeps_up(1000, 121.0)  # 2,000 bytes in 60 s: under 1 kB/s
    assert faults.Floor(rate=0, window=60, since=0).keeps_up(0, 1e9)  # 0: no floor


async def test_an_untrusted_certificate_is_said_in_plain_words(tmp_path: Path) -> None:
    # a refused certificate's errno is OpenSSL's error class, 1, which the mirror read as
    # "operation not permitted"
    ca = make_ca("not-trusted test CA")
    chain = server_chain(ca, ("127.0.0.1",), tmp_path / "chain.pem")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(chain)
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectorCertificateError) as refused:
                await session.get(f"https://127.0.0.1:{port}/simple/demo/")
    finally:
        server.close()
        await server.wait_closed()
    assert faults.words(refused.value, "demo") == (
        "upstream connection failed for demo: its TLS certificate is refused"
        " (unable to get local issuer certificate)"
    )
