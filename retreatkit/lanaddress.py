"""The address attendees reach this machine at, for the names it gives its own services.

Not the host name's address: Debian and Ubuntu map it to 127.0.1.1 in /etc/hosts, and
a name pointing at loopback sends every attendee to their own computer. The address of
the interface the default route uses is the one that faces the LAN; with no default
route (no uplink at all), the first other interface that is up. Linux only: the routes
come from /proc/net/route and the addresses from the SIOCGIFADDR ioctl, so no packet
is sent anywhere.

Also the networks this machine is on (`networks`), and which of the addresses a LAN
announcement lists to try first from here (`nearest`): bob's relays, the dashboard's
admin endpoints.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SIOCGIFADDR = 0x8915
SIOCGIFFLAGS = 0x8913
IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x1, 0x8, 0x40
MAX_OTHERS = 4  # other networks named at start
LOOPBACK_NAMES = ("localhost", "localhost.")
CONFIGURED = "as configured"  # LanAddress.how of --address, [nameserver] address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def is_loopback(host: str) -> bool:
    """A literal loopback address or `localhost`; any other name counts as beyond loopback."""
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_own_address(address: str) -> bool:
    """A literal address of one of this machine's interfaces: the only ones a socket can
    bind (the kernel refuses any other with EADDRNOTAVAIL). Nothing is sent."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def bind_error(proto: str, family: int, sockaddr: tuple[Any, ...]) -> OSError | None:
    """Why a server cannot listen on `sockaddr` (`proto` tcp or udp) now, or None: bound
    and let go at once, as those servers bind (asyncio's, passt's, qemu's forwards): TCP
    with SO_REUSEADDR, so a port a closed connection holds in TIME_WAIT counts as free."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as sock:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            return exc
    return None


@dataclass(frozen=True)
class LanAddress:
    address: str
    how: str  # said at start: where the address came from

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.address).is_loopback


def choose(configured: str = "", routes: Path = Path("/proc/net/route")) -> LanAddress:
    """`configured` if given (--address, [nameserver] address), else the default route's
    interface address, else another interface's, else loopback (the caller warns)."""
    if configured:
        try:
            return LanAddress(str(ipaddress.ip_address(configured)), CONFIGURED)
        except ValueError:
            raise ValueError(
                f"[nameserver] address (or --address): expected an IP address, got {configured!r}"
            ) from None
    interface = default_interface(routes)
    if interface is not None:
        found = interface_address(interface)
        if found is not None:
            return LanAddress(found, f"the default route's interface, {interface}")
    for _index, name in socket.if_nameindex():
        if name == interface:
            continue
        flags = _flags(name)
        if flags & IFF_UP and not flags & IFF_LOOPBACK:
            found = interface_address(name)
            if found is not None:
                return LanAddress(found, f"interface {name} (no default route)")
    return LanAddress("127.0.0.1", "no LAN interface found")


def other_networks(chosen: LanAddress) -> list[tuple[str, str]]:
    """(interface, address) of the other interfaces up, with a link, and an IPv4 address:
    an organiser whose laptop has its uplink on the default route (the venue's Wi-Fi) and
    the attendees' switch on another port was told the uplink's address without a word
    that another was there. At most MAX_OTHERS."""
    others: list[tuple[str, str]] = []
    for _index, name in socket.if_nameindex():
        flags = _flags(name)
        if not flags & IFF_UP or not flags & IFF_RUNNING or flags & IFF_LOOPBACK:
            continue
        found = interface_address(name)
        if found is not None and found != chosen.address:
            others.append((name, found))
        if len(others) == MAX_OTHERS:
            break
    return others


def networks() -> list[Network]:
    """The networks this machine's interfaces are on, loopback's too."""
    import ifaddr  # only where it is used: its import runs `ldconfig -p`

    out: list[Network] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            address = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            with contextlib.suppress(ValueError):
                out.append(ipaddress.ip_network(f"{address}/{ip.network_prefix}", strict=False))
    return out


def nearest(addresses: Sequence[str], ours: Sequence[Network], limit: int) -> list[str]:
    """At most `limit` of the `addresses` a LAN announcement lists (it may list any
    number: a host announces every address it holds, its uplink's and Docker's too),
    those on one of `ours` (`networks()`) first: one elsewhere may be out of this
    machine's reach, or lead elsewhere first. Each group in the order of the addresses,
    not the order heard, which varies from one announcement to the next, so two machines
    list them alike."""

    def elsewhere(host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return True
        return not any(address in network for network in ours)

    ordered = sorted(set(addresses), key=lambda host: (elsewhere(host), address_order(host), host))
    return ordered[:limit]


def address_order(host: str) -> tuple[int, int]:
    """A key that sorts IP addresses in their order, IPv4 first, names after them."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return (9, 0)
    return (address.version, int(address))


def default_interface(routes: Path = Path("/proc/net/route")) -> str | None:
    """The interface of the IPv4 default route with the lowest metric."""
    try:
        lines = routes.read_text().splitlines()[1:]
    except OSError:
        return None
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or fields[1] != "00000000" or fields[7] != "00000000":
            continue
        if not int(fields[3], 16) & 0x1:  # RTF_UP
            continue
        metric = int(fields[6])
        if best is None or metric < best[0]:
            best = (metric, fields[0])
    return best[1] if best else None


def interface_address(name: str) -> str | None:
    """An interface's (primary) IPv4 address, or None."""
    request = struct.pack("256s", name[:15].encode())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
        raw = fcntl.ioctl(s.fileno(), SIOCGIFADDR, request)
        return socket.inet_ntoa(raw[20:24])
    return None


def _flags(name: str) -> int:
    request = struct.pack("256s", name[:15].encode())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
        raw = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, request)
        return int(struct.unpack_from("H", raw, 16)[0])
    return 0
