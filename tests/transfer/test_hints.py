"""Direct-connection hints and their proof, in process: what a hostile peer may make us
try, what a hostile relay may not, and what a LAN neighbour cannot fake."""

from __future__ import annotations

import ipaddress

import pytest

from retreatkit.transfer import hints
from retreatkit.transfer.errors import LocalProtocolError, RemoteProtocolError
from retreatkit.transfer.hints import Hint
from retreatkit.transfer.machine import Hinted, Session
from retreatkit.transfer.pake import Side, derive
from retreatkit.transfer.testing import CODE

LAN = [ipaddress.ip_network("10.78.0.0/24"), ipaddress.ip_network("127.0.0.0/8")]


def hint(text: str, port: int = 4000) -> Hint:
    return Hint(ipaddress.ip_address(text), port)


def test_hints_travel_only_inside_the_encrypted_channel() -> None:
    """croc's CVE-2023-43618: local addresses went to the relay in clear."""
    sender, receiver = Session(Side.SENDER, CODE), Session(Side.RECEIVER, CODE)
    receiver.receive_data(sender.start())
    sender.receive_data(receiver.start())
    receiver.next_event(), sender.next_event()
    receiver.receive_data(sender.data_to_send())
    sender.receive_data(receiver.data_to_send())
    receiver.next_event(), sender.next_event()
    offered = [hint("10.78.0.1"), hint("fd00::1", 5000)]
    wire = sender.send_hints(offered)
    for address in offered:
        assert address.address.packed not in wire  # what the relay forwards
    receiver.receive_data(wire)
    assert receiver.next_event() == Hinted(tuple(offered))
    with pytest.raises(LocalProtocolError, match="HINTS go once"):
        sender.send_hints([])


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (bytes([5]) + bytes(7) * 5, "more than 4"),
        (b"", "more than 4"),
        (bytes([1, 9]) + bytes(6), "malformed"),
        (bytes([1, 4, 10, 0, 0, 1]), "malformed"),
        (bytes([1, 4, 10, 0, 0, 1, 0, 0]), "port 0"),
        (bytes([1, 4, 10, 0, 0, 1, 0, 80, 0]), "trailing"),
    ],
)
def test_a_hostile_peer_s_malformed_hints_are_its_fault(body: bytes, why: str) -> None:
    with pytest.raises(RemoteProtocolError, match=why):
        hints.decode(body)


def test_a_hostile_peer_cannot_make_us_connect_beyond_the_lan() -> None:
    theirs = [
        hint("8.8.8.8"),  # the internet
        hint("192.168.7.7"),  # a private network we are not on
        hint("10.78.0.255"),  # our LAN's broadcast
        hint("224.0.0.251"),  # multicast
        hint("0.0.0.0"),
        hint("127.0.0.1"),  # our own loopback: the relay is not on this computer
        hint("fe80::1"),  # link-local, scope unknowable
        hint("10.78.0.9"),  # on our LAN: tried
    ]
    assert hints.viable(theirs, LAN, None, ipaddress.ip_address("10.78.0.3")) == [hint("10.78.0.9")]


def test_at_most_four_hints_are_tried() -> None:
    theirs = [hint(f"10.78.0.{i}") for i in range(1, 9)]
    assert len(hints.viable(theirs, LAN, None, None)) == 4


def test_the_peer_s_own_address_as_the_relay_saw_it_is_tried() -> None:
    # a routed LAN: the peer is not on our network, but the relay saw it come from there
    seen = ipaddress.ip_address("172.20.1.5")
    assert hints.viable([hint("172.20.1.5"), hint("172.20.1.6")], LAN, seen, None) == [
        hint("172.20.1.5")
    ]


def test_a_hostile_relay_cannot_open_our_loopback() -> None:
    """A relay that claims the peer is on loopback gets loopback hints tried only if the
    relay itself is on this computer (both sides here), never a relay across the LAN."""
    loop = ipaddress.ip_address("127.0.0.1")
    far_relay = ipaddress.ip_address("10.78.0.3")
    assert hints.viable([hint("127.0.0.1")], LAN, loop, far_relay) == []
    assert hints.viable([hint("127.0.0.1")], LAN, loop, loop) == [hint("127.0.0.1")]


