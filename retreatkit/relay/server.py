"""The relay's socket shell: asyncio protocols that perform what the pure core decides."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from typing import Any, cast

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as PromCounter

from retreatkit.relay import splice, status
from retreatkit.relay.lifecycle import Action, Arm, Close, Conn, Phase, RelayCore, Warn, Write
from retreatkit.relay.matching import Limits, most_unpaired

log = logging.getLogger("retreatkit.relay")
FD_WARNING = 0.8  # of the open-file limit


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one, as the transit relay does: each
    connection holds a descriptor, and the usual soft 1024 is a few hundred pairs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            log.warning("could not raise the open-file limit above %d", soft)
    return soft


class Metrics:
    """What /metrics shows; the counts /status shows live in the core."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self._ended = PromCounter(
            "bob_relay_connections",
            "Relay connections closed, by how they ended",
            ["ended"],
            registry=registry,
        )
        self._bytes = PromCounter(
            "bob_relay_bytes", "Bytes forwarded between paired peers", registry=registry
        )
        self._open = Gauge("bob_relay_connections_open", "Open connections", registry=registry)
        self._waiting = Gauge("bob_relay_waiting", "Senders waiting", registry=registry)

    def closed(self, conn: Conn) -> None:
        assert conn.ending is not None
        self._ended.labels(conn.ending.value).inc()
        self._bytes.inc(conn.sent)

    def gauges(self, core: RelayCore) -> None:
        self._open.set(len(core.conns))
        self._waiting.set(core.matcher.waiting)


class Relay:
    """One relay: its core, its metrics and its listening socket."""

    def __init__(
        self,
        limits: Limits | None = None,
        registry: CollectorRegistry | None = None,
        use_splice: bool = splice.AVAILABLE,
    ):
        self.limits = limits or Limits()
        self.use_splice = use_splice
        self.core = RelayCore(self.limits, clock=time.monotonic)
        self.metrics = Metrics(registry)
        self.open_files = 0
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self.open_files = raise_open_file_limit()
        if self.open_files != resource.RLIM_INFINITY:
            self.core.unpaired_limit = most_unpaired(self.open_files, self.limits.pairs)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: RelayConnection(self), host, port)
        address: tuple[str, int] = self._server.sockets[0].getsockname()[:2]
        log.debug(
            "relay listening on %s:%d (open-file limit %d: %s connections not yet paired)",
            *address, self.open_files, self.core.unpaired_limit,
        )  # fmt: skip
        return address

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self.perform(self.core.stop())
            await self._server.wait_closed()

    def collect(self) -> None:
        """Bring the spliced pairs' byte counts into the core."""
        for conn in self.core.conns:
            pair = cast(RelayConnection, conn.handle).pair
            if pair is not None:
                pair.collect()

    def status(self) -> dict[str, Any]:
        self.collect()
        warnings = []
        if self.open_files and len(self.core.conns) >= FD_WARNING * self.open_files:
            warnings.append(
                f"{len(self.core.conns)} connections open and the open-file limit is"
                f" {self.open_files}: raise it (ulimit -n) before new ones fail"
            )
        return status.section(self.core, warnings)

    def transfers(self) -> dict[str, list[dict[str, Any]]]:
        self.collect()
        return status.transfers(self.core)

    def perform(self, actions: list[Action]) -> None:
        for action in actions:
            handle = cast(RelayConnection, action.conn.handle)
            if isinstance(action, Warn):
                log.warning("%s", action.text)
            elif isinstance(action, Write):
                handle.write(action.data)
            elif isinstance(action, Arm):
                handle.arm(action.at)
            elif isinstance(action, Close):
                handle.close()
                self.metrics.closed(action.conn)
                ending = action.conn.ending
                log.debug("closed %s: %s", action.conn.address, ending and ending.value)
        self.metrics.gauges(self.core)

    def hand_over(self, a: RelayConnection, b: RelayConnection) -> None:
        """A pair just formed: forward its bytes in the kernel from now on, if this system
        can and nothing is left in either transport to write."""
        ta, tb = a.transport, b.transport
        if not self.use_splice or ta is None or tb is None:
            return
        if ta.get_write_buffer_size() or tb.get_write_buffer_size():
            return
        sa, sb = ta.get_extra_info("socket"), tb.get_extra_info("socket")
        if sa is None or sb is None:
            return
        made: list[int] = []
        try:
            for sock in (sa, sb):
                made.append(os.dup(sock.fileno()))
        except OSError as exc:  # out of open files: the transports still carry the pair
            for fd in made:
                os.close(fd)
            log.warning(
                "a pair goes on without splice (copied through the relay), out of open files: %s",
                exc,
            )
            return
        fa, fb = made
        conns = (a.conn, b.conn)

        def moved(side: int, n: int, at: float) -> None:
            conn = conns[side]
            if conn is not None:
                self.core.forwarded(conn, n, at)

        def ended(side: int) -> None:
            conn = conns[side]
            if conn is not None:
                self.perform(self.core.lost(conn))

        for handle in (a, b):
            handle.spliced = True  # its transport's end is not the connection's
            assert handle.transport is not None
            handle.transport.abort()
        try:
            pair = splice.Splice(fa, fb, moved, ended, self.core.clock)
        except OSError as exc:  # out of open files or pipes, the transports gone: it ends
            for fd in (fa, fb):
                os.close(fd)
            log.warning("a pair closed as it formed, out of open files or pipes: %s", exc)
            if a.conn is not None:
                self.perform(self.core.no_room(a.conn))
            return
        a.pair = b.pair = pair


