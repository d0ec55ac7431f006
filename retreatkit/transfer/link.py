"""A connection carrying a session (through the relay, or direct): the relay's lines
checked and escaped, reads and writes bounded in time, daemon threads for work that may
never return."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import queue
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from retreatkit.relay import wire
from retreatkit.transfer import hints
from retreatkit.transfer.channel import Channel, ConnectionClosed, Frame, socket_of
from retreatkit.transfer.errors import NoKeyExchange, RemoteProtocolError, TransferError
from retreatkit.transfer.errors import PeerAborted as PeerAborted  # found here too
from retreatkit.transfer.errors import PeerGone as PeerGone
from retreatkit.transfer.machine import Aborted, Event, Session
from retreatkit.transfer.offer import escape
from retreatkit.transfer.pace import Pace
from retreatkit.transfer.relays import NoAnswer as NoAnswer  # found here too
from retreatkit.transfer.relays import Relay as Relay
from retreatkit.transfer.relays import RelayBusy as RelayBusy
from retreatkit.transfer.relays import RelayError as RelayError
from retreatkit.transfer.relays import Unreachable as Unreachable

CONNECT_TIMEOUT = 10.0
_T = TypeVar("_T")


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
        future, job = _job(call)
        self._jobs.put(job)
        return future


def in_thread(call: Callable[[], _T]) -> asyncio.Future[_T]:
    """`call` in a daemon thread of its own, which ends with it (one call, not a Worker)."""
    future, job = _job(call)
    threading.Thread(target=job, daemon=True).start()
    return future


def _job(call: Callable[[], _T]) -> tuple[asyncio.Future[_T], Callable[[], None]]:
    """A future of the running loop, and the job that settles it with `call`'s outcome
    from another thread (once: a future cancelled meanwhile is left as it is)."""
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

    return future, job


def discard(future: asyncio.Future[_T]) -> None:
    """Cancel a future we no longer wait for; an error it already holds was seen elsewhere."""
    if future.done() and not future.cancelled():
        future.exception()  # retrieved: asyncio does not log it as lost
    future.cancel()


def _our_timeout(exc: BaseException) -> bool:
    """asyncio.timeout's bound ran out; not the kernel giving up on the peer (ETIMEDOUT,
    a TimeoutError too, with an errno: keepalive found it gone)."""
    return isinstance(exc, TimeoutError) and exc.errno is None


def broke(exc: BaseException) -> PeerGone:
    if isinstance(exc, ConnectionClosed):
        return PeerGone(str(exc))
    return PeerGone(f"the connection broke: {getattr(exc, 'strerror', None) or exc}")


class Link:
    """A connection carrying one Session. `reader` and `writer` are the same Channel
    (tests stand in a StreamReader for lines, or a closed writer)."""

    def __init__(self, reader: Any, writer: Any, timeout: float, direct: bool = False) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.direct = direct  # a connection straight to the peer, not through a relay
        # the peer's address as the relay's `paired` line named it (hints.viable)
        self.peer_seen: hints.Address | None = None
        self.relay: Relay | None = None  # where `connect` reached it (`reached`)
        self._pending: collections.deque[Frame] = collections.deque()

    @classmethod
    def over(cls, channel: Channel, timeout: float, direct: bool = False) -> Link:
        return cls(channel, channel, timeout, direct)

    @property
    def channel(self) -> Channel:
        assert isinstance(self.reader, Channel)
        return self.reader

    def allow_stalls(self) -> None:
        """See Channel.allow_stalls (a test's stand-in reader has nothing to allow)."""
        if isinstance(self.reader, Channel):
            self.reader.allow_stalls()

    def addresses(self) -> tuple[str | None, str | None]:
        """(our address, the other end's address) on this connection: through a relay,
        the relay's, not the peer's (that is `peer_seen`)."""
        transport = getattr(self.writer, "transport", None)
        if transport is None:
            return None, None
        local = transport.get_extra_info("sockname")
        peer = transport.get_extra_info("peername")
        return (local[0] if local else None), (peer[0] if peer else None)

    async def line(self, timeout: float | None, expect: str) -> wire.Reply:
        """The relay's next line (or a sender's that is its own rendezvous), which must be
        `expect` (or an error). What goes wrong names the relay's address."""
        try:
            async with asyncio.timeout(timeout):
                raw = await self.reader.readline()
        except ValueError:
            raise self._fault(RelayError, "sent an overlong line") from None
        except OSError as exc:
            if _our_timeout(exc):
                raise self._fault(NoAnswer, f"did not answer in {timeout:g} s") from None
            raise self._fault(RelayError, f"was lost: {exc.strerror or exc}") from None
        if not raw.endswith(b"\n"):
            raise self._fault(RelayError, "closed the connection")
        if len(raw) > wire.MAX_LINE:
            raise self._fault(RelayError, "sent an overlong line")
        try:
            reply = wire.parse_reply(raw)
        except wire.WireError:  # its text names the relay, which this may not be
            raise self._fault(RelayError, "answered something that is not bob/1") from None
        # the relay is not trusted with the terminal any more than the peer is
        text = escape(reply.text)
        if reply.word == "error":
            raise self._fault(RelayError, f"says: {text}")
        if reply.word == "busy":
            raise self._fault(RelayBusy, f"says: {text}")
        if reply.word != expect:
            raise self._fault(RelayError, f"answered {reply.word!r} where bob/1 says {expect!r}")
        if reply.word == "paired":
            self.peer_seen = hints.paired_address(reply.text)
        return wire.Reply(reply.word, text)

    def _fault(self, kind: type[RelayError], what: str) -> RelayError:
        """`what` the other end did, said of it: the relay at its address, or the sender
        (a sender that is its own rendezvous; the place tried names its address)."""
        if self.direct:
            return kind(f"the sender {what}")
        return kind.at(self.relay, what)

    async def event(
        self, session: Session, timeout: float | None, pace: Pace | None = None
    ) -> Event:
        """The session's next event from this connection: `timeout` bounds the silence
        before each frame, and `pace`, if given, the wait for the whole."""
        self.channel.start_frames()
        while True:
            await self.flush(session.data_to_send())
            while self._pending:
                frame = self._pending.popleft()
                try:
                    event = session.receive_frame(frame.kind, frame.head, frame.body)
                finally:
                    self.channel.release([frame])
                await self.flush(session.data_to_send())
                if event is not None:
                    if isinstance(event, Aborted):
                        raise PeerAborted(f"the other side says: {event.reason}")
                    return event
            wait, late = (timeout, None) if pace is None else pace.wait(timeout)
            self._pending.extend(await self.frames(wait, late))

    async def arrived(self, timeout: float) -> None:
        """Wait until the peer's first whole frame (its key exchange message) is here, not
        yet made into an event (`event` takes it). NoKeyExchange if none comes within
        `timeout` or the connection ends first: the peer made no guess."""
        self.channel.start_frames()
        if self._pending:
            return
        try:
            async with asyncio.timeout(timeout):
                got = await self.channel.frames()
        except (OSError, ConnectionClosed) as exc:
            if _our_timeout(exc):
                raise NoKeyExchange(
                    f"the other side sent no key exchange message in {timeout:g} s"
                ) from None
            raise NoKeyExchange(f"{broke(exc)} before its key exchange") from None
        except RemoteProtocolError as exc:  # a first frame no bob/1 peer sends (too long)
            raise NoKeyExchange(str(exc)) from None
        if not got:
            raise NoKeyExchange("the other side closed the connection before its key exchange")
        self._pending.extend(got)

    async def frames(self, timeout: float | None, late: TransferError | None = None) -> list[Frame]:
        """Whole frames as they come; PeerGone at the end of the stream or past `timeout`
        (or `late`, when it was a bound on more than this wait that ran out)."""
        try:
            # asyncio.timeout, not wait_for: no task per read on the hot path
            async with asyncio.timeout(timeout):
                got = await self.channel.frames()
        except (OSError, ConnectionClosed) as exc:
            if _our_timeout(exc):
                if late is not None:
                    raise late from None
                raise PeerGone(f"the other side went quiet: nothing for {timeout:g} s") from None
            raise broke(exc) from None
        if not got:
            raise PeerGone("the other side closed the connection")
        return got

    def buffered(self) -> bool:
        """Anything received and not yet made into events."""
        return bool(self._pending) or self.channel.buffered > 0

    async def until_closed(self, session: Session) -> None:
        """After DONE: the sender closes. Anything it sends first is an error."""
        if self._pending:
            session.next_event()  # raises: the session is over
            raise RemoteProtocolError("the sender sent data after the session closed")
        while True:
            try:
                got = await self.frames(self.timeout)
            except PeerGone:
                return
            self.channel.release(got)
            raise RemoteProtocolError("the peer sent data after the session closed")

    def write(self, frames: Sequence[bytes | bytearray | memoryview]) -> None:
        if self.writer.is_closing():  # uvloop raises RuntimeError on a closed transport
            error = getattr(self.writer, "error", None)
            if error is not None:
                raise broke(error)
            if getattr(self.writer, "eof", False):
                raise PeerGone("the other side closed the connection")
            raise PeerGone("the connection broke")
        self.writer.writelines(frames)

    async def flush(self, data: bytes, pace: Pace | None = None) -> None:
        if data:
            self.write([data])
            await self.drain(pace)

    async def drain(self, pace: Pace | None = None) -> None:
        """Wait for the buffer to empty; fail when nothing left it for `timeout`, or
        (with `pace`) when emptying it took too long on the whole: a reader that takes
        a few bytes before each `timeout` runs out is still moving."""
        transport = self.writer.transport
        waiting = asyncio.ensure_future(self.writer.drain())
        try:
            left = transport.get_write_buffer_size()
            while True:
                wait, late = (self.timeout, None) if pace is None else pace.wait(self.timeout)
                done, _ = await asyncio.wait({waiting}, timeout=wait)
                if done:
                    waiting.result()
                    return
                if late is not None:
                    raise late
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

    async def linger(self) -> None:
        """After our last record (an ABORT): nothing more from us, and what the peer still
        sends is read and dropped until it closes. A close with its bytes unread resets
        the connection (RFC 2525 2.17), and a relay ends both directions of the pair at
        the first reset (relay/splice.py), sometimes before that record crossed it: the
        peer would hear only "closed" where we told it why. The caller bounds the wait."""
        if not isinstance(self.reader, Channel) or self.reader.transport is None:
            return
        with contextlib.suppress(OSError, RuntimeError):
            self.reader.transport.write_eof()
        while True:
            try:
                got = await self.frames(None)
            except PeerGone:
                return
            self.channel.release(got)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            async with asyncio.timeout(self.timeout):
                await self.writer.wait_closed()


MAX_ADDRESSES = 4  # of one relay (its name's, or its announcement's), tried within one timeout
# seconds an address has to connect before the next one is tried beside it (RFC 8305's
# connection attempt delay): on a LAN a connect takes a millisecond, unless it never will
STAGGER = 0.25


async def open_channel(host: str, port: int, timeout: float, also: Sequence[str] = ()) -> Channel:
    """A TCP connection with Nagle off (records go out as they are sealed), to the first to
    answer of `host`'s addresses then `also`'s, at most MAX_ADDRESSES, each tried STAGGER
    seconds after the one before or as soon as it failed: an address that never answers
    (a host announces its uplink's too) holds nobody up. A name is resolved here, in a
    daemon thread: uvloop's own lookup, for a name handed to create_connection, outlived a
    timeout and printed its late error as a traceback after bob's one line ("Future
    exception was never retrieved ... gaierror")."""
    async with asyncio.timeout(timeout):
        addresses = list(dict.fromkeys([*await _addresses(host, port), *also]))
        if len(addresses) == 1:  # a direct hint, a relay's literal address: no race to run
            _, channel = await asyncio.get_running_loop().create_connection(
                Channel, addresses[0], port
            )
        else:
            channel = await _first_to_answer(addresses[:MAX_ADDRESSES], port)
    _no_delay(channel)
    return channel


async def _first_to_answer(addresses: list[str], port: int) -> Channel:
    """The first of `addresses` to connect, each started STAGGER seconds after the one
    before or at once when the last failed; the others cancelled, or closed if they
    connected too. With none connected, the first address's error."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[tuple[asyncio.Transport, Channel]]] = []
    failed: dict[int, OSError] = {}
    won: Channel | None = None
    try:
        while won is None:
            if len(tasks) < len(addresses):
                address = addresses[len(tasks)]
                tasks.append(asyncio.ensure_future(loop.create_connection(Channel, address, port)))
            pending = [task for task in tasks if not task.done()]
            if not pending:
                raise failed[min(failed)]
            more = len(tasks) < len(addresses)
            done, _ = await asyncio.wait(
                pending, timeout=STAGGER if more else None, return_when=asyncio.FIRST_COMPLETED
            )
            for task in sorted(done, key=tasks.index):
                exc = task.exception()
                if exc is None:
                    won = won or task.result()[1]
                elif isinstance(exc, OSError):
                    failed[tasks.index(task)] = exc
                else:
                    if won is not None and won.transport is not None:
                        won.transport.close()  # not handed to anyone
                    raise exc
        return won
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()  # its socket is closed as it ends
                task.add_done_callback(_retrieved)
            elif not task.cancelled() and task.exception() is None and task.result()[1] is not won:
                task.result()[0].close()  # a second to answer


def _retrieved(task: asyncio.Task[Any]) -> None:
    """A connect we no longer wait for: its error was seen elsewhere, or needs no one; if
    it connected after all (it completed before its cancel arrived), it is closed."""
    if task.cancelled():
        return
    if task.exception() is None:
        task.result()[0].close()


async def _addresses(host: str, port: int) -> list[str]:
    """`host`'s addresses, at most MAX_ADDRESSES, in the resolver's order; a literal as is."""
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        pass
    else:
        return [host]
    # a thread of its own that ends with the lookup: a Worker's never ends, and a sender
    # retrying a full relay by name would have left one behind every two seconds
    infos = await in_thread(lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
    found = list(dict.fromkeys(str(info[4][0]) for info in infos))
    return found[:MAX_ADDRESSES] or [host]


def _no_delay(channel: Channel) -> None:
    assert channel.transport is not None
    sock = socket_of(channel.transport)
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def connect(
    relay: Relay, request: wire.Request, timeout: float, connect_timeout: float = CONNECT_TIMEOUT
) -> Link:
    try:
        channel = await open_channel(relay.host, relay.port, connect_timeout, relay.also)
    except (OSError, TimeoutError) as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise Unreachable(relay, why) from None
    channel.write(request.encode())
    link = Link.over(channel, timeout)
    link.relay = reached(relay, channel)
    return link


def reached(relay: Relay, channel: Channel) -> Relay:
    """`relay` at the one of its addresses that answered on `channel`; a relay given by
    name keeps the name the user knows it by."""
    if not relay.also or channel.transport is None:
        return relay
    peer = channel.transport.get_extra_info("peername")
    return Relay(str(peer[0]), relay.port) if peer else relay
