"""Where one upstream request may connect: told by the fetcher, kept by the connector.

The rule for redirects (redirects.py) is about addresses, and a URL has a name. A name
looked up once to check it and again by the connector to connect may answer a public
address to the first and 127.0.0.1 to the second (DNS rebinding, with a TTL of 0): the
check passed, and the mirror asked its own admin endpoint. So the rule is kept where the
connection is made. The fetcher sets the request's `Hop` in a context variable; the
session's connector (resolver.session) reads it on the request's own task, at two places:

- each socket it opens (`open_socket`): an address the hop refuses is never connected
  to, and happy eyeballs goes on to the name's other addresses, if it has any. That
  holds wherever the address came from: a lookup, aiohttp's DNS cache (an answer kept
  10 s from a request the rule did not cover: the upstream's own first, or a near
  upstream's), or an address written in the URL, which is never looked up;
- a connection from the keep-alive pool (`connector`), pooled by host and port only:
  opened for a request the rule did not cover, it may lead where this one may not.

The connector also notes where each request connected (`Hop.peer`): whether the upstream
asked is near itself is where its first request went, not what its name answers later.

A request's redirects are one `Trip`: the hop under way is what fails, and its host is
charged for it (health.py). An upstream that answered with a redirect is up, whatever its
target then does: PyPI's files host, or the mirror an apt redirector picked, unreachable
from the venue, is that host down, and the rest of the upstream's packages are still had.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from retreatkit.mirror.health import Verdict, origin

if TYPE_CHECKING:
    import aiohttp
    from aiohappyeyeballs import AddrInfoType
    from aiohttp.tracing import Trace


@dataclass(slots=True)
class Hop:
    """One request of the fetcher's: the addresses it may not connect to (`refuse`; None:
    any may do), and what the connector saw of it."""

    refuse: Callable[[str], bool] | None = None
    peer: str | None = None  # the address it connected to
    refused: int = 0  # connections not made, or not used, for `refuse`


@dataclass(slots=True)
class Trip:
    """One request of the fetcher's through the redirects it follows: where it is now."""

    url: str  # asked now: the first URL, or the last redirect's target
    hop: Hop = field(default_factory=Hop)
    via: str | None = None  # the last other host (`host:port`) that redirected to here
    verdict: Verdict | None = None  # health's word on the hop under way; None once answered
    sent: float = 0.0  # when the hop under way was asked

    @property
    def origin(self) -> str:
        return origin(self.url)

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc

    def to(self, url: str, hop: Hop) -> None:
        """On to a redirect's target."""
        if urlsplit(url).netloc != self.host:
            self.via = self.host
        self.url, self.hop, self.verdict = url, hop, None

    def line(self, what: str, why: str) -> str:
        """A client's line for a hop that failed (`why`): the host that failed, and which
        upstream sent the mirror there."""
        if self.via is None:
            return f"upstream {self.host}: {why}"
        return f"upstream {self.via} redirected {what} to {self.host}: {why}"


HOP: ContextVar[Hop | None] = ContextVar("retreatkit_mirror_hop", default=None)


class NearAddress(OSError):
    """An address the request may not connect to. An OSError, as a connect that fails
    is: happy eyeballs tries the name's next address. The fetcher says the rest."""

    def __init__(self) -> None:
        # one text for all: with every address refused, happy eyeballs raises the first
        # one, this error, rather than "Multiple exceptions" in an OSError of its own
        super().__init__("an address on the mirror's own machine or link")


def open_socket(addr_info: AddrInfoType) -> socket.socket:
    """The socket for one address of a connect (aiohttp's `socket_factory`), unless the
    request's hop refuses the address."""
    family, kind, proto, _, address = addr_info
    hop = HOP.get()
    if hop is not None and hop.refuse is not None and hop.refuse(str(address[0])):
        hop.refused += 1
        raise NearAddress()
    return socket.socket(family=family, type=kind, proto=proto)


@functools.cache
def connector() -> type[aiohttp.TCPConnector]:
    """aiohttp's connector, with the pool kept to each request's hop. Made when first
    wanted: in a guest, aiohttp's client loads only once the mirror makes its session
    (resolver.Sessions), after its first answers; a class of it here would load it first."""
    import aiohttp

    class Connector(aiohttp.TCPConnector):
        async def connect(
            self, req: aiohttp.ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
        ) -> aiohttp.connector.Connection:
            made = await super().connect(req, traces, timeout)
            hop = HOP.get()
            if hop is None:
                return made
            transport = made.transport
            peer = transport.get_extra_info("peername") if transport is not None else None
            hop.peer = str(peer[0]) if peer else None
            if hop.refuse is not None and (hop.peer is None or hop.refuse(hop.peer)):
                # a pooled connection opened for another request: back to the pool, unused
                hop.refused += 1
                made.release()
                raise aiohttp.ClientConnectorError(req.connection_key, NearAddress())
            return made

    return Connector
