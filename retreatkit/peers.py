"""What a peer's address counts as for a per-address limit (pure: no sockets)."""

from __future__ import annotations

import ipaddress


def limited_as(ip: str) -> str:
    """The address a connection counts against for every per-address limit: an IPv4
    address itself (one mapped into IPv6 too), an IPv6 address its /64. One attendee's
    machine picks any address of its /64 at will (SLAAC privacy addresses, or a script
    binding fd00::1, fd00::2...): counted one by one, a single laptop held every waiting
    slot, 20 at a time from 50 addresses, and guessed nameplates without a throttle."""
    try:
        address = ipaddress.ip_address(ip.partition("%")[0])  # fe80::1%eth0: its zone
    except ValueError:
        return ip  # not an address (a Unix socket, "?"): counted as it is
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
