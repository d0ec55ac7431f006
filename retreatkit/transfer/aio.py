"""The asyncio adapter: sockets around the sans-I/O Session (the only place that awaits)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from retreatkit.relay import wire
from retreatkit.transfer import codes, source
from retreatkit.transfer.errors import Refused, RemoteProtocolError, TransferError
from retreatkit.transfer.machine import (
    Aborted,
    Answered,
    Confirmed,
    Done,
    Ended,
    Event,
    FileData,
    FileEnd,
    Offered,
    Session,
)
from retreatkit.transfer.offer import Offer
from retreatkit.transfer.pake import Side
from retreatkit.transfer.receive import Writer

READ_SIZE = 256 * 1024
CONNECT_TIMEOUT = 10.0
PEER_TIMEOUT = 120.0  # longest silence from a paired peer outside of a prompt


class PeerGone(TransferError):
    """The connection ended before the transfer did."""


class RelayError(TransferError):
    """The relay refused or could not be reached."""


@dataclass(frozen=True, slots=True)
class Relay:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class Reporter(Protocol):
    """What the user sees; the CLI implements it, tests record it."""

    def code(self, code: codes.Code) -> None: ...
    def paired(self, peer: str) -> None: ...
    def progress(self, done: int, total: int | None) -> None: ...
    def saved(self, name: str) -> None: ...
    def text(self, text: str) -> None: ...


Confirm = Callable[[Offer, Writer | None, str], Awaitable[bool]]


class _Link:
    """A paired connection through the relay, carrying one Session."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def line(self, timeout: float | None) -> wire.Reply:
        try:
            raw = await asyncio.wait_for(self.reader.readline(), timeout)
        except TimeoutError:
            raise RelayError("the relay did not answer in time") from None
        except ValueError:
            raise RelayError("the relay sent an overlong line") from None
        except OSError as exc:
            raise RelayError(f"lost the relay: {exc.strerror or exc}") from None
        if not raw.endswith(b"\n"):
            raise RelayError("the relay closed the connection")
        try:
            reply = wire.parse_reply(raw)
        except wire.WireError as exc:
            raise RelayError(str(exc)) from None
        if reply.word == "error":
            raise RelayError(f"the relay says: {reply.text}")
        return reply

    async def event(self, session: Session, timeout: float | None = PEER_TIMEOUT) -> Event:
        while True:
            event = session.next_event()
            await self.flush(session.data_to_send())
            if event is not None:
                if isinstance(event, Aborted):
                    raise PeerGone(f"the other side gave up: {event.reason}")
                return event
            try:
                # asyncio.timeout, not wait_for: no task per read on the hot path
                async with asyncio.timeout(timeout):
                    data = await self.reader.read(READ_SIZE)
            except TimeoutError:
                raise PeerGone("the other side went quiet") from None
            except OSError as exc:
                raise PeerGone(f"the connection broke: {exc.strerror or exc}") from None
            if not data:
                raise PeerGone("the other side closed the connection")
            session.receive_data(data)

    async def flush(self, data: bytes) -> None:
        if data:
            self.writer.write(data)
            await self.drain()

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except OSError as exc:
            raise PeerGone(f"the connection broke: {exc.strerror or exc}") from None

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def _connect(relay: Relay, request: wire.Request) -> _Link:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(relay.host, relay.port, limit=READ_SIZE * 4),
            CONNECT_TIMEOUT,
        )
    except (OSError, TimeoutError) as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise RelayError(
            f"cannot reach the relay at {relay}: {why} (give --relay HOST:PORT or set BOB_RELAY)"
        ) from None
    writer.write(request.encode())
    return _Link(reader, writer)


async def _handshake(link: _Link, session: Session) -> None:
    await link.flush(session.start())
    event = await link.event(session)
    if not isinstance(event, Confirmed):
        raise RemoteProtocolError("the peer skipped key confirmation")