class RelayConnection(asyncio.Protocol):
    """One TCP connection; the core decides, this performs."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.core = relay.core
        self.transport: asyncio.Transport | None = None
        self.conn: Conn | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.spliced = False  # the pair's bytes go through splice, not this transport
        self.ended_writing = False  # its client ended its writing, passed on to the peer
        self.pair: splice.Splice | None = None

    # -- asyncio callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but behave as one
        self.transport = cast(asyncio.Transport, transport)
        peername = self.transport.get_extra_info("peername") or ("?", 0)
        ip, address = str(peername[0]), f"{peername[0]}:{peername[1]}"
        self.conn, actions = self.core.connect(ip, address, self)
        self.relay.perform(actions)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        assert conn is not None
        peer = conn.peer
        if peer is not None:  # the hot path: forward, count, nothing else
            cast(RelayConnection, peer.handle).write(data)
            self.core.forwarded(conn, len(data))
            return
        self.relay.perform(self.core.received(conn, data))
        if conn.phase is Phase.PAIRED and conn.peer is not None:  # this line paired it
            self.relay.hand_over(cast(RelayConnection, conn.peer.handle), self)

    def eof_received(self) -> bool | None:
        """A paired side that ends its writing has it passed on, and still hears its peer
        until the peer ends too (as the splice does); otherwise close our side too, and
        the peer gets closed in connection_lost."""
        conn = self.conn
        peer = conn.peer if conn is not None and conn.phase is Phase.PAIRED else None
        if peer is None:
            return None
        other = cast(RelayConnection, peer.handle)
        if other.ended_writing or other.transport is None or other.transport.is_closing():
            return None  # both have ended: close, cleanly (nothing is left unread)
        if not other.transport.can_write_eof():
            return None
        self.ended_writing = True
        other.transport.write_eof()  # after what is buffered for it
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.spliced:
            return  # the splice carries on with the socket
        if self.conn is not None:
            self.relay.perform(self.core.lost(self.conn))
        if self._timer is not None:  # the flush after close() finished in time
            self._timer.cancel()
            self._timer = None

    # flow control: when the peer cannot take more, stop reading from this side
    def pause_writing(self) -> None:
        peer = self.conn.peer if self.conn else None
        if peer is not None:
            cast(RelayConnection, peer.handle).pause_reading()

    def resume_writing(self) -> None:
        peer = self.conn.peer if self.conn else None
        if peer is not None:
            cast(RelayConnection, peer.handle).resume_reading()

    # -- what the core asks for -------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def arm(self, at: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if at is not None:
            delay = max(0.0, at - self.core.clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self.pair is not None:
            self.pair.collect()  # when bytes last moved decides whether the pair is idle
        if self.conn is not None:
            self.relay.perform(self.core.expire(self.conn))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.pair is not None:
            self.pair.close()  # both sockets: its threads close them once out
            return
        if self.transport is None or self.spliced:
            return
        self.transport.close()  # flushes what is buffered, then closes
        if self.transport.get_write_buffer_size():
            # but not for ever: a client that stops reading would keep the socket (and
            # the buffer) after it no longer counts towards any limit
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.relay.limits.idle_timeout, self.transport.abort)
