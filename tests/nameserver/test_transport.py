"""The upstream socket pool on real sockets: a late reply is not a forged one."""

from __future__ import annotations

import asyncio
import socket

import dns.message
import dns.rcode
import pytest

from retreatkit.nameserver import wire
from retreatkit.nameserver.fakes import Zone, make_query
from retreatkit.nameserver.transport import Pool
from retreatkit.nameserver.upstream import Upstream

ZONE = Zone("$TTL 60\n@ SOA ns.test. h.test. 1 3600 600 86400 60\nwww A 198.51.100.7\n")


def asked(name: str, qid: int) -> tuple[bytes, bytes]:
    query = wire.parse(make_query(name).to_wire())
    assert query is not None
    return wire.upstream_query(qid, query.key), query.key[:-1]


async def test_a_reply_after_we_stopped_waiting_is_late_not_spoofed() -> None:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
        up.bind(("127.0.0.1", 0))
        up.setblocking(False)
        upstream = Upstream("127.0.0.1", up.getsockname()[1])
        pool = Pool()
        try:
            await _late_then_forged(loop, up, upstream, pool)
        finally:
            pool.close()
        assert (pool.spoofs, pool.late) == (1, 1)


async def _late_then_forged(
    loop: asyncio.AbstractEventLoop, up: socket.socket, upstream: Upstream, pool: Pool
) -> None:
    """Asked once and given up on; its late reply, a forged one, then a real query."""
    data, question = asked("www.test", 4711)
    with pytest.raises(TimeoutError):
        await pool.query(upstream, data, question, False, 0.01)
    first, where = await loop.sock_recvfrom(up, 4096)
    late = ZONE.answer(dns.message.from_wire(first))
    up.sendto(late.to_wire(), where)  # the slow uplink's answer, after we gave up
    forged = ZONE.answer(dns.message.from_wire(first))
    forged.id = 4712
    up.sendto(forged.to_wire(), where)  # an ID we never sent: forged
    data, question = asked("www.test", 815)
    second = asyncio.ensure_future(pool.query(upstream, data, question, False, 5.0))
    query, again = await loop.sock_recvfrom(up, 4096)
    assert again == where  # the same socket: the datagrams before were read first
    up.sendto(ZONE.answer(dns.message.from_wire(query)).to_wire(), where)
    assert dns.message.from_wire(await second).id == 815


async def test_a_reply_to_an_earlier_query_on_another_port_is_late_not_spoofed() -> None:
    """dnsmasq whose route out is gone answers a question it still holds from before
    REFUSED, with the ID of our earlier query for that name, sent from the port our
    earlier query left from no more: late, and counted so (before: spoofed). It is
    never taken as the answer: the query it came to still waits for its own ID."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
        up.bind(("127.0.0.1", 0))
        up.setblocking(False)
        upstream = Upstream("127.0.0.1", up.getsockname()[1])
        pool = Pool(uses=1)  # a fresh port for every query
        try:
            data, question = asked("www.test", 4711)
            with pytest.raises(TimeoutError):
                await pool.query(upstream, data, question, False, 0.01)
            first, earlier = await loop.sock_recvfrom(up, 4096)
            data, question = asked("www.test", 815)
            second = asyncio.ensure_future(pool.query(upstream, data, question, False, 5.0))
            query, where = await loop.sock_recvfrom(up, 4096)
            assert where != earlier
            refused = dns.message.make_response(dns.message.from_wire(first))
            refused.set_rcode(dns.rcode.REFUSED)
            up.sendto(refused.to_wire(), where)  # ID 4711, to the port that asked 815
            other = dns.message.make_response(dns.message.from_wire(asked("ftp.test", 4711)[0]))
            up.sendto(other.to_wire(), where)  # 4711's ID with another question: forged
            forged = ZONE.answer(dns.message.from_wire(query))
            forged.id = 4712
            up.sendto(forged.to_wire(), where)  # an ID we never sent: forged
            up.sendto(ZONE.answer(dns.message.from_wire(query)).to_wire(), where)
            reply = dns.message.from_wire(await second)
            assert (reply.id, reply.rcode()) == (815, dns.rcode.NOERROR)
        finally:
            pool.close()
        assert pool.spoofs == 2  # before: 3, the REFUSED among them
        assert pool.late == 1
