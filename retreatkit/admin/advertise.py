"""Advertise an admin endpoint bound beyond loopback as `_retreat-admin._tcp.local.`.

Only the address and port are published, with the services hosted: the endpoint still
refuses everything without the token, so finding it gives nothing away.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from retreatkit.admin.access import is_loopback

log = logging.getLogger("retreatkit.admin")
# not `_retreatkit-admin`: RFC 6335 (5.1) caps a service name at 15 characters, and
# zeroconf refuses a longer one; this matches `_retreat-relay` and `_retreat-mirror`
SERVICE_TYPE = "_retreat-admin._tcp.local."


def instance_name(port: int) -> str:
    host = socket.gethostname().split(".")[0][:40] or "retreatkit"
    return f"retreatkit on {host} port {port}.{SERVICE_TYPE}"


class Advertisement:
    """A registered record; `close()` says goodbye on the LAN."""

    def __init__(self, zc: AsyncZeroconf, info: AsyncServiceInfo) -> None:
        self.zc = zc
        self.info = info

    async def close(self) -> None:
        try:
            await self.zc.async_unregister_service(self.info)
        finally:
            await self.zc.async_close()


async def advertise(
    bound_host: str, addresses: list[str], port: int, services: list[str]
) -> Advertisement | None:
    """Register the endpoint on the LAN, unless it is on loopback. `addresses` are where
    the LAN reaches it when it is bound to every address (0.0.0.0 or ::)."""
    if is_loopback(bound_host):
        return None
    wildcard = bound_host in ("0.0.0.0", "::", "")
    reach = [a for a in (addresses if wildcard else [bound_host]) if not is_loopback(a)]
    if not reach:
        return None
    packed = [ipaddress.ip_address(a).packed for a in reach]
    info = AsyncServiceInfo(
        SERVICE_TYPE,
        instance_name(port),
        addresses=packed,
        port=port,
        properties={"services": ",".join(services), "path": "/status"},
        server=f"{socket.gethostname().split('.')[0] or 'retreatkit'}.local.",
    )
    zc = AsyncZeroconf(interfaces=reach, ip_version=IPVersion.All)
    try:
        await zc.async_register_service(info)
    except Exception as exc:  # the LAN may have no multicast; the endpoint still works
        await zc.async_close()
        log.warning("cannot advertise the admin endpoint on the LAN: %s", exc)
        return None
    log.info("admin endpoint advertised on the LAN as %s", info.name)
    return Advertisement(zc, info)