@pytest.mark.parametrize(
    ("line", "seen"),
    [
        ("10.1.0.2:40000", "10.1.0.2"),
        ("::ffff:10.1.0.2:40000", "10.1.0.2"),  # a dual-stack relay saw an IPv4 peer
        ("[2001:db8::5]:40000", "2001:db8::5"),
        ("2001:db8::5:40000", "2001:db8::5"),  # the relay's own spelling: no brackets
        ("relay.retreat.lan:40000", None),  # never a name to resolve
        ("10.1.0.2", None),
        ("10.1.0.2:port", None),
        ("", None),
    ],
)
def test_the_address_in_a_paired_line(line: str, seen: str | None) -> None:
    got = hints.paired_address(line)
    assert got == (ipaddress.ip_address(seen) if seen else None)


def test_an_ipv4_mapped_hint_is_never_tried() -> None:
    """::ffff:127.0.0.1 dials 127.0.0.1 on a dual-stack socket: it would reach loopback
    (or any IPv4 address) past the checks that an IPv4 hint gets."""
    seen = ipaddress.ip_address("10.78.0.9")
    theirs = [hint("::ffff:127.0.0.1"), hint("::ffff:10.78.0.9"), hint("::ffff:8.8.8.8")]
    assert hints.viable(theirs, LAN, seen, ipaddress.ip_address("127.0.0.1")) == []


def test_a_forged_paired_address_adds_one_address_and_never_loopback() -> None:
    """A relay that lies in `paired` makes that one address viable, and only if the peer,
    who holds the passphrase, hints it too; loopback stays shut to a relay elsewhere
    whatever it names, and to a relay here unless it names loopback."""
    forged = hints.paired_address("8.8.4.4:1")
    theirs = [hint("8.8.4.4"), hint("8.8.8.8"), hint("127.0.0.1")]
    here, far = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.78.0.1")
    assert hints.viable(theirs, LAN, forged, far) == [hint("8.8.4.4")]
    assert hints.viable(theirs, LAN, forged, here) == [hint("8.8.4.4")]
    looped = hints.paired_address("127.0.0.1:1")
    assert hints.viable(theirs, LAN, looped, far) == []


def test_the_proof_needs_the_session_key_and_cannot_be_reflected() -> None:
    keys_s, keys_r = derive(b"k" * 32, Side.SENDER), derive(b"k" * 32, Side.RECEIVER)
    s_nonce, r_nonce = b"s" * 16, b"r" * 16
    # each side checks the other's hello carries the other role
    assert hints.their_nonce(hints.hello(Side.RECEIVER, r_nonce), Side.SENDER) == r_nonce
    with pytest.raises(RemoteProtocolError, match="did not say bob/1 direct"):
        hints.their_nonce(hints.hello(Side.SENDER, s_nonce), Side.SENDER)  # our own, reflected
    mac = hints.mac(keys_r.my_direct, s_nonce, r_nonce)
    hints.check_mac(keys_s.their_direct, s_nonce, r_nonce, mac)
    with pytest.raises(RemoteProtocolError, match="did not prove"):
        hints.check_mac(
            keys_s.their_direct, s_nonce, r_nonce, hints.mac(keys_s.my_direct, s_nonce, r_nonce)
        )
    other = derive(b"x" * 32, Side.RECEIVER)  # a neighbour with another key
    with pytest.raises(RemoteProtocolError, match="did not prove"):
        hints.check_mac(
            keys_s.their_direct, s_nonce, r_nonce, hints.mac(other.my_direct, s_nonce, r_nonce)
        )
    with pytest.raises(RemoteProtocolError, match="did not prove"):  # replayed for fresh nonces
        hints.check_mac(keys_s.their_direct, b"t" * 16, r_nonce, mac)
