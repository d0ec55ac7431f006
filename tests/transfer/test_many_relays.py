"""Several relays announced on the LAN, some false, and relays with no room: a real relay
process on loopback beside stand-ins that never answer or answer and then do nothing.
The sender holds its nameplate at every relay that answers, the receiver tries them all
at once, and a sender no relay takes is its own rendezvous."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from retreatkit import mdns
from retreatkit.relay import wire
from retreatkit.testing import RelayProcess, start_relay
from retreatkit.transfer import codes, find, rendezvous
from retreatkit.transfer.aio import via_relay
from retreatkit.transfer.anyrelay import AnyRelay, FirstReachable
from retreatkit.transfer.link import Relay
from retreatkit.transfer.machine import Session
from retreatkit.transfer.meet import Place, meet
from retreatkit.transfer.pake import Side
from retreatkit.transfer.rendezvous import OwnRendezvous, RelayRendezvous
from retreatkit.transfer.sending import handshake

HERE = "127.0.0.1"
REACH = 2.0


def announced(address: str, port: int, kind: str = "relay") -> mdns.Found:
    return mdns.Found(f"x.{mdns.RELAY}", (address,), port, {"kind": kind})


def test_at_most_four_relays_in_the_order_of_their_addresses() -> None:
    """An attacker's dozens of announcements make bob dial no more than four; two sides
    that heard the same relays list them alike, whatever order they heard them in."""
    heard = [
        announced("10.0.0.9", 9001),
        announced("10.0.0.9", 9001),  # the same again: once
        announced("10.0.0.10", 9000),
        announced("10.0.0.2", 9000, kind="sender"),  # a sender is no relay
        announced("10.0.0.3", 9000),
        *(announced(f"10.0.1.{n}", 9000) for n in range(1, 40)),
    ]
    lan = [ipaddress.ip_network("10.0.0.0/16")]
    assert find.relays(heard, lan) == [
        Relay("10.0.0.3", 9000),
        Relay("10.0.0.9", 9001),
        Relay("10.0.0.10", 9000),
        Relay("10.0.1.1", 9000),
    ]
    assert find.relays(heard[:3], lan) == find.relays([heard[2], heard[0]], lan)


LAN = [ipaddress.ip_network("10.0.0.0/16")]
SIX = [announced("10.0.0.9", port) for port in range(9101, 9107)]  # one neighbour's
REAL = announced("10.0.0.20", 9000)


def test_a_neighbour_announcing_six_relays_from_one_machine_takes_one_place() -> None:
    """Six tarpits at one address, ahead of the real relay in the order of the addresses:
    bob took the first four heard, so a side that heard them first never tried the real
    relay, and two sides that heard them apart tried different ones. Now one relay of each
    address, whatever the order heard: both sides try the same two."""
    want = [Relay("10.0.0.9", 9101), Relay("10.0.0.20", 9000)]
    assert find.relays([*SIX, REAL], LAN) == want
    assert find.relays([REAL, *SIX[::-1]], LAN) == want
    assert find.relays([SIX[3], REAL, *SIX], LAN) == want


def test_relays_announced_at_a_real_relays_address_push_it_out_of_nothing() -> None:
    """Anyone can announce a relay at any address: others at the real relay's address and
    other ports (nothing there, or ssh) never stand in for the one at port 9000."""
    lies = [announced("10.0.0.3", port) for port in (1, 22, 9001)]
    assert find.relays([*lies, announced("10.0.0.3", 9000)], LAN) == [Relay("10.0.0.3", 9000)]
    assert find.relays(lies, LAN) == [Relay("10.0.0.3", 1)]


def test_the_relay_the_nameserver_names_is_tried_first_whatever_is_announced() -> None:
    """Announced relays, however many, never push out relay.retreat.lan where it resolves:
    it is tried first, once (as announced, at all its addresses, when it is), beside four
    announced; unresolved, or with nothing announced, it is not among them (with no relay
    announced it is the receiver's last stage, the sender's first try)."""
    many = [announced(f"10.0.0.{n}", 9000) for n in range(9, 15)]
    named = find.Target(Relay("10.0.0.20", 9000), "default")
    chosen = find.candidates(find.relays([*many, REAL], LAN), named)
    assert chosen == [
        named,
        *(find.Target(Relay(f"10.0.0.{n}", 9000), "lan") for n in range(9, 13)),
    ]
    both = mdns.Found(f"y.{mdns.RELAY}", ("10.0.0.8", "10.0.0.20"), 9000, {"kind": "relay"})
    assert find.candidates(find.relays([*many, both], LAN), named)[0] == find.Target(
        Relay("10.0.0.8", 9000, ("10.0.0.20",)), "lan"
    )
    unresolved = find.Target(find.DEFAULT, "default")
    assert find.candidates(find.relays(many, LAN), unresolved)[0].relay == Relay("10.0.0.9", 9000)
    assert find.candidates([], named) == []


async def test_discovery_ends_soon_after_a_relay_and_tries_the_default_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The browse ends a moment after the first relay resolves (it held on for the whole
    window: the test of a relay heard never saw this machine's networks), and the relay
    the nameserver names comes first."""
    asked: dict[str, object] = {}

    async def browse(service: str, seconds: float, **when: object) -> list[mdns.Found]:
        asked.update(when)
        return [*SIX, REAL]

    async def resolved() -> find.Target:
        return find.Target(Relay("10.0.0.30", 9000), "default")

    monkeypatch.setattr(mdns, "browse", browse)
    monkeypatch.setattr(find, "default", resolved)
    monkeypatch.setattr("retreatkit.lanaddress.networks", lambda: LAN)
    heard = await find.on_lan(None)
    soon = asked["soon"]
    assert callable(soon) and soon([REAL]) and not soon([announced("10.0.0.2", 9000, "sender")])
    assert [t.relay for t in heard.relays] == [
        Relay("10.0.0.30", 9000),
        Relay("10.0.0.9", 9101),
        Relay("10.0.0.20", 9000),
    ]
    assert heard.peers == []


