"""Services on the LAN by multicast DNS (zeroconf): advertise one, browse for others.

IPv4 on every interface that works (`InterfaceChoice.All` skips those that fail;
`Default` fails outright on a network with no default route, as a retreat's LAN may
be). Nothing secret is ever published: a relay's address and port, a sender's public
nameplate and the address a receiver connects to.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass

from zeroconf import IPVersion, NonUniqueNameException, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

log = logging.getLogger("retreatkit.mdns")
RELAY = "_retreat-relay._tcp.local."
MIRROR = "_retreat-mirror._tcp.local."
MAX_ADDRESSES = 16  # of one announcement, kept by a browse


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
                await self.zc.async_unregister_service(self.info)
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
    used."""
    found: list[Found] = []
    names: asyncio.Queue[str] = asyncio.Queue()

    def changed(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Added:
            names.put_nowait(name)

    try:
        zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
    except OSError as exc:
        log.debug("no multicast here: %s", exc)
        return []
    browser = AsyncServiceBrowser(zc.zeroconf, [service], handlers=[changed])
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
                name = await names.get()
                info = AsyncServiceInfo(service, name)
                if not await info.async_request(zc.zeroconf, 500) or not info.port:
                    continue
                properties = {
                    k.decode("ascii", "replace"): (v or b"").decode("ascii", "replace")
                    for k, v in info.properties.items()
                }
                # anyone may announce hundreds: bob tries a few (transfer.find), and sorts
                # no more than these each time it counts what it heard
                addresses = tuple(info.parsed_addresses(IPVersion.V4Only))[:MAX_ADDRESSES]
                if addresses:
                    found.append(Found(name, addresses, info.port, properties))
    except TimeoutError:
        pass
    finally:
        await browser.async_cancel()
        await zc.async_close()
    return found


class LanAdvert:
    """A service announced on the LAN by zeroconf, in the background (probing takes a
    second; the service serves meanwhile). Never on loopback: nobody else could reach it."""

    def __init__(self, service: str, label: str, properties: dict[str, str]) -> None:
        self.service, self.label, self.properties = service, label, properties
        self._task: asyncio.Task[None] | None = None
        self._advert: Advertisement | None = None

    def start(self, host: str, port: int) -> None:
        wildcard = host in ("0.0.0.0", "::", "")
        if not wildcard and ipaddress.ip_address(host).is_loopback:
            return
        self._task = asyncio.ensure_future(self._run(host, port, wildcard))

    async def _run(self, host: str, port: int, wildcard: bool) -> None:
        from retreatkit.transfer.direct import own_addresses

        addresses = [str(a) for a in own_addresses(None) if a.version == 4] if wildcard else [host]
        if not addresses:
            return
        name = f"{self.label} on {host_label()} port {port}"
        try:
            self._advert = await advertise(self.service, name, addresses, port, self.properties)
        except (OSError, NameTaken) as exc:
            log.warning("cannot announce %s on the LAN: %s", self.label, exc)
            return
        log.info("%s announced on the LAN as %s", self.label, name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._advert is not None:
            await self._advert.close()
