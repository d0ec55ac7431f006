"""A connection through the relay: the relay's lines checked and escaped, reads and
writes bounded in time, daemon threads for work that may never return."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from retreatkit.relay import wire
from retreatkit.transfer.errors import TransferError
from retreatkit.transfer.machine import Aborted, Event, Session
from retreatkit.transfer.offer import escape

READ_SIZE = 256 * 1024
CONNECT_TIMEOUT = 10.0
_T = TypeVar("_T")


class PeerGone(TransferError):
    """The connection ended, or went quiet, before the transfer did."""


class RelayError(TransferError):
    """The relay refused, could not be reached, or said something that is not bob/1."""


@dataclass(frozen=True, slots=True)
class Relay:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


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


def discard(future: asyncio.Future[_T]) -> None:
    """Cancel a future we no longer wait for; an error it already holds was seen elsewhere."""
    if future.done() and not future.cancelled():
        future.exception()  # retrieved: asyncio does not log it as lost
    future.cancel()


class Link:
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


async def connect(relay: Relay, request: wire.Request, timeout: float) -> Link:
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
    return Link(reader, writer, timeout)
