"""A relay announced on the LAN at several addresses (its host's uplink's too, in an order
that varies): which bob tries, at most how many, and that one that never answers holds
nobody up. Real sockets on loopback, where an address that never answers is a listener
whose queue is full (the kernel drops the next SYN, as a host that is not there would)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import threading
from collections.abc import Iterator

import pytest

from retreatkit import mdns
from retreatkit.lanaddress import nearest
from retreatkit.relay import wire
from retreatkit.testing import RelayProcess
from retreatkit.transfer import find
from retreatkit.transfer.anyrelay import Said
from retreatkit.transfer.channel import socket_of, watch_liveness
from retreatkit.transfer.link import MAX_ADDRESSES, Relay, Unreachable, _addresses, connect
from retreatkit.transfer.rendezvous import RelayRendezvous

LAN = [ipaddress.ip_network("10.77.0.0/24"), ipaddress.ip_network("127.0.0.0/8")]
REQUEST = wire.Request(wire.Role.RECV, "12")


def announced(*addresses: str, port: int = 9000, kind: str = "relay") -> mdns.Found:
    return mdns.Found(f"x.{mdns.RELAY}", addresses, port, {"kind": kind})


def test_addresses_on_our_own_networks_come_first() -> None:
    """The organiser's laptop announces its uplink's address beside its LAN one: the one
    on this machine's network is tried first, whatever order the LAN heard them in."""
    assert nearest(["192.0.2.2", "10.77.0.1"], LAN, MAX_ADDRESSES) == ["10.77.0.1", "192.0.2.2"]
    assert nearest(["10.77.0.1", "192.0.2.2"], LAN, MAX_ADDRESSES) == ["10.77.0.1", "192.0.2.2"]
    # each group in the order of the addresses: two sides that heard them apart agree
    heard = ["172.17.0.1", "10.77.0.9", "192.0.2.2", "10.77.0.10", "10.77.0.9"]
    want = ["10.77.0.9", "10.77.0.10", "172.17.0.1", "192.0.2.2"]
    assert nearest(heard, LAN, MAX_ADDRESSES) == want
    assert nearest(heard[::-1], LAN, MAX_ADDRESSES) == want
    assert nearest(heard, [], MAX_ADDRESSES) == want


def test_an_announcement_of_many_addresses_makes_bob_dial_a_few() -> None:
    """Anyone on the LAN can announce anything: however many addresses an announcement
    lists, bob tries at most MAX_ADDRESSES of it, of at most MAX_RELAYS relays."""
    many = [f"10.77.0.{n}" for n in range(1, 200)] + [f"192.0.2.{n}" for n in range(1, 50)]
    assert nearest(many, LAN, MAX_ADDRESSES) == ["10.77.0.1", "10.77.0.2", "10.77.0.3", "10.77.0.4"]
    heard = [announced(*many[n:], port=9000 + n) for n in range(40)]
    chosen = find.relays(heard, LAN)
    assert len(chosen) == find.MAX_RELAYS
    assert all(len((r.host, *r.also)) == MAX_ADDRESSES for r in chosen)


def test_a_relay_is_one_relay_at_each_of_its_addresses() -> None:
    """Each announcement is one relay, named by its nearest address, the others on this
    machine's networks tried beside it; heard twice, in two orders, it is still one; a
    sender is no relay."""
    one = announced("192.0.2.2", "10.77.0.8", "10.77.0.1")
    again = announced("10.77.0.1", "10.77.0.8", "192.0.2.2")
    other = announced("10.77.0.7", port=9001)
    sender = announced("10.77.0.2", kind="sender")
    assert find.relays([one, again, other, sender], LAN) == [
        Relay("10.77.0.1", 9000, ("10.77.0.8",)),
        Relay("10.77.0.7", 9001),
    ]
    assert find.announced(again, LAN) == find.announced(one, LAN)


