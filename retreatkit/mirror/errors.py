"""Mirror errors, named for whose fault they are; each message is one line a user can act on.

`status` is what the mirror answers a client with. pip retries 500, 502 and 503 on its
own (its urllib3 status list, five times over about 8 s; 502 for CDNs' passing faults):
a 502 of the mirror's (bad bytes, a cut, an upstream down) is asked again, each time a
new try upstream, while 504 and 507 fail the client at once.
"""

from __future__ import annotations


class MirrorError(Exception):
    """Base: the message is one line a user can read."""

    status = 500


class NotFound(MirrorError):
    """Nobody has it: no index the mirror read names it, or the upstream says there is none."""

    status = 404


class UpstreamError(MirrorError):
    """The upstream failed us: refused, unreachable, or answered with an error."""

    status = 502


class UpstreamTimeout(UpstreamError):
    """The upstream (or its name) did not answer within the mirror's bound."""

    status = 504


class UpstreamDown(UpstreamError):
    """The upstream failed recently, so the mirror does not ask it again yet."""


class BadUpstreamData(UpstreamError):
    """The upstream sent bytes that fail a check: a hash mismatch, a cut or a malformed page."""


class LocalError(MirrorError):
    """The mirror's own machine failed (an I/O error): not the client's, not the upstream's."""


class StoreFull(LocalError):
    """The mirror's disk has no room for what it was asked to keep."""

    status = 507
