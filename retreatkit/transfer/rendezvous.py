"""Where a sender's receivers come from: a relay holding its nameplate on one or more
waiting connections, or (with no relay on the network) the sender's own listener,
advertised on the LAN by its public nameplate alone."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from retreatkit.relay import wire
from retreatkit.transfer import codes
from retreatkit.transfer.channel import Channel
from retreatkit.transfer.direct import own_addresses
from retreatkit.transfer.errors import TransferError
from retreatkit.transfer.link import (
    CONNECT_TIMEOUT,
    Link,
    Relay,
    RelayBusy,
    RelayError,
    connect,
    discard,
)

if TYPE_CHECKING:
    from retreatkit import mdns

MAX_WAITING = 8
# The nameplates a sender that is its own rendezvous draws, as (tries, below): from 1-99
# first, short to say and to type; those found taken on the LAN (mDNS probing) widen the
# draw, as a relay widens its own (relay.matching), so a crowded LAN, or a neighbour
# announcing every short one, costs a longer nameplate, not the offer.
SPANS = ((3, 100), (3, 10_000), (10, 1_000_000))
ROOM_RETRY = 2.0  # seconds between asking a relay at its pairs limit for a place again
Announce = Callable[[str, list[str], int], Awaitable["mdns.Advertisement"]]


async def _announce(nameplate: str, addresses: list[str], port: int) -> mdns.Advertisement:
    """On the LAN, the public nameplate and where to connect: nothing from the words."""
    from retreatkit import mdns

    return await mdns.advertise(
        mdns.RELAY, f"bob sender {nameplate}", addresses, port,
        {"kind": "sender", "nameplate": nameplate},
    )  # fmt: skip  # connections a sender keeps waiting on its nameplate at once


def draws() -> Iterator[int]:
    """Below what each nameplate is drawn, in turn (SPANS)."""
    for tries, below in SPANS:
        for _ in range(tries):
            yield below


def _offline() -> bool:
    """On no network but loopback (one laptop, trying bob out): a sender announced at
    loopback is found there, and nobody else can announce anything."""
    from retreatkit.lanaddress import networks  # ifaddr: zeroconf has loaded it

    return all(network.is_loopback for network in networks())


class Closed(Exception):
    """The offer was closed: no more receivers."""


class Rendezvous(Protocol):
    async def open(self, nameplate: str | None) -> str: ...
    async def next(self) -> tuple[Link, str]: ...
    def one_more(self) -> None:
        """A connection handed out by next() was no receiver (it made no key exchange):
        take one more in its place, as if it had never joined (each part counts the
        receivers still to come, and a relay's stops holding places when that reaches 0)."""

    async def close(self) -> None: ...


class RelayRendezvous:
    """A nameplate held at a relay. For several receivers, several connections wait on
    it at once, tied together by a random key only this sender knows (PROTOCOL.md 2)."""

    def __init__(
        self,
        relay: Relay,
        count: int,
        timeout: float,
        connect_timeout: float = CONNECT_TIMEOUT,
        answer: float = CONNECT_TIMEOUT,
    ) -> None:
        self.relay = relay
        self.connect_timeout = connect_timeout
        self.answer = answer  # for its `ok`
        self.wanted = count  # receivers still to come
        self.timeout = timeout
        self.key = secrets.token_hex(16) if count > 1 else None
        self.nameplate: str | None = None
        self._waiting: dict[asyncio.Future[wire.Reply], Link] = {}
        self._closed = False

    async def open(self, nameplate: str | None) -> str:
        link = await self._connect(nameplate)
        try:
            ok = await link.line(self.answer, "ok")
        except BaseException:
            await link.close()
            raise
        if codes.NAMEPLATE_RE.match(ok.text) is None or ok.text != (nameplate or ok.text):
            await link.close()
            raise RelayError.at(
                self.relay, f"gave a nameplate that is not the one asked: {ok.text}"
            )
        self.nameplate = ok.text
        self._wait_on(link)
        await self._top_up()
        return ok.text

    async def _connect(self, nameplate: str | None) -> Link:
        request = wire.Request(wire.Role.SEND, nameplate, self.key)
        link = await connect(self.relay, request, self.timeout, self.connect_timeout)
        # of the addresses announced, the one that answered: the others are not tried again
        self.relay = link.relay or self.relay
        return link

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
            if self._closed:  # closed while this one connected: it must not hold the nameplate
                await link.close()
                return
            self._wait_on(link)

    async def next(self) -> tuple[Link, str]:
        """The next receiver to join: its connection and its address as the relay saw it.
        Closed if the offer closes meanwhile (a failed key exchange of another receiver
        calls close() while this waits). A relay that had no room for the next receiver's
        place (at its pairs limit) is asked again every ROOM_RETRY seconds: a transfer
        there ends, and a place frees."""
        while not self._waiting:
            if self._closed or self.wanted <= 0:
                raise Closed
            try:
                await self._top_up()
            except RelayBusy:
                await asyncio.sleep(ROOM_RETRY)  # a poll of the relay, not a synchronisation
        done, _ = await asyncio.wait(set(self._waiting), return_when=asyncio.FIRST_COMPLETED)
        if self._closed:  # close() took the waiters, and cancelled them
            raise Closed
        waiter = next(iter(done))
        link = self._waiting.pop(waiter)
        try:
            paired = waiter.result()
        except BaseException:
            await link.close()
            raise
        self.wanted -= 1
        with contextlib.suppress(RelayError):
            # the next receiver's place: this one is served whatever the relay says now,
            # and the next call asks again
            await self._top_up()
        return link, paired.text

    def one_more(self) -> None:
        self.wanted += 1

    async def close(self) -> None:
        """No more receivers: the waiting connections go, the nameplate is free again."""
        self._closed = True
        waiting, self._waiting = self._waiting, {}
        for waiter, link in waiting.items():
            discard(waiter)
            with contextlib.suppress(Exception):
                await link.close()


class OwnRendezvous:
    """No relay on the network: the sender is its own, for its nameplate alone. It listens
    on every interface and advertises `_retreat-relay._tcp` with its public nameplate, never
    anything derived from the words; a receiver on the LAN finds it, sends `bob/1 recv N`
    and is answered `paired` as a relay would. A nameplate another sender advertises is
    not taken (mDNS probing): another is drawn, from a wider span after a few (SPANS).
    Neighbours that connect and say anything else are turned away without burning the
    nameplate. At most MAX_PENDING connections wait to be heard
    at once, at most MAX_PER_ADDRESS of them from one address; a newcomer past either
    bound pushes out the oldest of its own address, else the oldest of the address that
    holds the most. So connections that say nothing keep no receiver out: its own
    connection is heard within a round trip of its arrival, and only a neighbour with as
    many addresses as the bound could push it out first."""

    MAX_PENDING = 16
    MAX_PER_ADDRESS = 4
    HANDSHAKE = 10.0

    def __init__(
        self,
        count: int,
        timeout: float,
        announce: Announce | None = None,
        host: str = "0.0.0.0",
        randbelow: Callable[[int], int] = secrets.randbelow,
    ) -> None:
        self.wanted = count
        self.timeout = timeout
        self._announce = announce
        self._host = host
        self._randbelow = randbelow
        self.nameplate: str | None = None
        self._server: asyncio.Server | None = None
        self._advert: mdns.Advertisement | None = None
        # receivers heard and paired; None once the offer closed (it wakes next())
        self._joined: asyncio.Queue[tuple[Link, str] | None] = asyncio.Queue()
        # connections waiting to be heard, oldest first, with the address each came from
        self._pending: dict[asyncio.Task[None], tuple[str, Channel]] = {}
        self._closed = False

    async def open(self, nameplate: str | None) -> str:
        from retreatkit import mdns  # zeroconf only where it is used: bob starts faster

        announce = self._announce or _announce
        addresses = [str(a) for a in own_addresses(None) if a.version == 4]
        if not addresses and not _offline():
            # announced (by IPv4 multicast DNS) at loopback, nobody would find it: not a
            # receiver elsewhere, nor one here, which takes loopback from an announcement
            # only on a computer on no network at all (find.usable)
            raise RelayError(
                "no relay on this network, and this computer has no IPv4 address on it, where"
                " a receiver finds a sender on the LAN: give --relay HOST:PORT"
            )
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Channel(self._accepted), self._host, 0)
        port = self._server.sockets[0].getsockname()[1]
        addresses = addresses or ["127.0.0.1"]
        for below in draws():
            plate = nameplate or str(1 + self._randbelow(below - 1))
            try:
                self._advert = await announce(plate, addresses, port)
            except mdns.NameTaken:
                if nameplate is not None:
                    await self.close()
                    raise RelayError(
                        f"nameplate {plate} is in use on this network; choose another passphrase"
                    ) from None
                continue
            except OSError as exc:
                await self.close()
                raise RelayError(
                    f"cannot advertise on this network: {exc.strerror or exc}"
                ) from None
            self.nameplate = plate
            return plate
        await self.close()
        raise RelayError("no free nameplate on this network; try again")

    def _accepted(self, channel: Channel) -> None:
        assert channel.transport is not None
        if self._closed:
            channel.transport.abort()
            return
        address = str((channel.transport.get_extra_info("peername") or ("?",))[0])
        mine = [task for task, (there, _) in self._pending.items() if there == address]
        if len(mine) >= self.MAX_PER_ADDRESS:
            self._push_out(mine[0])
        elif len(self._pending) >= self.MAX_PENDING:
            self._push_out(self._oldest_of_the_most())
        task = asyncio.ensure_future(self._hear(channel))
        self._pending[task] = (address, channel)
        task.add_done_callback(lambda done: self._pending.pop(done, None))

    def _oldest_of_the_most(self) -> asyncio.Task[None]:
        counts = collections.Counter(there for there, _ in self._pending.values())
        most = max(counts.values())
        return next(task for task, (there, _) in self._pending.items() if counts[there] == most)

    def _push_out(self, task: asyncio.Task[None]) -> None:
        _, channel = self._pending.pop(task)  # room now, before its task has even run
        if task.done():  # heard: its channel is a receiver's link now, or closed
            return
        task.cancel()
        assert channel.transport is not None
        channel.transport.abort()

    async def _hear(self, channel: Channel) -> None:
        reply = wire.reply("error", "not a bob/1 request")
        try:
            async with asyncio.timeout(self.HANDSHAKE):
                line = await channel.readline(wire.MAX_LINE)
            request = wire.parse_request(line) if line.endswith(b"\n") else None
        except (TimeoutError, ValueError, wire.WireError, OSError, TransferError):
            request = None
        if request is not None and request.role is wire.Role.RECV:
            if request.nameplate == self.nameplate and not self._closed:
                assert channel.transport is not None
                here = channel.transport.get_extra_info("sockname")
                peer = channel.transport.get_extra_info("peername")
                channel.write(wire.reply("paired", f"{here[0]}:{here[1]}"))
                task = asyncio.current_task()
                self._pending.pop(task, None)  # type: ignore[arg-type]  # a link now: never pushed out
                self._joined.put_nowait(
                    (Link.over(channel, self.timeout, direct=True), f"{peer[0]}:{peer[1]}")
                )
                return
            reply = wire.reply("error", f"no sender is waiting on nameplate {request.nameplate}")
        with contextlib.suppress(Exception):
            channel.write(reply)
        channel.close()

    async def next(self) -> tuple[Link, str]:
        """The next receiver to join; Closed once the offer closes, also while this waits
        (a failed key exchange of another receiver closes it)."""
        if self._closed:
            raise Closed
        joined = await self._joined.get()
        if joined is None:
            raise Closed
        self.wanted -= 1
        return joined

    def one_more(self) -> None:
        self.wanted += 1

    async def close(self) -> None:
        self._closed = True
        left = []
        while not self._joined.empty():  # joined, never handed out: they go too
            joined = self._joined.get_nowait()
            if joined is not None:
                left.append(joined[0])
        self._joined.put_nowait(None)
        for link in left:
            await link.close()
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._pending):
            self._push_out(task)
        if self._advert is not None:
            advert, self._advert = self._advert, None
            await advert.close()
