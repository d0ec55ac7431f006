"""Whose fault an upstream's failure is, the words for it that a person reads, how a
download that failed is listed, and how slow is too slow.

An upstream that cannot be reached (no name, no connection) is down for everyone; one
silent for several requests too (health.py). One that answered, however badly (a
redirect loop, a header too large, a reply that is not HTTP), is up: only the request
that met the bad answer fails. One that hung up before answering gives no verdict
either way. The words go into a client's 502, the organiser's log and /status, so they
never carry the upstream's own bytes: aiohttp's messages quote them (`Got more than 8190
bytes when reading: b'aaaa...'`), so each kind of failure is named here in plain words
instead.
"""

from __future__ import annotations

import enum
import os
import socket
from dataclasses import dataclass

import aiohttp

from retreatkit.mirror.errors import (
    BadUpstreamData,
    LargerThanStore,
    MirrorError,
    StoreFull,
    UpstreamDown,
    UpstreamError,
)

# aiohttp's client refuses a status line or header line longer than this (its default)
HEADER_LIMIT = "8 KB"


class Fault(enum.Enum):
    UNREACHABLE = "unreachable"  # the upstream is down: nobody should wait on it again
    ANSWERED = "answered"  # it is up, and sent something wrong for this request only
    HUNG_UP = "hung up"  # connected, then closed or reset before any answer


def of(exc: BaseException) -> Fault:
    """Whose fault an exception from sending a request and reading the answer's head is."""
    if isinstance(exc, aiohttp.ClientConnectorError):  # the name, TCP or TLS
        return Fault.UNREACHABLE
    if isinstance(exc, aiohttp.ClientConnectionError):  # disconnected, reset mid-request
        return Fault.HUNG_UP
    if isinstance(exc, aiohttp.ClientError):  # a reply came back: redirects, a bad head
        return Fault.ANSWERED
    return Fault.UNREACHABLE if isinstance(exc, OSError) else Fault.ANSWERED


def words(exc: BaseException, what: str) -> str:
    """One line for a client or the organiser: what the upstream did with `what`."""
    if isinstance(exc, aiohttp.TooManyRedirects):
        return f"upstream redirected too many times for {what}"
    if isinstance(exc, aiohttp.RedirectClientError | aiohttp.InvalidURL):
        return f"upstream redirected {what} to an address the mirror cannot follow"
    if isinstance(exc, aiohttp.ClientResponseError):  # aiohttp's parser refused the head
        message = str(exc.message)
        if message.startswith("Got more than"):
            return f"upstream sent a header over {HEADER_LIMIT} for {what}"
        if message.startswith("Too many headers"):
            return f"upstream sent too many headers for {what}"
        return f"upstream sent a malformed answer for {what}"
    if isinstance(exc, aiohttp.ClientPayloadError):  # a cut, bad chunks, bad compression
        return f"upstream cut {what} short"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return f"upstream closed the connection without answering for {what}"
    if (tls := tls_words(exc)) is not None:
        return f"upstream connection failed for {what}: {tls}"
    if isinstance(exc, OSError) and exc.errno:
        return f"upstream connection failed for {what}: {os.strerror(exc.errno).lower()}"
    return f"upstream failed sending {what} ({type(exc).__name__})"


def tls_words(exc: BaseException | None) -> str | None:
    """A TLS failure in plain words. Its errno is OpenSSL's error class (1 for a refused
    certificate), which os.strerror would read as "operation not permitted"."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        reason = getattr(exc.certificate_error, "verify_message", "") or "not trusted"
        return f"its TLS certificate is refused ({reason})"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "the TLS handshake failed"
    return None


def why(exc: BaseException | None) -> str:
    """One short line: the system's words for an OSError, else the exception's first line."""
    if (tls := tls_words(exc)) is not None:
        return tls
    if isinstance(exc, socket.gaierror) and exc.strerror:
        # the resolver's own words: its codes are not errnos (strerror(-3) is "Unknown
        # error -3" where the resolver says "Temporary failure in name resolution")
        return exc.strerror.lower()
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def ended(exc: MirrorError) -> str:
    """How a download that failed with `exc` ends in the organiser's list of fetches."""
    if isinstance(exc, LargerThanStore):
        return "too large"
    if isinstance(exc, StoreFull):
        return "disk full"
    if isinstance(exc, BadUpstreamData):
        return "verify failed"
    if isinstance(exc, UpstreamDown):
        return "upstream down"
    return "upstream error" if isinstance(exc, UpstreamError) else "mirror error"


@dataclass
class Floor:
    """The slowest a download may go: `rate` bytes a second over each `window` seconds.
    A trickle inside `read_timeout` (a byte every 29 s) would otherwise hold a download
    slot, and every client following it, for as long as the upstream likes. The first
    window is the grace a slow start gets."""

    rate: float
    window: float
    since: float
    got: int = 0

    def keeps_up(self, size: int, now: float) -> bool:
        self.got += size
        elapsed = now - self.since
        if not self.rate or elapsed < self.window:
            return True
        if self.got < self.rate * elapsed:
            return False
        self.since, self.got = now, 0
        return True