@contextlib.asynccontextmanager
async def fake_relay(answers: bool) -> AsyncIterator[Relay]:
    """A relay that never says a word, or one that says `ok 77` to a sender and `paired`
    to a receiver, then nothing: neither ever closes a connection."""
    held: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        line = await reader.readline()
        if answers:
            role = wire.parse_request(line).role
            writer.write(b"ok 77\n" if role is wire.Role.SEND else b"paired 10.9.9.9:1\n")

    server = await asyncio.start_server(serve, HERE, 0)
    try:
        yield Relay(HERE, server.sockets[0].getsockname()[1])
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_the_real_relay_wins_over_false_ones_that_are_silent_or_do_nothing(
    relay: RelayProcess,
) -> None:
    real = Relay(relay.host, relay.port)
    async with fake_relay(False) as silent, fake_relay(True) as liar:
        relays = [silent, liar, real]
        sender = AnyRelay(relays, 1, 30.0, REACH, REACH)
        try:
            plate = await sender.open(None)
            # held at the real relay too, whichever answered first
            assert [m.relay for m in sender.held] == [liar, real] or plate != "77"
            assert real in [m.relay for m in sender.held]
            code = codes.generate(plate)

            async def serve() -> None:
                link, _ = await sender.next()
                await handshake(link, Session(Side.SENDER, code), asyncio.Lock())
                await link.close()

            places = [Place(via_relay(r, 30.0), f"the relay at {r}") for r in relays]
            said: list[str] = []
            met, _ = await asyncio.wait_for(
                asyncio.gather(meet([places], code, said.append), serve()), 30
            )
            assert met.place is places[2]
            await met.link.close()
        finally:
            await sender.close()


