"""Nameserver errors, named for whose fault they are; each message is one line."""

from __future__ import annotations


class NameserverError(Exception):
    """Base: the message is one line an organiser can read."""


class UpstreamFailed(NameserverError):
    """No upstream gave a usable answer: down, silent, refusing, or every one marked down."""


class TooManyWaiting(UpstreamFailed):
    """So many different questions already wait on the upstreams that no more are asked
    (a slow uplink, or a flood of names): ours, not the upstreams' fault."""


class TooManyFromOne(TooManyWaiting):
    """One address already has as many questions in progress as one address may: its
    new ones are not asked, so a flood of names from it leaves the LAN its share."""


class BadReply(UpstreamFailed):
    """An upstream's reply is malformed or answers another question: never used."""


class BadList(NameserverError):
    """A blocklist source cannot be read, is too large or is not a blocklist: its last good
    copy stays."""


class BadRecord(NameserverError, ValueError):
    """A local record the organiser gave is not NAME=ADDRESS or NAME=cname:TARGET."""


class CnameLoop(BadRecord):
    """Local CNAMEs lead back to a name already in the chain (RFC 1034 3.6.2: a loop is
    an error, never followed)."""
