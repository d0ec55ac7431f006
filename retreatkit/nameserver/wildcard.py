"""UDP on a wildcard address (0.0.0.0, ::): each reply leaves from the address its query came to.

A socket bound to a wildcard address lets the kernel pick each reply's source address
by its routes. On a host with several addresses that need not be the address the
client asked, and the client drops the reply as unsolicited (dig: "reply from
unexpected source"). RFC 2181 4.1: a reply over UDP must leave from the address the
query was sent to. As dnsmasq and unbound do: ask the kernel for each datagram's
destination (IP_PKTINFO, IPV6_RECVPKTINFO), read with recvmsg, and reply with sendmsg
carrying that address as the source. asyncio's datagram transports show no ancillary
data, hence this one.

The address handed to the protocol is `(host, port, reply, source)`: `host` and `port`
are the client's, as any asyncio transport gives them; `reply` is the ancillary data
that sets our source address and `source` the client's address as the socket gave it
(with flow and scope for IPv6). The protocol passes it back to `sendto` unchanged.

A socket bound to one address keeps asyncio's transport: its replies have one source.
TCP needs none of this (a connection's replies leave from where it was accepted); only
`::` gets a listener of its own here, to take IPv4 as its UDP socket does.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import socket
import sys
from collections.abc import Callable
from typing import Any

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; Python 3.11 does not name it
MAX_QUERY = 65535
ANCILLARY = socket.CMSG_SPACE(20)  # one in6_pktinfo (20 bytes), or one in_pktinfo (12)
BATCH = 32  # datagrams read per wake-up: one loop iteration for a burst, not one each
MAX_QUEUED = 1024  # replies waiting for room in the send buffer; past that, dropped
MAX_SOURCES = 256  # our addresses remembered as reply data; a host has only so many
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"
_NO_INDEX = b"\0\0\0\0"

Ancillary = list[tuple[int, int, bytes]]


def applies(host: str) -> bool:
    """Whether `host` is a wildcard address on a system whose kernel says where each
    datagram went in the layout read here (Linux)."""
    try:
        unspecified = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False
    return unspecified and sys.platform == "linux"


def open_socket(host: str, port: int) -> socket.socket:
    """A UDP socket bound to the wildcard `host`, telling each datagram's destination.
    `::` takes IPv4 as well (v4-mapped), whatever the system's default (bindv6only)."""
    v6 = ipaddress.ip_address(host).version == 6
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if v6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def endpoint(
    factory: Callable[[], asyncio.DatagramProtocol], host: str, port: int
) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
    """asyncio's create_datagram_endpoint for one address; ours for a wildcard one."""
    loop = asyncio.get_running_loop()
    if not applies(host):
        return await loop.create_datagram_endpoint(factory, local_addr=(host, port))
    protocol = factory()
    return Transport(loop, open_socket(host, port), protocol), protocol


async def stream_server(
    factory: Callable[[], asyncio.Protocol], host: str, port: int
) -> asyncio.Server:
    """asyncio's create_server, but on `::` IPv4 too, as the UDP socket there takes it:
    asyncio makes a `::` listener IPv6 only, so an IPv4 client sent on to TCP by a
    truncated answer found nothing listening."""
    loop = asyncio.get_running_loop()
    if not (applies(host) and ipaddress.ip_address(host).version == 6):
        return await loop.create_server(factory, host, port, reuse_address=True)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setblocking(False)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return await loop.create_server(factory, sock=sock)


def reply_data(level: int, kind: int, data: bytes) -> Ancillary:
    """The ancillary data that makes a reply leave from where a query with this
    destination data (in_pktinfo or in6_pktinfo, as received) arrived."""
    if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
        # in_pktinfo: ifindex, spec_dst, addr. spec_dst is our address the query reached
        # (for a broadcast query, the interface's own); the index goes, so the routes
        # choose the way out (unbound does the same)
        return [(level, kind, _NO_INDEX + data[4:12])]
    if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 20:
        # in6_pktinfo: addr, ifindex. A link-local source needs its interface, so the
        # index stays, but for an IPv4 query on a `::` socket, as for IPv4 above
        if data[:12] == _V4_MAPPED:
            return [(level, kind, data[:16] + _NO_INDEX)]
        return [(level, kind, data[:20])]
    return []  # nothing we can use: the kernel picks, as before


class Transport(asyncio.DatagramTransport):
    """A datagram transport on a wildcard socket, read with loop.add_reader.

    Failures behave as in asyncio's own transport: a full send buffer queues replies
    until the socket is writable (here at most MAX_QUEUED, as a reply older than a
    client's retry is worth nothing), and any other error goes to error_received.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.DatagramProtocol,
    ) -> None:
        super().__init__({"socket": sock, "sockname": sock.getsockname()})
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._sources: dict[bytes, Ancillary] = {}
        self._queue: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._closing = False
        self.dropped = 0  # replies the queue had no room for
        protocol.connection_made(self)
        loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        recvmsg = self._sock.recvmsg
        received = self._protocol.datagram_received
        sources = self._sources
        for _ in range(BATCH):
            try:
                data, ancillary, _flags, addr = recvmsg(MAX_QUERY, ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)
                return
            reply: Ancillary = []
            for level, kind, where in ancillary:  # one item: only PKTINFO is asked for
                known = sources.get(where)
                if known is None:
                    known = reply_data(level, kind, where)
                    if len(sources) >= MAX_SOURCES:
                        sources.clear()
                    sources[where] = known
                reply = known
            received(data, (addr[0], addr[1], reply, addr))
            if self._closing:
                return

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._queue:  # keep the order: behind what waits already
            self._enqueue(bytes(data), addr)
            return
        try:
            self._sock.sendmsg((data,), addr[2], 0, addr[3])
        except (BlockingIOError, InterruptedError):
            self._enqueue(bytes(data), addr)
            self._loop.add_writer(self._fd, self._writable)
        except OSError as exc:
            self._protocol.error_received(exc)

    def _enqueue(self, data: bytes, addr: Any) -> None:
        if len(self._queue) >= MAX_QUEUED:
            self.dropped += 1
            return
        self._queue.append((data, addr))

    def _writable(self) -> None:
        queue = self._queue
        while queue:
            data, addr = queue[0]
            try:
                self._sock.sendmsg((data,), addr[2], 0, addr[3])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)
            queue.popleft()
        self._loop.remove_writer(self._fd)

    def get_write_buffer_size(self) -> int:
        return sum(len(data) for data, _ in self._queue)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        if self._queue:
            self._loop.remove_writer(self._fd)
            self._queue.clear()
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()
