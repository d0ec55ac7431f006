"""The relay as a service of a retreatkit process: built from [relay], with its admin list."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from retreatkit.config import host_port_text
from retreatkit.relay.matching import Limits
from retreatkit.relay.server import Relay
from retreatkit.serve import Say

if TYPE_CHECKING:
    from aiohttp import web

    from retreatkit.mdns import LanAdvert


def relay_limits(section: dict[str, Any]) -> Limits:
    return Limits(
        per_ip=int(section["per_ip"]),
        waiting=int(section["waiting"]),
        waiting_per_ip=int(section["waiting_per_ip"]),
        handshake_timeout=float(section["handshake_timeout"]),
        wait_timeout=float(section["wait_timeout"]),
        idle_timeout=float(section["idle_timeout"]),
        failed_joins=int(section["failed_joins"]),
        failed_join_wait=float(section["failed_join_wait"]),
        pairs=int(section["pairs"]),
    )


class RelayService:
    name = "relay"

    def __init__(self, listen: tuple[str, int], limits: Limits, announce: bool = True) -> None:
        self.listen = listen
        self.limits = limits
        self.relay: Relay | None = None
        # bob finds the relay by zeroconf; a VM guest behind qemu's user network has no LAN
        self.advert: LanAdvert | None = None
        if announce:  # zeroconf is imported only where it is used
            from retreatkit.mdns import service_advert

            self.advert = service_advert("relay")

    async def start(self, registry: CollectorRegistry, say: Say) -> None:
        self.relay = Relay(self.limits, registry)
        host, port = await self.relay.start(*self.listen)
        say(f"Relay listening on {host_port_text(host, port)}")
        if self.advert is not None:
            self.advert.start(host, port)

    async def stop(self) -> None:
        if self.advert is not None:
            await self.advert.stop()
        if self.relay is not None:
            await self.relay.stop()

    def status(self) -> dict[str, Any]:
        return self.relay.status() if self.relay else {"up": False}

    def admin_routes(self) -> list[web.AbstractRouteDef]:
        from aiohttp import web  # loaded after the relay answers (serve.ADMIN_CODE)

        async def transfers(request: web.Request) -> web.Response:
            if self.relay is None:
                return web.json_response({"active": [], "recent": []})
            return web.json_response(self.relay.transfers())

        return [web.get("/relay/transfers", transfers)]