async def send(
    relay: Relay,
    sources: source.Sources,
    code: codes.Code | None,
    reporter: Reporter,
    compress: bool = True,
) -> None:
    nameplate = code.nameplate if code else None
    link = await _connect(relay, wire.Request(wire.Role.SEND, nameplate))
    try:
        ok = await link.line(CONNECT_TIMEOUT)
        if code is None:
            code = codes.generate(ok.text)
        reporter.code(code)
        paired = await link.line(None)  # as long as it takes the receiver to come
        reporter.paired(paired.text)
        session = Session(Side.SENDER, code)
        try:
            await _send_session(link, session, sources, reporter, compress)
        except TransferError as exc:
            with contextlib.suppress(TransferError):
                await link.flush(session.abort(str(exc)))
            raise
    finally:
        await link.close()


async def _send_session(
    link: _Link, session: Session, sources: source.Sources, reporter: Reporter, compress: bool
) -> None:
    await _handshake(link, session)
    await link.flush(session.send_offer(sources.offer))
    event = await link.event(session, timeout=None)  # the receiver may think it over
    if not isinstance(event, Answered):
        raise RemoteProtocolError("the receiver did not answer the offer")
    if not event.accepted:
        raise Refused("the receiver declined the transfer")
    total = sources.offer.total_size
    gen = source.frames(session, sources, compress)
    # read and seal the next batch in a thread while this one goes out
    # (OpenSSL and hashlib release the GIL)
    pending = asyncio.ensure_future(asyncio.to_thread(source.batch, gen))
    watcher = asyncio.ensure_future(link.event(session, timeout=None))
    try:
        while True:
            frames = await pending
            if not frames:
                break
            pending = asyncio.ensure_future(asyncio.to_thread(source.batch, gen))
            link.writer.writelines(frames)
            drain = asyncio.ensure_future(link.drain())
            await asyncio.wait({drain, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if watcher.done() and not isinstance(watcher.result(), Done):
                # result() raised PeerGone with the receiver's reason, if it gave one
                drain.cancel()
                raise RemoteProtocolError("the receiver spoke out of turn")
            await drain
            reporter.progress(session.bytes_done, total)
        event = await watcher
    finally:
        watcher.cancel()
        pending.cancel()
    if not isinstance(event, Done):
        raise RemoteProtocolError("the receiver did not acknowledge the transfer")
    reporter.progress(session.bytes_done, total)


async def receive(
    relay: Relay,
    code: codes.Code,
    output: Path,
    reporter: Reporter,
    confirm: Confirm,
) -> Offer:
    link = await _connect(relay, wire.Request(wire.Role.RECV, code.nameplate))
    session = Session(Side.RECEIVER, code)
    writer: Writer | None = None
    try:
        paired = await link.line(CONNECT_TIMEOUT)
        reporter.paired(paired.text)
        await _handshake(link, session)
        event = await link.event(session)
        if not isinstance(event, Offered):
            raise RemoteProtocolError("the sender sent no offer")
        offer = event.offer
        if offer.text is None:
            writer = Writer(output, offer)
            writer.check_space()
        if not await confirm(offer, writer, paired.text):
            await link.flush(session.answer(False))
            raise Refused("transfer declined")
        await link.flush(session.answer(True))
        if offer.text is not None:
            reporter.text(offer.text)
        if writer is not None:
            writer.make_folders()
        await _receive_data(link, session, writer, reporter, offer.total_size)
        await link.flush(session.done())
        return offer
    except TransferError as exc:
        if writer is not None:
            writer.abort()
        if not isinstance(exc, Refused):
            with contextlib.suppress(TransferError):
                await link.flush(session.abort(str(exc)))
        raise
    finally:
        if writer is not None:
            writer.close()
        await link.close()


async def _receive_data(
    link: _Link, session: Session, writer: Writer | None, reporter: Reporter, total: int | None
) -> None:
    shown = 0
    while True:
        event = await link.event(session)
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
