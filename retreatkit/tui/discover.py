"""Admin endpoints advertised on the LAN as `_retreat-admin._tcp.local.` (no Textual)."""

from __future__ import annotations

import asyncio
import ipaddress

from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from retreatkit.admin.advertise import SERVICE_TYPE

LISTEN = 1.5  # seconds to listen for answers


async def discover(listen: float = LISTEN) -> list[str]:
    """URLs of the admin endpoints that answer on the LAN within `listen` seconds."""
    names: list[str] = []

    def seen(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Added and name not in names:
            names.append(name)

    try:
        zc = AsyncZeroconf()
    except OSError:  # no multicast here: nothing to find
        return []
    browser = AsyncServiceBrowser(zc.zeroconf, SERVICE_TYPE, handlers=[seen])
    try:
        await asyncio.sleep(listen)  # answers arrive over this window; there is no "done"
        urls = []
        for name in names:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if await info.async_request(zc.zeroconf, 1000) and info.port:
                for packed in info.addresses:
                    address = ipaddress.ip_address(packed)
                    host = f"[{address}]" if address.version == 6 else str(address)
                    urls.append(f"http://{host}:{info.port}")
                    break
        return urls
    finally:
        await browser.async_cancel()
        await zc.async_close()
