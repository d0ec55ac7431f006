"""Which of an upstream's redirects the mirror follows: a few, to the same scheme, and none
to this machine or its link unless the upstream asked is there itself.

An upstream chooses where it redirects, and aiohttp followed ten, to any host, from https
down to http. One upstream sent the mirror to its own admin endpoint on 127.0.0.1; one
sent it to the mirror itself, whose request then waited on the very fetch that made it.
An upstream the organiser runs on this machine (a test's, a local devpi) may redirect
within it: the rule is for hosts the mirror was only sent to. It is kept where each
connection is made, by address (hops.py): a name checked apart from its connect may
answer the connect another address.
"""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

from retreatkit.lanaddress import is_own_address
from retreatkit.mirror.errors import UpstreamError
from retreatkit.peers import plain

MOST = 5  # redirects followed for one request; PyPI, npm and Debian's CDNs use one at most
STATUSES = frozenset({301, 302, 303, 307, 308})


def target(url: str, location: str, what: str) -> str:
    """Where a redirect from `url` to `location` leads, if it keeps the scheme: an https
    upstream's redirect to http would hand the rest of the exchange to anyone on the path.
    `what` names the request in the error."""
    new = urljoin(url, location)
    try:
        parts = urlsplit(new)
        parts.port  # noqa: B018  (a port out of range raises here, not at the connect)
    except ValueError:
        raise UpstreamError(
            f"upstream redirected {what} to an address the mirror cannot follow"
        ) from None
    old = urlsplit(url).scheme
    if parts.scheme != old:
        shown = parts.scheme if parts.scheme in ("http", "https") else "another scheme"
        raise UpstreamError(f"upstream redirected {what} from {old} to {shown}: not followed")
    if not parts.hostname:
        raise UpstreamError(f"upstream redirected {what} to an address the mirror cannot follow")
    return new


def too_many(what: str) -> UpstreamError:
    return UpstreamError(f"upstream redirected too many times for {what}")


def refused(what: str, url: str) -> UpstreamError:
    host = urlsplit(url).hostname or ""
    return UpstreamError(
        f"upstream redirected {what} to {host}, on the mirror's own machine or link: not followed"
    )


def near(address: str) -> bool:
    """Whether an address is this machine or its link: loopback, link-local, unspecified,
    multicast, or one of this machine's own (the mirror itself may listen there). A name
    is not an address: the connector asks this of each address it connects to."""
    ip = plain(address)
    if ip is None:
        return False
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        return True
    return is_own_address(str(ip))
