"""UDP on a wildcard address in process: each reply leaves from the address its query
reached (two loopback addresses), a full send buffer queues replies in order, and the
reply data made from what the kernel says."""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any

import pytest

from retreatkit.nameserver import wildcard

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="IP_PKTINFO as Linux has it")


class Echo(asyncio.DatagramProtocol):
    """Answers each datagram with itself, and keeps what the transport reports."""

    def __init__(self) -> None:
        self.transport: wildcard.Transport | None = None
        self.errors: list[Exception] = []
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, wildcard.Transport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.transport.sendto(b"re:" + data, addr)

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


class FullBuffer(socket.socket):
    """A socket whose send buffer is full until told otherwise."""

    full = False

    def sendmsg(self, *args: Any) -> int:
        if self.full:
            raise BlockingIOError
        return super().sendmsg(*args)


async def ask(client: socket.socket, to: tuple[str, int], data: bytes) -> tuple[bytes, Any]:
    loop = asyncio.get_running_loop()
    client.sendto(data, to)
    return await asyncio.wait_for(loop.sock_recvfrom(client, 100), 5)


def client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    return sock


async def test_each_reply_leaves_from_the_address_its_query_reached() -> None:
    # the client is 127.0.0.1, so the kernel's own pick for every reply is 127.0.0.1:
    # a query to 127.0.0.2 was answered from there, and dig dropped the answer
    transport, protocol = await wildcard.endpoint(Echo, "0.0.0.0", 0)
    port = transport.get_extra_info("sockname")[1]
    with client() as sock:
        for server in ("127.0.0.2", "127.0.0.1", "127.0.0.3"):
            assert await ask(sock, (server, port), b"q") == (b"re:q", (server, port))
    transport.close()
    assert await protocol.lost is None  # type: ignore[attr-defined]


async def test_a_specific_address_keeps_asyncios_transport() -> None:
    transport, _ = await wildcard.endpoint(Echo, "127.0.0.1", 0)
    assert not isinstance(transport, wildcard.Transport)
    transport.close()


async def test_a_full_send_buffer_queues_replies_in_order() -> None:
    loop = asyncio.get_running_loop()
    sock = FullBuffer(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, wildcard.IP_PKTINFO, 1)
    sock.setblocking(False)
    sock.bind(("0.0.0.0", 0))
    protocol = Echo()
    transport = wildcard.Transport(loop, sock, protocol)
    server = ("127.0.0.2", sock.getsockname()[1])
    with client() as asker:
        sock.full = True
        for n in range(10):
            asker.sendto(b"%d" % n, server)
        while transport.get_write_buffer_size() < len(b"re:0") * 10:
            await asyncio.sleep(0)  # the loop reads them all, and queues every reply
        sock.full = False
        got = [await asyncio.wait_for(loop.sock_recvfrom(asker, 100), 5) for _ in range(10)]
    assert got == [(b"re:%d" % n, server) for n in range(10)]  # in order, from the address
    transport.close()
    assert protocol.errors == []


async def test_the_queue_is_bounded() -> None:
    loop = asyncio.get_running_loop()
    sock = FullBuffer(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    transport = wildcard.Transport(loop, sock, Echo())
    sock.full = True
    reply_to = ("127.0.0.1", 9, [], ("127.0.0.1", 9))
    for _ in range(wildcard.MAX_QUEUED + 3):
        transport.sendto(b"x", reply_to)
    assert (transport.get_write_buffer_size(), transport.dropped) == (wildcard.MAX_QUEUED, 3)
    transport.close()
    assert transport.get_write_buffer_size() == 0


def test_reply_data_keeps_our_address_and_lets_routes_pick_the_way_for_ipv4() -> None:
    index, ours, to = b"\x07\0\0\0", bytes([10, 53, 0, 3]), bytes([10, 53, 0, 255])
    ip, v6 = socket.IPPROTO_IP, socket.IPPROTO_IPV6
    assert wildcard.reply_data(ip, wildcard.IP_PKTINFO, index + ours + to) == [
        (ip, wildcard.IP_PKTINFO, b"\0\0\0\0" + ours + to)
    ]
    global6 = socket.inet_pton(socket.AF_INET6, "fd00:53::3")
    assert wildcard.reply_data(v6, socket.IPV6_PKTINFO, global6 + index) == [
        (v6, socket.IPV6_PKTINFO, global6 + index)  # a link-local source needs its index
    ]
    mapped = socket.inet_pton(socket.AF_INET6, "::ffff:10.53.0.3")
    assert wildcard.reply_data(v6, socket.IPV6_PKTINFO, mapped + index) == [
        (v6, socket.IPV6_PKTINFO, mapped + b"\0\0\0\0")
    ]
    assert wildcard.reply_data(ip, 99, b"") == []
