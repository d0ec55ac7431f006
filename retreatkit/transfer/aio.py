"""The asyncio adapter: sockets around the sans-I/O Session (the only place that awaits)."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from retreatkit.relay import wire
from retreatkit.transfer import codes, source
from retreatkit.transfer.errors import (
    LocalProtocolError,
    OverLimit,
    Refused,
    RemoteProtocolError,
    TransferError,
)
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
from retreatkit.transfer.offer import Offer, escape
from retreatkit.transfer.pake import Side
from retreatkit.transfer.receive import WriteError, Writer

READ_SIZE = 256 * 1024
CONNECT_TIMEOUT = 10.0
PEER_TIMEOUT = 120.0  # longest silence from a paired peer outside of a prompt (--timeout)
_T = TypeVar("_T")


class PeerGone(TransferError):
    """The connection ended, or went quiet, before the transfer did."""


class RelayError(TransferError):
    """The relay refused, could not be reached, or said something that is not bob/1."""


class Interrupted(TransferError):
    """The user pressed Ctrl-C."""


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


class Worker:
    """Calls run one at a time in a daemon thread of their own: a call that never returns
    (a read from a quiet stdin) cannot hold the process at exit the way asyncio.to_thread's
    pool does, and one thread for many calls costs less than a thread each."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            self._jobs.get()()

    def run(self, call: Callable[[], _T]) -> asyncio.Future[_T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()

        def settle(result: _T | None, exc: BaseException | None) -> None:
            if future.done():
                return
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)  # type: ignore[arg-type]

        def job() -> None:
            try:
                result, exc = call(), None
            except BaseException as caught:  # handed to the loop, raised where it is awaited
                result, exc = None, caught
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(settle, result, exc)

        self._jobs.put(job)
        return future


def _discard(future: asyncio.Future[_T]) -> None:
    """Cancel a future we no longer wait for; an error it already holds was seen elsewhere."""
    if future.done() and not future.cancelled():
        future.exception()  # retrieved: asyncio does not log it as lost
    future.cancel()


class _Link:
    """A connection through the relay, carrying one Session."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout

    async def line(self, timeout: float | None, expect: str) -> wire.Reply:
        """The relay's next line, which must be `expect` (or an error)."""
        try:
            async with asyncio.timeout(timeout):
                raw = await self.reader.readline()
        except TimeoutError:
            raise RelayError("the relay did not answer in time") from None
        except ValueError:
            raise RelayError("the relay sent an overlong line") from None
        except OSError as exc:
            raise RelayError(f"lost the relay: {exc.strerror or exc}") from None
        if not raw.endswith(b"\n"):
            raise RelayError("the relay closed the connection")
        if len(raw) > wire.MAX_LINE:
            raise RelayError("the relay sent an overlong line")
        try:
            reply = wire.parse_reply(raw)
        except wire.WireError as exc:
            raise RelayError(str(exc)) from None
        # the relay is not trusted with the terminal any more than the peer is
        text = escape(reply.text)
        if reply.word == "error":
            raise RelayError(f"the relay says: {text}")
        if reply.word != expect:
            raise RelayError(f"the relay answered {reply.word!r} where bob/1 says {expect!r}")
        return wire.Reply(reply.word, text)

    async def event(self, session: Session, timeout: float | None) -> Event:
        while True:
            event = session.next_event()
            await self.flush(session.data_to_send())
            if event is not None:
                if isinstance(event, Aborted):
                    raise PeerGone(f"the other side gave up: {event.reason}")
                return event
            session.receive_data(await self._read(timeout))

    async def _read(self, timeout: float | None) -> bytes:
        try:
            # asyncio.timeout, not wait_for: no task per read on the hot path
            async with asyncio.timeout(timeout):
                data = await self.reader.read(READ_SIZE)
        except TimeoutError:
            raise PeerGone(f"the other side went quiet: nothing for {timeout:g} s") from None
        except OSError as exc:
            raise PeerGone(f"the connection broke: {exc.strerror or exc}") from None
        if not data:
            raise PeerGone("the other side closed the connection")
        return data

    async def until_closed(self, session: Session) -> None:
        """After DONE: the sender closes. Anything it sends first is an error."""
        while True:
            try:
                session.receive_data(await self._read(self.timeout))
            except PeerGone:
                return
            session.next_event()  # raises: the session is over

    def write(self, frames: list[bytes]) -> None:
        if self.writer.is_closing():  # uvloop raises RuntimeError on a closed transport
            raise PeerGone("the connection broke")
        self.writer.writelines(frames)

    async def flush(self, data: bytes) -> None:
        if data:
            self.write([data])
            await self.drain()

    async def drain(self) -> None:
        """Wait for the buffer to empty; fail when nothing left it for `timeout`."""
        transport = self.writer.transport
        waiting = asyncio.ensure_future(self.writer.drain())
        try:
            left = transport.get_write_buffer_size()
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=self.timeout)
                if done:
                    waiting.result()
                    return
                now = transport.get_write_buffer_size()
                if now >= left:
                    raise PeerGone(
                        f"the other side stopped reading: nothing went out for {self.timeout:g} s"
                    )
                left = now
        except (OSError, RuntimeError) as exc:
            raise PeerGone(
                f"the connection broke: {getattr(exc, 'strerror', None) or exc}"
            ) from None
        finally:
            waiting.cancel()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            async with asyncio.timeout(self.timeout):
                await self.writer.wait_closed()


async def _connect(relay: Relay, request: wire.Request, timeout: float) -> _Link:
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
    return _Link(reader, writer, timeout)


async def _handshake(link: _Link, session: Session) -> None:
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
    if isinstance(exc, Interrupted | asyncio.CancelledError):
        return f"the {who} stopped the transfer"
    if isinstance(exc, PeerGone):
        return f"the {who} gave up waiting"
    if isinstance(exc, RemoteProtocolError | LocalProtocolError):
        return str(exc)  # about the session and the offer's names, which the peer knows
    return f"the {who} could not go on"


async def _give_up(link: _Link, session: Session, exc: BaseException) -> None:
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
    link = await _connect(relay, wire.Request(wire.Role.SEND, nameplate), timeout)
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
    link: _Link, session: Session, sources: source.Sources, reporter: Reporter, compress: bool
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
        _discard(watcher)
        _discard(pending)
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
    link = await _connect(relay, wire.Request(wire.Role.RECV, code.nameplate), timeout)
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
    link: _Link, session: Session, writer: Writer | None, reporter: Reporter, total: int | None
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
