"""Services on the LAN by multicast DNS (zeroconf): advertise one, browse for others.

IPv4 on every interface that works (`InterfaceChoice.All` skips those that fail;
`Default` fails outright on a network with no default route, as a retreat's LAN may
be). Nothing secret is ever published: a relay's address and port, a sender's public
nameplate and the address a receiver connects to.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

# zeroconf's record types: exported at its top level, though not listed in its __all__
from zeroconf import (  # type: ignore[attr-defined]
    DNSAddress,
    DNSRecord,
    DNSService,
    DNSText,
    IPVersion,
    NonUniqueNameException,
    ServiceStateChange,
    Zeroconf,
    current_time_millis,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

log = logging.getLogger("retreatkit.mdns")
RELAY = "_retreat-relay._tcp.local."
MIRROR = "_retreat-mirror._tcp.local."
MAX_ADDRESSES = 16  # of one announcement, kept by a browse
RESOLVING = 8  # names a browse asks for at once, those whose records did not come with them
RESOLVE_MS = 500  # how long a browse asks for one such name
# SRV records, and TXT records, of one name that a browse takes (the first heard): anyone
# may answer for any name, the real announcer's records among them (`heard`)
MAX_RECORDS = 8
TYPE_A, TYPE_TXT, TYPE_SRV, CLASS_IN = 1, 16, 33, 1


class NameTaken(Exception):
    """Another machine on the LAN already advertises this name."""


@dataclass(frozen=True, slots=True)
class Found:
    name: str
    addresses: tuple[str, ...]
    port: int
    properties: dict[str, str]


class Advertisement:
    """A registered service; `close()` says goodbye on the LAN."""

    def __init__(self, zc: AsyncZeroconf, info: AsyncServiceInfo) -> None:
        self.zc = zc
        self.info = info

    async def close(self) -> None:
        try:
            with contextlib.suppress(Exception):
                # the goodbyes (RFC 6762 10.1), sent before the sockets close: a browser
                # forgets the old addresses at once, not when their records expire
                goodbyes = await self.zc.async_unregister_service(self.info)
                await goodbyes
        finally:
            await self.zc.async_close()


def host_label() -> str:
    return socket.gethostname().split(".")[0][:40] or "retreatkit"


async def advertise(
    service: str,
    instance: str,
    addresses: list[str],
    port: int,
    properties: dict[str, str],
    probe: bool = True,
) -> Advertisement:
    """Register `instance` of `service`; with `probe`, NameTaken if another machine holds
    the name (RFC 6762 probing, about a second). OSError where there is no multicast."""
    info = AsyncServiceInfo(
        service,
        f"{instance}.{service}",
        addresses=[ipaddress.ip_address(a).packed for a in addresses],
        port=port,
        properties=properties,
        # a name of this announcement's own: laptops at an event often share a host name
        # (`ubuntu`), and a browser joins every address announced under one name
        server=f"{host_label()}-{secrets.token_hex(4)}.local.",
    )
    zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
    try:
        await zc.async_register_service(info, cooperating_responders=not probe)
    except NonUniqueNameException:
        await zc.async_close()
        raise NameTaken(instance) from None
    except BaseException:
        await zc.async_close()
        raise
    return Advertisement(zc, info)


async def browse(
    service: str,
    seconds: float,
    stop: Callable[[list[Found]], bool] = lambda _: False,
    soon: Callable[[list[Found]], bool] = lambda _: False,
    grace: float = 0.0,
) -> list[Found]:
    """What answers for `service` within `seconds`, or sooner once `stop(found)` holds,
    or `grace` seconds after `soon(found)` first held. Nothing where multicast cannot be
    used.

    Anyone may announce names that never resolve (a PTR record with nothing behind it):
    a name whose records came with it is taken at once, the others are asked for
    RESOLVING at a time, each for at most RESOLVE_MS, so one that never resolves holds
    one of those places, never the browse."""
    found: list[Found] = []
    kept: set[tuple[object, ...]] = set()
    names: asyncio.Queue[str] = asyncio.Queue()
    news = asyncio.Event()  # found grew

    def keep(zeroconf: Zeroconf, name: str) -> bool:
        """What the cache holds for `name` now, each record set once; whether it holds any."""
        sets = heard(zeroconf, name)
        for f in sets:
            key = (f.name, f.addresses, f.port, tuple(sorted(f.properties.items())))
            if key not in kept:
                kept.add(key)
                found.append(f)
                news.set()
        return bool(sets)

    def changed(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        # Updated too: a neighbour that copies a name and answers first is heard first,
        # and the real announcer's records for that name come as an update
        if state_change is ServiceStateChange.Removed:
            return
        # a name whose records came with it (RFC 6763 12.1) is taken at once
        if not keep(zeroconf, name) and state_change is ServiceStateChange.Added:
            names.put_nowait(name)

    async def resolving() -> None:
        while True:
            name = await names.get()
            info = AsyncServiceInfo(service, name)
            if await info.async_request(zc.zeroconf, RESOLVE_MS):
                keep(zc.zeroconf, name)

    try:
        zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
    except OSError as exc:
        log.debug("no multicast here: %s", exc)
        return []
    browser = AsyncServiceBrowser(zc.zeroconf, [service], handlers=[changed])
    askers = [asyncio.ensure_future(resolving()) for _ in range(RESOLVING)]
    try:
        async with asyncio.timeout(seconds) as bound:
            hurried = False
            while not stop(found):
                if not hurried and soon(found):
                    hurried = True
                    sooner = asyncio.get_running_loop().time() + grace
                    when = bound.when()
                    if when is None or sooner < when:
                        bound.reschedule(sooner)
                news.clear()
                await news.wait()
    except TimeoutError:
        pass
    finally:
        for asker in askers:
            asker.cancel()
        await asyncio.gather(*askers, return_exceptions=True)
        await browser.async_cancel()
        await zc.async_close()
    return found


def heard(zeroconf: Zeroconf, name: str) -> list[Found]:
    """Every record set the cache holds for `name`: each of its SRV records (a port, and
    the addresses of its host) with each of its TXT records, at most MAX_RECORDS of each,
    the first heard. Anyone may answer for any name, so one name may have several: a
    neighbour that copies a sender's name and answers faster than the sender must not
    stand in for it (the receiver tries both, and only the real one proves the
    passphrase). A set with no TXT record, no address or port 0 is none."""
    cache, now = zeroconf.cache, current_time_millis()

    def live(kind: int, owner: str) -> list[DNSRecord]:
        records = cache.async_all_by_details(owner, kind, CLASS_IN)
        return [r for r in records if not r.is_expired(now)][:MAX_RECORDS]

    texts = [txt_properties(r.text) for r in live(TYPE_TXT, name) if isinstance(r, DNSText)]
    out: list[Found] = []
    for srv in live(TYPE_SRV, name):
        if not isinstance(srv, DNSService) or not srv.port:
            continue
        addresses: list[str] = []
        for record in cache.async_all_by_details(srv.server_key, TYPE_A, CLASS_IN):
            if isinstance(record, DNSAddress) and not record.is_expired(now):
                with contextlib.suppress(ValueError):
                    text = str(ipaddress.IPv4Address(record.address))
                    if text not in addresses:
                        addresses.append(text)
        # anyone may announce hundreds: bob tries a few (transfer.find), and sorts
        # no more than these each time it counts what it heard
        addresses = addresses[:MAX_ADDRESSES]
        if addresses:
            out += [Found(name, tuple(addresses), srv.port, dict(p)) for p in texts]
    return out


def txt_properties(text: bytes) -> dict[str, str]:
    """A TXT record's `key=value` strings (RFC 6763 6.3-6.4: a key given twice counts
    once, the first), ASCII with anything else replaced."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        size = text[pos]
        item = text[pos + 1 : pos + 1 + size]
        pos += 1 + size
        key, _, value = item.partition(b"=")
        if key:
            out.setdefault(key.decode("ascii", "replace"), value.decode("ascii", "replace"))
    return out


