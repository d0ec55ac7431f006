"""The relay's socket shell: asyncio protocols around the pure Matcher."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any, cast

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as PromCounter

from retreatkit.relay import wire
from retreatkit.relay.matching import Limits, Matcher, Mood, Refusal

log = logging.getLogger("retreatkit.relay")


class Stats:
    """What the relay counts, for /status and /metrics; never a nameplate's secret part."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.moods: Counter[str] = Counter()
        self.bytes_relayed = 0
        self.pairs = 0
        self.started = time.time()
        self._moods = PromCounter(
            "bob_relay_connections",
            "Relay connections closed, by how they ended",
            ["mood"],
            registry=registry,
        )
        self._bytes = PromCounter(
            "bob_relay_bytes", "Bytes forwarded between paired peers", registry=registry
        )
        self._open = Gauge("bob_relay_connections_open", "Open connections", registry=registry)
        self._waiting = Gauge("bob_relay_waiting", "Senders waiting", registry=registry)

    def closed(self, mood: Mood, relayed: int) -> None:
        self.moods[mood.value] += 1
        self._moods.labels(mood.value).inc()
        self.bytes_relayed += relayed
        self._bytes.inc(relayed)

    def gauges(self, open_connections: int, waiting: int) -> None:
        self._open.set(open_connections)
        self._waiting.set(waiting)


class Relay:
    """Shared state of one relay: the matcher, the limits, the stats, the open connections."""

    def __init__(self, limits: Limits | None = None, registry: CollectorRegistry | None = None):
        self.limits = limits or Limits()
        self.matcher = Matcher(self.limits)
        self.stats = Stats(registry)
        self.connections: set[RelayConnection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: RelayConnection(self), host, port)
        address: tuple[str, int] = self._server.sockets[0].getsockname()[:2]
        log.debug("relay listening on %s:%d", *address)
        return address

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self.connections):
                conn.close(Mood.ERRORY)
            await self._server.wait_closed()

    def status(self) -> dict[str, Any]:
        return {
            "connections_open": len(self.connections),
            "waiting": self.matcher.waiting,
            "pairs": self.stats.pairs,
            "bytes_relayed": self.stats.bytes_relayed,
            "closed": dict(self.stats.moods),
            "transfers": len([c for c in self.connections if c.peer is not None]) // 2,
            "uptime": round(time.time() - self.stats.started, 1),
        }

    def changed(self) -> None:
        self.stats.gauges(len(self.connections), self.matcher.waiting)


class RelayConnection(asyncio.Protocol):
    """One TCP connection: handshake line, maybe a wait, then blind forwarding."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.peer: RelayConnection | None = None
        self.ip = "?"
        self.address = "?"
        self._buf = b""
        self._nameplate: str | None = None
        self._admitted = False
        self._closed = False
        self._mood = Mood.ERRORY
        self._relayed = 0
        self._last = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but behave as one
        self.transport = cast(asyncio.Transport, transport)
        peername = self.transport.get_extra_info("peername") or ("?", 0)
        self.ip, self.address = str(peername[0]), f"{peername[0]}:{peername[1]}"
        self.relay.connections.add(self)
        try:
            self.relay.matcher.admit(self.ip)
            self._admitted = True
        except Refusal as exc:
            self._fail(str(exc), Mood.REFUSED)
            return
        self._arm(self.relay.limits.handshake_timeout, "handshake timed out")
        self.relay.changed()

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self._relayed += len(data)
            self._last = time.monotonic()
            assert self.peer.transport is not None
            self.peer.transport.write(data)
            return
        if self._nameplate is not None:
            self._fail("send nothing until paired", Mood.ERRORY)
            return
        self._buf += data
        line, newline, rest = self._buf.partition(b"\n")
        if not newline:
            if len(self._buf) >= wire.MAX_LINE:
                self._fail("handshake line too long", Mood.ERRORY)
            return
        if rest:
            self._fail("send nothing until paired", Mood.ERRORY)
            return
        self._buf = b""
        try:
            self._handshake(wire.parse_request(line))
        except (wire.WireError, Refusal) as exc:
            mood = Mood.JILTED if "no sender is waiting" in str(exc) else Mood.ERRORY
            self._fail(str(exc), mood)

    def eof_received(self) -> bool | None:
        return None  # close our side too; the peer gets closed in connection_lost

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(self._mood)
        if self._timer is not None:  # the flush after close() finished in time
            self._timer.cancel()
            self._timer = None

    # flow control: when the peer cannot take more, stop reading from this side
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    # -- handshake ----------------------------------------------------------------------

    def _handshake(self, request: wire.Request) -> None:
        matcher = self.relay.matcher
        assert self.transport is not None
        if request.role is wire.Role.SEND:
            if request.nameplate is None:
                self._nameplate = matcher.allocate(self)
            else:
                self._nameplate = matcher.claim(self, request.nameplate)
            self._mood = Mood.LONELY
            self.transport.write(wire.reply("ok", self._nameplate))
            self._arm(self.relay.limits.wait_timeout, "nobody came for this nameplate")
            self.relay.changed()
            return
        assert request.nameplate is not None
        sender = matcher.join(request.nameplate)
        assert isinstance(sender, RelayConnection)
        self.relay.changed()
        self._pair(sender)

    def _pair(self, sender: RelayConnection) -> None:
        assert self.transport is not None and sender.transport is not None
        self.peer, sender.peer = sender, self
        self._mood = sender._mood = Mood.HAPPY
        self.relay.stats.pairs += 1
        sender.transport.write(wire.reply("paired", self.address))
        self.transport.write(wire.reply("paired", sender.address))
        for side in (self, sender):
            side._last = time.monotonic()
            side._arm(self.relay.limits.idle_timeout, "idle", idle=True)
        log.debug("paired %s with %s", sender.address, self.address)

    # -- ending -------------------------------------------------------------------------

    def _arm(self, delay: float, why: str, idle: bool = False) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(delay, self._expire, delay, why, idle)

    def _expire(self, delay: float, why: str, idle: bool) -> None:
        self._timer = None
        if idle:
            # measure against the configured limit, not this timer's delay: a re-armed
            # timer runs for the rest of the limit only, and the limit must not shrink
            limit = self.relay.limits.idle_timeout
            quiet = time.monotonic() - max(self._last, self.peer._last if self.peer else 0.0)
            if quiet < limit:
                self._arm(limit - quiet, why, idle=True)
                return
        self._fail(why, Mood.ERRORY if self._mood is not Mood.LONELY else Mood.LONELY)

    def _fail(self, reason: str, mood: Mood) -> None:
        if self.transport is not None and not self._closed and self.peer is None:
            self.transport.write(wire.reply("error", reason))
        log.debug("closing %s: %s", self.address, reason)
        self.close(mood)

    def close(self, mood: Mood) -> None:
        """Idempotent: every path out of a connection comes here exactly once."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.relay.matcher.leave(self, self._nameplate)
        if self._admitted:
            self.relay.matcher.release(self.ip)
        self.relay.connections.discard(self)
        self.relay.stats.closed(mood, self._relayed)
        if self.transport is not None:
            self.transport.close()  # flushes what is buffered, then closes
            if self.transport.get_write_buffer_size():
                # but not for ever: a client that stops reading would keep the socket
                # (and the buffer) after it no longer counts towards any limit
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(self.relay.limits.idle_timeout, self.transport.abort)
        peer, self.peer = self.peer, None
        if peer is not None:
            peer.close(mood)
        self.relay.changed()