@pytest.fixture
def tight_relay(tmp_path: Path) -> Iterator[RelayProcess]:
    config = tmp_path / "retreat.toml"
    config.write_text("[relay]\nwaiting = 1\npairs = 1\n")
    proc = start_relay(config)
    try:
        yield proc
    finally:
        proc.stop()


class Announced:
    async def __call__(self, nameplate: str, addresses: list[str], port: int) -> Announced:
        return self

    async def close(self) -> None:
        pass


def hold(relay: RelayProcess, line: bytes) -> socket.socket:
    sock = socket.create_connection((relay.host, relay.port), timeout=10)
    sock.sendall(line)
    return sock


def answer(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        data += sock.recv(128)
    return data


@pytest.mark.parametrize("filled", ["waiting", "pairs"])
async def test_a_relay_with_no_room_is_no_relay_for_the_sender(
    tight_relay: RelayProcess, filled: str
) -> None:
    """A relay full of waiting senders, or carrying as many pairs as it may, answers
    `busy`: the sender becomes its own rendezvous, as with no relay at all."""
    with contextlib.ExitStack() as stack:
        first = hold(tight_relay, b"bob/1 send\n")
        stack.callback(first.close)
        plate = answer(first).split()[1]
        if filled == "pairs":
            second = hold(tight_relay, b"bob/1 recv " + plate + b"\n")
            stack.callback(second.close)
            assert answer(second).startswith(b"paired ")
        said: list[str] = []
        own = OwnRendezvous(1, 5.0, announce=Announced(), host=HERE)  # type: ignore[arg-type]
        real = Relay(tight_relay.host, tight_relay.port)
        rendezvous = FirstReachable(RelayRendezvous(real, 1, 5.0, REACH, REACH), own, said.append)
        try:
            mine = await rendezvous.open(None)
        finally:
            await rendezvous.close()
        why = (
            "the relay is full; try again later"
            if filled == "waiting"
            else "the relay carries as many transfers as it may (1); try again later"
        )
        assert said == [
            f"No relay took the offer (the relay at {real} says: {why}): the receiver finds this"
            f" computer on the LAN (nameplate {mine} advertised)"
        ]


async def test_a_place_the_full_relay_refused_is_asked_for_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--count 10` holds 8 places and tops them up after each pairing. A relay at its
    pairs limit refuses every top-up (`busy`): each paired receiver is served all the
    same, and with no place left the next one is asked for again until there is room."""
    monkeypatch.setattr(rendezvous, "ROOM_RETRY", 0.01)
    places: list[asyncio.StreamWriter] = []
    busy_left = 9  # the 8 top-ups after the pairings, then one more refusal
    asked = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal busy_left, asked
        await reader.readline()
        asked += 1
        if asked > 8 and busy_left:
            busy_left -= 1
            writer.write(b"busy the relay carries as many transfers as it may (1)\n")
            writer.close()
            return
        writer.write(b"ok 77\n")
        places.append(writer)

    server = await asyncio.start_server(serve, HERE, 0)
    relay = Relay(HERE, server.sockets[0].getsockname()[1])
    held = RelayRendezvous(relay, 10, 5.0, REACH, REACH)
    try:
        assert await held.open(None) == "77"
        for n in range(9):  # the 9th only once a refused place was asked for again
            coming = asyncio.ensure_future(held.next())
            async with asyncio.timeout(10):
                while len(places) <= n:  # the place the relay will pair, once it holds it
                    await asyncio.sleep(0.01)  # a poll of the fake relay, not a synchronisation
            places[n].write(f"paired 10.9.9.{n}:1\n".encode())
            link, peer = await asyncio.wait_for(coming, 10)
            assert peer == f"10.9.9.{n}:1"
            await link.close()
        # 8 places, 9 refusals, the 9th's place, and the 10th's once the relay had room
        assert (asked, busy_left) == (8 + 9 + 2, 0)
    finally:
        await held.close()
        for writer in places:
            writer.close()
        server.close()
