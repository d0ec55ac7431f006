"""What a peer's address counts as for a per-address limit (pure: no sockets)."""

from __future__ import annotations

import ipaddress


def limited_as(ip: str) -> str:
    """The address a connection counts against for every per-address limit: the address
    itself, an IPv4 one mapped into IPv6 as IPv4, without an IPv6 zone.

    Not an IPv6 address's /64: on a LAN that is every attendee at once (SLAAC gives the
    whole link one /64; a link-local address, its zone dropped, is fe80::/64 for all), so
    one attendee's typo throttled everyone's joins, and 20 senders could wait in the whole
    room. An attendee who holds many addresses (IPv6 privacy addresses, IPv4 aliases)
    gets each address's share; the relay's limits in all bound what that takes."""
    try:
        address = ipaddress.ip_address(ip.partition("%")[0])  # fe80::1%eth0: its zone
    except ValueError:
        return ip  # not an address (a Unix socket, "?"): counted as it is
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)
