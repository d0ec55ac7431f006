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
    address = plain(ip)
    return ip if address is None else str(address)  # not an address ("?"): as it is


def plain(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as a socket gives it, as what it is: without an IPv6 zone (fe80::1%eth0),
    an IPv4 address mapped into IPv6 as IPv4; None for what is not an address."""
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