# How often a service listening on every address looks at this machine's addresses, so an
# organiser who plugs into the switch (or whose Wi-Fi joins) after `retreatkit up` is
# announced within seconds, and a new lease or a vanished interface stops being named. A
# look is one getifaddrs(3) through ifaddr: under a millisecond of CPU, 0.04 % of a core at
# this pace. python-zeroconf watches no interface itself (its issue #976: "outside of the
# scope") and binds its sockets to the interfaces present when it starts, so a change is
# announced by a new instance (`async_update_interfaces` comes only with zeroconf 0.150).
LOOK_EVERY = 2.0


class Following:
    """The addresses a service listening on every address announces, look after look: no
    I/O, the addresses held are given at each look and the verdict returned."""

    def __init__(self) -> None:
        self.held: frozenset[str] | None = None  # at the last look; None before the first

    def look(self, held: Iterable[str]) -> tuple[str, ...] | None:
        """None while this machine holds the IPv4 addresses it held at the last look (in any
        order); else those to announce now, in the order held: () for none, loopback being
        no address anybody else could reach."""
        now: list[str] = []
        for text in held:
            with contextlib.suppress(ValueError):
                address = ipaddress.ip_address(text)
                if address.version == 4 and not address.is_loopback and text not in now:
                    now.append(text)
        if self.held is not None and frozenset(now) == self.held:
            return None
        self.held = frozenset(now)
        return tuple(now)


