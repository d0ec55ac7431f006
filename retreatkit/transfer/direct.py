"""Direct connections raced against the relay: a listener, connects to the peer's hints,
and the proof each socket gives before it may carry a record (hints.py says how).

Everything the peer or a LAN neighbour can start here is bounded: at most 4 outgoing
connects (1 s each, never retried) to hints `hints.viable` kept, at most 8 unproven
incoming sockets at once, each given 2 s to prove itself, and the whole race given
1.5 s once both sides know each other's hints. The relay stays the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import time
from collections.abc import Coroutine
from typing import Any

from retreatkit.lanaddress import networks
from retreatkit.transfer import hints
from retreatkit.transfer.channel import Channel
from retreatkit.transfer.errors import RemoteProtocolError, TransferError
from retreatkit.transfer.link import Link, open_channel
from retreatkit.transfer.pake import SessionKeys, Side

CONNECT_TIMEOUT = 1.0
PROOF_TIMEOUT = 2.0
WINDOW = 1.5
MAX_UNPROVEN = 8


def own_addresses(first: str | None) -> list[hints.Address]:
    """Addresses to offer: the one that reached the relay first, then every other one an
    interface holds, never loopback (unless the relay is on loopback: one computer) and
    never an IPv6 link-local one (the peer would need our interface's scope)."""
    import ifaddr  # only where direct connections are tried: its import runs `ldconfig -p`

    found: list[hints.Address] = []
    via = _address(first)
    if via is not None:
        found.append(via)
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            raw = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            with contextlib.suppress(ValueError):
                found.append(ipaddress.ip_address(raw))
    out: list[hints.Address] = []
    for address in found:
        if address in out or address.is_multicast or address.is_unspecified:
            continue
        if address.version == 6 and address.is_link_local:
            continue
        if address.is_loopback and not (via is not None and via.is_loopback):
            continue
        out.append(address)
    return out


class Racer:
    """The direct connections of one session, as either side."""

    def __init__(self, side: Side, keys: SessionKeys) -> None:
        self.side = side
        self.keys = keys
        self.proven: dict[bytes, Channel] = {}  # by the sender's nonce
        self.offered = 0  # hints we sent
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._unproven = 0
        self._changed = asyncio.Event()
        self._peer_hints_at: float | None = None
        self._all: list[Channel] = []
        self._kept: Channel | None = None

    # -- listening ------------------------------------------------------------------------

    async def listen(self, relay_local: str | None) -> list[hints.Hint]:
        """Listen on every interface; the hints to send (at most 4)."""
        loop = asyncio.get_running_loop()
        ports: dict[int, int] = {}
        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            try:
                server = await loop.create_server(
                    lambda: Channel(self._accepted), host, 0, family=family, reuse_address=True
                )
            except OSError:  # no IPv6 here, say
                continue
            self._servers.append(server)
            ports[4 if family == socket.AF_INET else 6] = server.sockets[0].getsockname()[1]
        offered = []
        for address in own_addresses(relay_local):
            port = ports.get(address.version)
            if port:
                offered.append(hints.Hint(address, port))
        offered = offered[: hints.MAX_HINTS]
        self.offered = len(offered)
        return offered

    def _accepted(self, channel: Channel) -> None:
        if self._unproven >= MAX_UNPROVEN or not self._servers:
            assert channel.transport is not None
            channel.transport.abort()  # a flood of neighbours cannot hold more than this
            return
        self._unproven += 1
        self._spawn(self._prove(channel, inbound=True))

    # -- connecting -----------------------------------------------------------------------

    def connect(
        self,
        theirs: tuple[hints.Hint, ...],
        peer_seen: hints.Address | None,
        relay_local: str | None,
    ) -> list[hints.Hint]:
        """Try the peer's hints that are viable from here (`peer_seen`: the peer's address
        in the relay's `paired` line; `relay_local`: our end of the relay connection);
        returns those tried."""
        self._peer_hints_at = time.monotonic()
        tried = hints.viable(theirs, networks(), peer_seen, _address(relay_local))
        for hint in tried:
            self._spawn(self._dial(hint))
        self._changed.set()
        return tried

    async def _dial(self, hint: hints.Hint) -> None:
        try:
            channel = await open_channel(str(hint.address), hint.port, CONNECT_TIMEOUT)
        except (OSError, TimeoutError):
            return
        self._unproven += 1
        await self._prove(channel, inbound=False)

    async def _prove(self, channel: Channel, inbound: bool) -> None:
        self._all.append(channel)
        mine = os.urandom(hints.NONCE_SIZE)
        try:
            channel.write(hints.hello(self.side, mine))
            async with asyncio.timeout(PROOF_TIMEOUT):
                theirs = hints.their_nonce(await channel.readexactly(hints.HELLO_SIZE), self.side)
                s_nonce, r_nonce = (mine, theirs) if self.side is Side.SENDER else (theirs, mine)
                channel.write(hints.mac(self.keys.my_direct, s_nonce, r_nonce))
                got = await channel.readexactly(hints.MAC_SIZE)
                hints.check_mac(self.keys.their_direct, s_nonce, r_nonce, got)
        except (OSError, TimeoutError, TransferError):
            channel.close()
            return
        finally:
            self._unproven -= 1
            self._changed.set()
        self.proven.setdefault(s_nonce, channel)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- choosing ---------------------------------------------------------------------------

    async def first(self) -> tuple[bytes, Channel] | None:
        """The sender's pick: the first proven socket within the window, or None (relay)."""
        while True:
            if self.proven:
                nonce = next(iter(self.proven))
                return nonce, self.proven[nonce]
            busy = bool(self._tasks)
            waited = time.monotonic() - (self._peer_hints_at or time.monotonic())
            if self._peer_hints_at is None or waited >= WINDOW:
                return None
            if not busy and self.offered == 0:
                return None  # nothing of ours pending, and the peer was told of no address
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WINDOW - waited):
                    await self._changed.wait()

    async def take(self, nonce: bytes) -> Channel:
        """The receiver's side of PATH: the socket the sender chose, once proven here."""
        deadline = time.monotonic() + PROOF_TIMEOUT
        while nonce not in self.proven:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RemoteProtocolError(
                    "the sender chose a direct connection that never proved itself"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._changed.wait()
        return self.proven[nonce]

    async def close(self, keep: Channel | None = None) -> None:
        """Stop listening and connecting; close every socket but the one kept (the first
        call's `keep`: later calls never close it)."""
        self._kept = self._kept or keep
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        for channel in self._all:
            if channel is not self._kept:
                channel.close()


def _address(text: str | None) -> hints.Address | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None


def link_for(channel: Channel, timeout: float) -> Link:
    """A proven direct socket, ready to carry records."""
    channel.start_frames()
    return Link.over(channel, timeout, direct=True)
