"""Mirror errors, named for whose fault they are; each message is one line a user can act on.

`status` is what the mirror answers a client with, and the message is its reason phrase
as well as its body: pip, uv, npm and apt-get print the phrase and none of them the body.
A client retries on its own what it takes for a passing fault: pip 500, 502 and 503
(urllib3's status list, five tries over about 8 s, then a traceback of its own), uv and
apt-get every 5xx (three tries, 4-12 s), npm every 5xx (three tries, about 70 s). So 502
is kept for what a retry can mend, because the retry is a new try upstream: a cut, an
upstream that answered an error. An upstream that cannot be reached
(`UpstreamUnreachable`: no name, a refused connection) is remembered down, and one known
down (`UpstreamDown`) is not asked again until the mirror's own probe finds it back
(once.py, health.py), so a retry asks the mirror the same question; so does a file
whose bytes failed their hash (`BadFile`), remembered a while and its retries answered
from that memory (badfiles.py): all are a 504, which pip fails at once with the mirror's
line (in about a second, not nine, and not "too many 502 error responses"), and which
the others treat as they do a 502 or 503. A 503 would be worse: pip retries it, and
sleeps as long as a Retry-After says. An upstream that took the request and sent nothing
in time (`UpstreamTimeout`) is a 504 too: it is down once it is silent for other requests
as well (health.py), and until then a retry would only wait as long again.
"""

from __future__ import annotations


class MirrorError(Exception):
    """Base: the message is one line a user can read."""

    status = 500
    # the page that failed with nothing held to serve, when the organiser's log should
    # hear of it if no fallback serves the client anyway (respond.errors)
    page: str | None = None


class NotFound(MirrorError):
    """Nobody has it: no index the mirror read names it, or the upstream says there is none."""

    status = 404


class UpstreamError(MirrorError):
    """The upstream failed us: refused, unreachable, or answered with an error."""

    status = 502


class UpstreamUnreachable(UpstreamError):
    """The upstream cannot be reached (no name, no connection, no answer in time): a
    host that cannot be reached is remembered down, so a client's retry would ask the
    mirror, not the upstream (health.py says when a silent one is)."""

    status = 504


class UpstreamTimeout(UpstreamUnreachable):
    """The upstream (or its name) did not answer within the mirror's bound."""


class UpstreamStillQuiet(UpstreamTimeout):
    """A request the upstream was silent for a moment ago, refused at once (a client's
    retry): the silence was counted when it happened, this is not another failure."""


class UpstreamDown(UpstreamError):
    """The upstream failed recently, so the mirror does not ask it again yet."""

    status = 504


class BadUpstreamData(UpstreamError):
    """The upstream sent bytes that fail a check: a hash mismatch, a cut or a malformed page."""


class BadFile(BadUpstreamData):
    """A file whose bytes failed the hash its index names: remembered a while (badfiles.py),
    so a client's retry is answered from the mirror's memory, not asked upstream again."""

    status = 504


class LocalError(MirrorError):
    """The mirror's own machine failed (an I/O error): not the client's, not the upstream's."""


class StoreFull(LocalError):
    """The mirror's disk has no room for what it was asked to keep."""

    status = 507


class LargerThanStore(StoreFull):
    """A file larger than all the store may hold (max_size_bytes): no eviction makes room,
    and kept it would evict every other file, then itself."""
