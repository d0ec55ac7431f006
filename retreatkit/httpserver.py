"""aiohttp's server for every HTTP endpoint of the kit: malformed requests answered in one
fixed line, and noted in the log rarely.

aiohttp answers a request it cannot parse (a 9000-byte URL, a 100 KB header, a bad chunk,
a control character in a header) with a 400 whose body quotes the client's bytes, and
logs each one at ERROR with a full traceback: any attendee could flood the organiser's
log and the dashboard's Logs screen, a traceback per request. Here the client gets 400,
414 or 431 and one line of ours; the log gets one line at most every minute, saying how
many more were refused meanwhile. aiohttp has no hook for this (aio-libs/aiohttp#3287):
the runner swaps in a server whose connections answer these themselves.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong

MAX_LINE = 8190  # the request line, in bytes (aiohttp's default)
MAX_FIELD = 8192  # a header line: not MAX_LINE, so a refusal tells which one was too long
MAX_HEADERS = 128  # aiohttp's default
NOTE_EVERY = 60.0  # seconds between two log lines about malformed requests


def refusal(exc: BaseException | None) -> tuple[int, str]:
    """The status and the line for a request aiohttp could not parse; none of its bytes."""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if str(limit) == str(MAX_LINE):  # the request line: its URL (RFC 9110 15.5.15)
            return 414, "URL too long: the limit is 8 KB"
        return 431, "request header too long: the limit is 8 KB a line"  # RFC 6585 5
    if isinstance(exc, BadHttpMessage) and exc.message.startswith("Too many headers"):
        return 431, f"too many request headers: the limit is {MAX_HEADERS}"
    return 400, "malformed HTTP request"


async def body_text(request: web.BaseRequest) -> str:
    """The body, decoded by the charset its Content-Type names (UTF-8 if none). A body that
    is not text in it, or a charset Python does not know, is the client's mistake: 400 and
    one line, where aiohttp's `request.text()` raises out of the handler (a 500, and a
    traceback in the log for each such request)."""
    data = await request.read()
    try:
        codec = codecs.lookup(request.charset or "utf-8")
        return data.decode(codec.name)
    except LookupError:  # no such codec, or one that is not bytes to text (rot13, hex)
        raise web.HTTPBadRequest(text="unknown charset in Content-Type: send UTF-8\n") from None
    except ValueError:  # UnicodeDecodeError, UnicodeError
        name = "UTF-8" if codec.name == "utf-8" else codec.name
        raise web.HTTPBadRequest(text=f"the body is not {name} text\n") from None


class Refusals:
    """Malformed requests refused; noted in the log at most once every `every` seconds."""

    def __init__(
        self,
        log: logging.Logger,
        every: float = NOTE_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log, self.every, self.clock = log, every, clock
        self.count = 0
        self._unsaid = 0
        self._next = -math.inf

    def note(self, address: str, status: int, why: str) -> None:
        self.count += 1
        now = self.clock()
        if now < self._next:
            self._unsaid += 1
            return
        more = f"; {self._unsaid} more since the last such line" if self._unsaid else ""
        self.log.warning(
            "refused a malformed request from %s: %s (%d)%s", address, why, status, more
        )
        self._unsaid, self._next = 0, now + self.every


class QuietHandler(web.RequestHandler):
    """A connection whose malformed requests get one line of ours and a rare log line."""

    def __init__(self, manager: web.Server, *, refusals: Refusals, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.refusals = refusals

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)  # ours: a traceback
        code, line = refusal(exc)
        self.refusals.note(request.remote or "an unknown address", code, line)
        response = web.Response(status=code, text=line + "\n")
        response.force_close()
        return response


class QuietServer(web.Server):
    refusals: Refusals

    def __call__(self) -> web.RequestHandler:
        return QuietHandler(self, refusals=self.refusals, loop=self._loop, **self._kwargs)


class DebugAccess(AbstractAccessLogger):
    """Each request as one DEBUG line on the service's logger: nothing at the usual level
    (a mirror answers thousands a second), every request once the organiser asks for
    debug (`PUT /loglevel`, the dashboard's `L`), from the next connection on."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.debug(
            "%s %s %s %d %d B %.1f ms", request.remote, request.method,
            request.raw_path[:200], response.status, response.body_length, time * 1000,
        )  # fmt: skip

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)


class Runner(web.AppRunner):
    """An AppRunner (requests logged at DEBUG only) whose connections answer malformed
    requests quietly, noting them on `log`."""

    def __init__(self, app: web.Application, log: logging.Logger, **kwargs: Any) -> None:
        kwargs.setdefault("access_log", log)
        kwargs.setdefault("access_log_class", DebugAccess)
        super().__init__(
            app, max_line_size=MAX_LINE, max_field_size=MAX_FIELD, max_headers=MAX_HEADERS,
            **kwargs,
        )  # fmt: skip
        self.refusals = Refusals(log)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = QuietServer  # the same server, making QuietHandlers
        quiet = cast(QuietServer, server)
        quiet.refusals = self.refusals
        return quiet


def turned_away(text: str) -> bytes:
    """The whole answer of a connection the gate turns away, `text` its body."""
    body = text.encode()
    return (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
        b"Content-Length: %d\r\nRetry-After: 2\r\nConnection: close\r\n\r\n" % len(body)
    ) + body


REFUSAL = turned_away("too many connections from your address\n")
# the bound in all: "from your address" told a client with one connection it held many
REFUSAL_ALL = turned_away("too many connections in all: try again in a moment\n")


class Gate(Protocol):
    """Who may hold a connection (the mirror's per-address and total caps, the admin
    endpoint's): `admit` says yes and counts it, `release` forgets it."""

    full: bool  # the last refusal was for the bound in all, not the address's own

    def admit(self, address: str) -> bool: ...

    def release(self, address: str) -> None: ...


class Guarded(asyncio.Protocol):
    """A connection's protocol behind the gate: refused ones never reach aiohttp."""

    def __init__(self, inner: asyncio.Protocol, gate: Gate) -> None:
        self.inner = inner
        self.gate = gate
        self.address: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else "?"
        if not self.gate.admit(address):
            # a TCP server's transport writes, though uvloop's do not subclass
            # asyncio.WriteTransport: an isinstance test sent uvloop's clients no line
            cast(asyncio.Transport, transport).write(REFUSAL_ALL if self.gate.full else REFUSAL)
            transport.close()
            return
        self.address = address
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.address is not None:
            self.gate.release(self.address)
            self.address = None
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.address is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.address is not None else None

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class GuardedSite(web.TCPSite):
    """A TCPSite whose every connection passes the gate first."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, gate: Gate) -> None:
        super().__init__(runner, host, port, backlog=1024)
        self.gate = gate

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        factory: Callable[[], Any] = lambda: Guarded(server(), self.gate)  # noqa: E731
        self._server = await asyncio.get_running_loop().create_server(
            factory, self._host, self._port, backlog=self._backlog, reuse_address=True
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]