class Withdrawable(Protocol):
    async def close(self) -> None: ...


Announce = Callable[[str, str, list[str], int, dict[str, str]], Awaitable[Withdrawable]]


def held_addresses() -> list[str]:
    from retreatkit.transfer.direct import own_addresses

    return [str(a) for a in own_addresses(None)]


class _GoneInterface(logging.Filter):
    """zeroconf's warning (with the exception under it) for a packet it could not send
    through an interface or address that went away: an answer or an announcement still
    under way when the link went down, or a goodbye after. Nobody is left there to hear
    it, and an announcement follows the machine's addresses on its own (`LanAdvert`)."""

    GONE = (errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENXIO)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, OSError) and exc.errno in self.GONE)


# for as long as zeroconf runs in this process, not only while it says goodbye: its
# sends are scheduled on their own (announcements repeat after registering, answers are
# delayed), so the link can go between any of them
logging.getLogger("zeroconf").addFilter(_GoneInterface())


class LanAdvert:
    """A service announced on the LAN by zeroconf, in the background (probing takes a
    second; the service serves meanwhile). Never on loopback: nobody else could reach it.
    Listening on every address, it follows the machine's addresses (`LOOK_EVERY`); `look`,
    `pause` and `announce` stand in for them, the clock and zeroconf in tests."""

    def __init__(
        self,
        service: str,
        label: str,
        properties: dict[str, str],
        *,
        look: Callable[[], Iterable[str]] = held_addresses,
        pause: Callable[[], Awaitable[None]] = lambda: asyncio.sleep(LOOK_EVERY),
        announce: Announce = advertise,
    ) -> None:
        self.service, self.label, self.properties = service, label, properties
        self._look, self._pause, self._announce = look, pause, announce
        self._task: asyncio.Task[None] | None = None
        self._advert: Withdrawable | None = None
        self._announced = False  # once: later announcements say `again`

    def start(self, host: str, port: int) -> None:
        if host in ("0.0.0.0", "::", ""):
            self._task = asyncio.ensure_future(self._follow(port))
        elif not ipaddress.ip_address(host).is_loopback:
            self._task = asyncio.ensure_future(self._at([host], port))

    async def _follow(self, port: int) -> None:
        following = Following()
        while True:
            try:
                held = list(self._look())
            except OSError as exc:  # an interface going away under getifaddrs: look again
                log.debug("cannot list this machine's addresses: %s", exc)
            else:
                now = following.look(held)
                if now is not None:
                    await self._withdraw(gone=not now)
                    if now:
                        await self._at(list(now), port)
            await self._pause()

    async def _at(self, addresses: list[str], port: int) -> None:
        name = f"{self.label} on {host_label()} port {port}"
        try:
            self._advert = await self._announce(
                self.service, name, addresses, port, self.properties
            )
        except (OSError, NameTaken) as exc:  # tried again when the addresses change
            log.warning("cannot announce %s on the LAN: %s", self.label, exc)
            return
        if self._announced:
            log.info("%s announced on the LAN again: %s", self.label, ", ".join(addresses))
        else:
            log.info("%s announced on the LAN as %s", self.label, name)
        self._announced = True

    async def _withdraw(self, gone: bool) -> None:
        advert, self._advert = self._advert, None
        if advert is not None:
            await advert.close()
            if gone:
                log.info("%s no longer announced on the LAN: no address but loopback", self.label)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._withdraw(gone=False)


# How the relay and the mirror are announced, run in this process or as a VM guest whose
# forwarded port `up` announces for it (image/vmservice.py): bob looks for `kind`, a
# browser for the mirror's `path`.
SERVICES = {
    "relay": (RELAY, "bob relay", {"kind": "relay"}),
    "mirror": (MIRROR, "retreatkit mirror", {"path": "/"}),
}


def service_advert(name: str) -> LanAdvert:
    """The announcement of `name`, a key of SERVICES, not yet started."""
    service, label, properties = SERVICES[name]
    return LanAdvert(service, label, dict(properties))