def test_an_announcement_never_leads_off_the_lan() -> None:
    """Anyone on the LAN can announce anything: an address on none of this machine's
    networks (the internet, an uplink's, IPv4 link-local where this machine holds none) is
    never dialled, relay or sender, even where it is all an announcement names."""
    far = ("192.0.2.2", "93.184.216.34", "169.254.9.9", "10.78.0.5")
    assert find.usable([*far, "10.77.0.9"], LAN) == ["10.77.0.9"]
    assert find.announced(announced(*far), LAN) is None
    assert find.relays([announced(*far), announced("10.77.0.3", *far, port=9001)], LAN) == [
        Relay("10.77.0.3", 9001)
    ]
    plate = {"kind": "sender", "nameplate": "42"}
    heard = [mdns.Found(f"x.{mdns.RELAY}", (address,), 7000, plate) for address in far]
    assert find.senders(heard, "42", LAN) == []
    # a machine whose LAN hands out no addresses (link-local alone) finds its neighbours
    linklocal = [ipaddress.ip_network("169.254.0.0/16")]
    assert find.senders(heard, "42", linklocal) == [Relay("169.254.9.9", 7000)]


def test_an_announcement_never_leads_to_this_machine_or_nowhere() -> None:
    """Anyone can announce anything: loopback (this machine's own services), 0.0.0.0 (the
    same, to Linux), multicast, broadcast and reserved addresses are never dialled, as a
    peer's direct hints are not; an announcement of nothing else is no relay, nor a
    sender."""
    heard = [
        announced("127.0.0.1"),
        announced("0.0.0.0", port=9001),
        announced("224.0.0.251", "255.255.255.255", "10.77.0.255", "240.0.0.1", port=9002),
        announced("127.0.0.2", "10.77.0.5", "nonsense", port=9003),
    ]
    assert find.relays(heard, LAN) == [Relay("10.77.0.5", 9003)]
    assert find.announced(announced("127.0.0.2", kind="sender"), LAN) is None
    assert find.announced(announced("0.0.0.0", kind="sender"), []) is None


def test_on_a_machine_with_no_network_but_loopback_its_own_announcement_is_used() -> None:
    """Nobody else can announce there: two bob processes on one computer with no network
    meet at loopback, where the sender announced itself."""
    alone = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
    sender = announced("127.0.0.1", port=40000, kind="sender")
    assert find.announced(sender, alone) == Relay("127.0.0.1", 40000)
    assert find.relays([announced("0.0.0.0"), announced("224.0.0.1")], alone) == []


def test_a_receiver_tries_the_senders_announced_for_its_nameplate_once_each() -> None:
    """Up to MAX_PEERS, in the order heard, once for each address and port: false
    announcements heard first (three of them kept the real sender out), or one at the real
    sender's own address (it stood in for the sender), leave the real one in."""

    def sender(address: str, port: int, nameplate: str = "42") -> mdns.Found:
        return mdns.Found(
            f"x.{mdns.RELAY}", (address,), port, {"kind": "sender", "nameplate": nameplate}
        )

    real = sender("10.77.0.2", 40000)
    heard = [
        sender("10.77.0.3", 7000),
        sender("10.77.0.9", 7000),
        sender("10.77.0.2", 1),  # the real sender's address, a port nobody listens on
        sender("10.77.0.3", 7000),  # the same again: once
        sender("10.77.0.4", 7000, nameplate="43"),  # another nameplate's
        announced("10.77.0.5"),  # a relay
        sender("127.0.0.1", 7000),  # never this machine's own
        real,
        *(sender(f"10.77.0.{n}", 7000) for n in range(10, 40)),
    ]
    chosen = find.senders(heard, "42", LAN)
    assert chosen[:4] == [
        Relay("10.77.0.3", 7000),
        Relay("10.77.0.9", 7000),
        Relay("10.77.0.2", 1),
        Relay("10.77.0.2", 40000),
    ]
    assert len(chosen) == find.MAX_PEERS == 8
    assert find.senders(heard, "43", LAN) == [Relay("10.77.0.4", 7000)]


def test_each_address_of_an_announced_sender_is_a_place_of_its_own() -> None:
    """A neighbour says the real sender's host name is at an address of its own as well:
    dialled as one place, the first address to take the connection (the neighbour's, first
    in the order of the addresses) stood for the sender, and the real one was never asked.
    Each address is a place of its own, tried one after another (meet.meet), up to
    MAX_ADDRESSES of one announcement and MAX_PEERS in all."""
    plate = {"kind": "sender", "nameplate": "42"}
    real = mdns.Found(f"x.{mdns.RELAY}", ("10.77.0.5", "10.77.0.1", "192.0.2.2"), 40000, plate)
    assert find.senders([real], "42", LAN) == [
        Relay("10.77.0.1", 40000),
        Relay("10.77.0.5", 40000),
    ]
    many = tuple(f"10.77.0.{n}" for n in range(1, 30))
    crowded = [mdns.Found(f"x.{mdns.RELAY}", many[n:], 7000 + n, plate) for n in range(5)]
    chosen = find.senders(crowded, "42", LAN)
    assert chosen == [Relay(f"10.77.0.{n}", 7000) for n in (1, 2, 3, 4)] + [
        Relay(f"10.77.0.{n}", 7001) for n in (2, 3, 4, 5)
    ]
    assert len(chosen) == find.MAX_PEERS


