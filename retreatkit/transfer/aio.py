"""The asyncio adapter: sockets around the sans-I/O Session (the only place that awaits)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from retreatkit.relay import wire
from retreatkit.transfer import codes, source
from retreatkit.transfer.errors import (
    LocalProtocolError,
    OverLimit,
    Refused,
    RemoteProtocolError,
    TransferError,
)
from retreatkit.transfer.link import (
    CONNECT_TIMEOUT,
    Link,
    PeerGone,
    Relay,
    RelayError,
    Worker,
    connect,
    discard,
)
from retreatkit.transfer.machine import (
    Answered,
    Confirmed,
    Done,
    Ended,
    FileData,
    FileEnd,
    Offered,
    Session,
)
from retreatkit.transfer.offer import Offer
from retreatkit.transfer.pake import Side
from retreatkit.transfer.receive import WriteError, Writer

__all__ = ["PeerGone", "Relay", "RelayError", "Worker", "receive", "send", "tell_peer"]
PEER_TIMEOUT = 120.0  # longest silence from a paired peer outside of a prompt (--timeout)


class Reporter(Protocol):
    """What the user sees; the CLI implements it, tests record it."""

    def code(self, code: codes.Code) -> None: ...
    def paired(self, peer: str) -> None: ...
    def progress(self, done: int, total: int | None) -> None: ...
    def saved(self, name: str) -> None: ...
    def text(self, text: str) -> None: ...


Confirm = Callable[[Offer, Writer | None, str], Awaitable[bool]]


async def _handshake(link: Link, session: Session) -> None:
    await link.flush(session.start())
    event = await link.event(session, link.timeout)
    if not isinstance(event, Confirmed):
        raise RemoteProtocolError("the peer skipped key confirmation")


def tell_peer(exc: BaseException, side: Side) -> str:
    """Why we give up, as the peer may hear it: what failed, never where on our disk."""
    who = side.value
    if isinstance(exc, WriteError):
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


async def _give_up(link: Link, session: Session, exc: BaseException) -> None:
    """Send an ABORT saying why, if the session is far enough along to carry one."""
    with contextlib.suppress(TransferError, TimeoutError):
        async with asyncio.timeout(min(link.timeout, 5.0)):
            await link.flush(session.abort(tell_peer(exc, session.side)))


async def send(
    relay: Relay,
    sources: source.Sources,
    code: codes.Code | None,
    reporter: Reporter,
    compress: bool = True,
    timeout: float = PEER_TIMEOUT,
) -> None:
    nameplate = code.nameplate if code else None
    link = await connect(relay, wire.Request(wire.Role.SEND, nameplate), timeout)
    try:
        ok = await link.line(CONNECT_TIMEOUT, "ok")
        if codes.NAMEPLATE_RE.match(ok.text) is None or ok.text != (nameplate or ok.text):
            raise RelayError(f"the relay gave a nameplate that is not the one asked: {ok.text}")
        if code is None:
            code = codes.generate(ok.text)
        reporter.code(code)
        paired = await link.line(None, "paired")  # as long as it takes the receiver to come
        reporter.paired(paired.text)
        session = Session(Side.SENDER, code)
        try:
            await _send_session(link, session, sources, reporter, compress)
        except (TransferError, asyncio.CancelledError) as exc:
            await _give_up(link, session, exc)
            raise
    finally:
        await link.close()


async def _send_session(
    link: Link, session: Session, sources: source.Sources, reporter: Reporter, compress: bool
) -> None:
    await _handshake(link, session)
    await link.flush(session.send_offer(sources.offer))
    event = await link.event(session, None)  # a person decides; the relay's idle bound holds
    if not isinstance(event, Answered):
        raise RemoteProtocolError("the receiver did not answer the offer")
    if not event.accepted:
        raise Refused("the receiver declined the transfer")
    total = sources.offer.total_size
    producer = source.Producer(session, sources, compress)
    # read and seal the next batch in a thread while this one goes out
    # (OpenSSL and hashlib release the GIL)
    worker = Worker()
    pending = worker.run(producer.fill)
    watcher = asyncio.ensure_future(link.event(session, None))
    try:
        more = True
        while more:
            # a source that waits (a quiet stdin) must not hide a receiver that left
            either: set[asyncio.Future[object]] = {pending, watcher}  # type: ignore[arg-type]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if watcher.done() and not pending.done():
                # result() raises PeerGone if the receiver gave up or went away; DONE
                # means END went out with the last batch
                if not isinstance(watcher.result(), Done):
                    raise RemoteProtocolError("the receiver spoke out of turn")
                break
            more = pending.result()
            frames = producer.take()
            if more:
                pending = worker.run(producer.fill)
            link.write(frames)
            drain = asyncio.ensure_future(link.drain())
            await asyncio.wait({drain, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if watcher.done():
                drain.cancel()  # DONE: everything arrived, nothing is left to drain
                if not isinstance(watcher.result(), Done):
                    raise RemoteProtocolError("the receiver spoke out of turn")
                break
            await drain
            reporter.progress(session.bytes_done, total)
        async with asyncio.timeout(link.timeout):
            event = await asyncio.shield(watcher)
    except TimeoutError:
        raise PeerGone("the receiver did not confirm the transfer in time") from None
    except (TransferError, asyncio.CancelledError):
        # what was sealed must go out before the ABORT: its nonce comes after theirs
        with contextlib.suppress(TransferError):
            link.write(producer.stop())
        raise
    finally:
        producer.stop()
        discard(watcher)
        discard(pending)
    if not isinstance(event, Done):
        raise RemoteProtocolError("the receiver did not acknowledge the transfer")
    reporter.progress(session.bytes_done, total)


async def receive(
    relay: Relay,
    code: codes.Code,
    output: Path,
    reporter: Reporter,
    confirm: Confirm,
    timeout: float = PEER_TIMEOUT,
) -> Offer:
    link = await connect(relay, wire.Request(wire.Role.RECV, code.nameplate), timeout)
    session = Session(Side.RECEIVER, code)
    writer: Writer | None = None
    try:
        paired = await link.line(CONNECT_TIMEOUT, "paired")
        reporter.paired(paired.text)
        await _handshake(link, session)
        event = await link.event(session, timeout)
        if not isinstance(event, Offered):
            raise RemoteProtocolError("the sender sent no offer")
        offer = event.offer
        if offer.text is None:
            writer = Writer(output, offer)
            session.stream_limit = writer.check_space()
        try:
            accepted = await confirm(offer, writer, paired.text)
        except Refused:
            await link.flush(session.answer(False))
            raise
        if not accepted:
            await link.flush(session.answer(False))
            raise Refused("transfer declined")
        await link.flush(session.answer(True))
        if offer.text is not None:
            reporter.text(offer.text)
        if writer is not None:
            writer.make_folders()
        await _receive_data(link, session, writer, reporter, offer.total_size)
        await link.flush(session.done())
        await link.until_closed(session)
        return offer
    except (TransferError, asyncio.CancelledError) as exc:
        if writer is not None:
            writer.abort()
        if not isinstance(exc, Refused):
            await _give_up(link, session, exc)
        raise
    finally:
        if writer is not None:
            writer.close()
        await link.close()


async def _receive_data(
    link: Link, session: Session, writer: Writer | None, reporter: Reporter, total: int | None
) -> None:
    shown = 0
    while True:
        event = await link.event(session, link.timeout)
        if isinstance(event, FileData) and writer is not None:
            writer.write(event.data)
            if session.bytes_done - shown >= 1 << 20:
                shown = session.bytes_done
                reporter.progress(shown, total)
        elif isinstance(event, FileEnd) and writer is not None:
            reporter.saved(writer.finish_file())
        elif isinstance(event, Ended):
            reporter.progress(session.bytes_done, total)
            return
        else:
            raise RemoteProtocolError(f"unexpected {type(event).__name__} from the sender")
