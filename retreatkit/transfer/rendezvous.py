"""Where a sender's receivers come from: a relay holding its nameplate on one or more
waiting connections, or (with no relay on the network) the sender's own listener,
advertised on the LAN by its public nameplate alone."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Protocol

from retreatkit.relay import wire
from retreatkit.transfer import codes
from retreatkit.transfer.link import CONNECT_TIMEOUT, Link, Relay, RelayError, connect, discard

MAX_WAITING = 8  # connections a sender keeps waiting on its nameplate at once


class Closed(Exception):
    """The offer was closed: no more receivers."""


class Rendezvous(Protocol):
    async def open(self, nameplate: str | None) -> str: ...
    async def next(self) -> tuple[Link, str]: ...
    async def close(self) -> None: ...


class RelayRendezvous:
    """A nameplate held at a relay. For several receivers, several connections wait on
    it at once, tied together by a random key only this sender knows (PROTOCOL.md 2)."""

    def __init__(self, relay: Relay, count: int, timeout: float) -> None:
        self.relay = relay
        self.wanted = count  # receivers still to come
        self.timeout = timeout
        self.key = secrets.token_hex(16) if count > 1 else None
        self.nameplate: str | None = None
        self._waiting: dict[asyncio.Future[wire.Reply], Link] = {}
        self._closed = False

    async def open(self, nameplate: str | None) -> str:
        link = await self._connect(nameplate)
        try:
            ok = await link.line(CONNECT_TIMEOUT, "ok")
        except BaseException:
            await link.close()
            raise
        if codes.NAMEPLATE_RE.match(ok.text) is None or ok.text != (nameplate or ok.text):
            await link.close()
            raise RelayError(f"the relay gave a nameplate that is not the one asked: {ok.text}")
        self.nameplate = ok.text
        self._wait_on(link)
        await self._top_up()
        return ok.text

    async def _connect(self, nameplate: str | None) -> Link:
        return await connect(
            self.relay, wire.Request(wire.Role.SEND, nameplate, self.key), self.timeout
        )

    def _wait_on(self, link: Link) -> None:
        waiter = asyncio.ensure_future(link.line(None, "paired"))  # as long as it takes
        self._waiting[waiter] = link

    async def _top_up(self) -> None:
        while not self._closed and len(self._waiting) < min(self.wanted, MAX_WAITING):
            link = await self._connect(self.nameplate)
            try:
                await link.line(CONNECT_TIMEOUT, "ok")
            except BaseException:
                await link.close()
                raise
            self._wait_on(link)

    async def next(self) -> tuple[Link, str]:
        """The next receiver to join: its connection and its address as the relay saw it."""
        if self._closed or not self._waiting:
            raise Closed
        done, _ = await asyncio.wait(set(self._waiting), return_when=asyncio.FIRST_COMPLETED)
        waiter = next(iter(done))
        link = self._waiting.pop(waiter)
        try:
            paired = waiter.result()
        except BaseException:
            await link.close()
            raise
        self.wanted -= 1
        await self._top_up()
        return link, paired.text

    async def close(self) -> None:
        """No more receivers: the waiting connections go, the nameplate is free again."""
        self._closed = True
        waiting, self._waiting = self._waiting, {}
        for waiter, link in waiting.items():
            discard(waiter)
            with contextlib.suppress(Exception):
                await link.close()