@pytest.fixture
def port() -> Iterator[int]:
    """A port free on both 127.0.0.2 and 127.0.0.3."""
    with socket.create_server(("127.0.0.3", 0)) as probe:
        free: int = probe.getsockname()[1]
    yield free


@contextlib.contextmanager
def never_answers(host: str, port: int) -> Iterator[None]:
    """host:port takes no connection and refuses none: a listener whose one place in its
    queue is taken, so the kernel drops every SYN that comes next."""
    with socket.socket() as stuck, socket.socket() as first:
        stuck.bind((host, port))
        stuck.listen(0)
        first.connect((host, port))  # queued, never accepted
        yield


async def test_an_address_that_never_answers_holds_nobody_up(port: int) -> None:
    """The nearest address leads nowhere: the next is tried beside it a moment later, and
    the connection says where it reached the relay. (One after the other, the first
    would hold bob up for the whole wait given here.)"""
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.put_nowait(await reader.readline())
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.3", port)
    try:
        with never_answers("127.0.0.2", port):
            relay = Relay("127.0.0.2", port, ("127.0.0.3",))
            link = await connect(relay, REQUEST, 60.0, connect_timeout=60.0)
            try:
                assert link.relay == Relay("127.0.0.3", port)
                assert await got.get() == b"bob/1 recv 12\n"
            finally:
                await link.close()
    finally:
        server.close()


async def test_a_relay_reached_at_none_of_its_addresses_names_them_all(port: int) -> None:
    relay = Relay("127.0.0.2", port, ("127.0.0.3",))
    with pytest.raises(Unreachable) as caught:
        await connect(relay, REQUEST, 60.0, connect_timeout=60.0)
    # (the reason is the nearest address's, in the words of the event loop running)
    said = str(caught.value).replace(caught.value.why, "WHY")
    assert said == f"cannot reach the relay at 127.0.0.2:{port} nor at 127.0.0.3: WHY"
    assert caught.value.why in ("Connection refused", f"Connect call failed ('127.0.0.2', {port})")


async def test_a_sender_holds_its_nameplate_where_the_relay_answered(
    relay: RelayProcess,
) -> None:
    """A sender for two receivers keeps two connections waiting on its nameplate: both at
    the address that answered, and that is the address the sender names."""
    said: list[list[Relay]] = []
    real = Relay(relay.host, relay.port)
    with never_answers("127.0.0.2", relay.port):
        sender = Said(
            RelayRendezvous(Relay("127.0.0.2", relay.port, (relay.host,)), 2, 30.0, 60.0),
            said.append,
        )
        try:
            await sender.open(None)
            assert said == [[real]]
            assert sender.relays.relay == real
            assert len(sender.relays._waiting) == 2
            assert {link.relay for link in sender.relays._waiting.values()} == {real}
        finally:
            await sender.close()


async def test_a_relay_by_name_leaves_no_thread_behind_each_try() -> None:
    """A sender retries a full relay every two seconds: each lookup of its name ran in a
    thread that never ended, one more each try."""
    before = set(threading.enumerate())
    for _ in range(5):
        assert "127.0.0.1" in await _addresses("localhost", 9000)
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=10)  # a lookup's thread ends with it
    assert set(threading.enumerate()) - before == set()


def test_a_socket_whose_descriptor_is_gone_raises_nothing() -> None:
    """A connect that loses the race for a direct connection is closed as it completes:
    uvloop's stand-in for its socket then has no descriptor, and each call on it raised
    `ValueError: negative file descriptor`, a traceback in the middle of bob's output."""
    from uvloop.loop import PseudoSocket

    gone = PseudoSocket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, -1)
    watch_liveness(gone)  # keepalive on a socket that is gone: nothing to do, nothing said

    class Closing(asyncio.BaseTransport):
        def is_closing(self) -> bool:
            return False

        def get_extra_info(self, name: str, default: object = None) -> object:
            return gone if name == "socket" else default

    assert socket_of(Closing()) is None
