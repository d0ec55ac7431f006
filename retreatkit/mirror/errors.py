"""Mirror errors, named for whose fault they are; each message is one line a user can act on.

`status` is what the mirror answers a client with. pip retries 500 and 503 on its own
(urllib3's status list), so a failure that retrying cannot fix answers 502, 504 or 507:
the client fails at once instead of spinning through its retries.
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
