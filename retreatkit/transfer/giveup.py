"""Giving up: what the peer is told (what failed, never where), in an ABORT if the session
is far enough along to carry one."""

from __future__ import annotations

import asyncio
import contextlib

from retreatkit.transfer import source
from retreatkit.transfer.errors import (
    LocalProtocolError,
    OverLimit,
    Refused,
    RemoteProtocolError,
    TransferError,
)
from retreatkit.transfer.link import Link, PeerGone
from retreatkit.transfer.machine import Session
from retreatkit.transfer.pake import Side
from retreatkit.transfer.receive import WriteError

LINGER = 2.0  # seconds for the peer to read our ABORT and close (it does so at once)


def tell_peer(exc: BaseException, side: Side) -> str:
    """Why we give up, as the peer may hear it: what failed, never where on our disk."""
    who = side.value
    if isinstance(exc, WriteError):
        return exc.public
    if isinstance(exc, Refused) and exc.public is not None:
        return exc.public
    if isinstance(exc, source.SourceError):
        return "the sender could not read a file"
    if isinstance(exc, OverLimit):
        return "the stream is larger than the receiver can take"
    if isinstance(exc, asyncio.CancelledError):
        return f"the {who} stopped the transfer"
    if isinstance(exc, PeerGone):
        return f"the {who} gave up waiting"
    if isinstance(exc, RemoteProtocolError | LocalProtocolError):
        return str(exc)  # about the session and the offer's names, which the peer knows
    return f"the {who} could not go on"


async def give_up(link: Link, session: Session, exc: BaseException) -> None:
    """Send an ABORT saying why, if the session is far enough along to carry one.

    A sender whose receiver went quiet or away sends none: nothing reads it in time, and a
    receiver that comes back (a laptop lid opened, Ctrl-Z undone) and read it then would
    take it for a stop on purpose and drop the partial file it should resume from. The
    connection's end tells it what happened."""
    if session.side is Side.SENDER and type(exc) is PeerGone:
        return
    with contextlib.suppress(TransferError, TimeoutError):
        async with asyncio.timeout(min(link.timeout, 5.0)):
            aborted = session.abort(tell_peer(exc, session.side))
            await link.flush(aborted)
        if aborted:
            async with asyncio.timeout(min(link.timeout, LINGER)):
                await link.linger()
