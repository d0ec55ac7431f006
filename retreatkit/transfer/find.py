"""Where bob connects, tried in order: `--relay`, then `$BOB_RELAY`, then the relays (or,
for a receiver, the very sender) found on the LAN by zeroconf within DISCOVERY seconds,
at most MAX_RELAYS of them, all at once (rendezvous.AnyRelay), then
`relay.retreat.lan:9000`, the name the event's nameserver gives the relay. A sender that
no relay takes (none reached, none answers, none has room) is its own rendezvous
(rendezvous.OwnRendezvous).

An announcement lists every address of its host, its uplink's too, in an order that
varies from one announcement to the next (zeroconf's own): bob tries at most
link.MAX_ADDRESSES of those on a network of this machine's own, in the order of the
addresses (lanaddress.nearest), and never one elsewhere, nor one that leads to this
machine's own ports, or nowhere (`usable`). A relay's are tried each a moment after the
one before (link.open_channel), and bob names the one that answered; a sender's are
places of their own (`senders`).

Anyone on the LAN can announce anything, so a receiver never takes one announcement's
word: it meets its sender in stages (`meeting_places`), the relays announced on the LAN
first, tried together (a sender that found them waits at each), then the senders
announcing its nameplate, at most MAX_PEERS of them, tried together (meet.meet: each a
moment after the one before, or as soon as one fails), so a neighbour announcing a
sender, or a relay, at a port that never answers costs a receiver a moment, one that
refuses or answers anything but bob/1 nothing; only MAX_PEERS false places heard
before the real sender keep a receiver from it."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from retreatkit.lanaddress import Network, address_order, nearest
from retreatkit.transfer import hints
from retreatkit.transfer.link import MAX_ADDRESSES, Relay, in_thread

if TYPE_CHECKING:
    from retreatkit import mdns

DISCOVERY = 1.5  # seconds to listen for relays on the LAN
RESOLVE = 2.0  # seconds for the default name to resolve
REACH = 2.0  # seconds to connect to it: a name that leads nowhere must not hold bob up
ANSWER = 5.0  # seconds for a relay found on the LAN to hold a sender's nameplate
# Senders announced for one nameplate that a receiver tries, each a second after the one
# before (meet.STAGGER) or as soon as one fails. Anyone can announce one, and only its
# key exchange tells the real one: a false one costs a receiver a second at most, one
# that plays the key exchange gets one guess at the words, and this many heard before
# the real sender keep the receiver from it.
MAX_PEERS = 8
MAX_RELAYS = 4  # relays announced on the LAN that bob tries together
GRACE = 0.3  # seconds to hear more relays (and senders) after the first relay
DEFAULT = Relay("relay.retreat.lan", 9000)


@dataclass(frozen=True, slots=True)
class Target:
    relay: Relay
    how: str  # "given", "BOB_RELAY", "lan", "peer" (a sender found on the LAN), "default"

    @property
    def direct(self) -> bool:
        return self.how == "peer"


def given(text: str | None) -> Target | None:
    """--relay, else $BOB_RELAY: the user's word, never second-guessed."""
    from retreatkit import config

    if text:
        host, port = config.host_port(text, default_port=9000)
        return Target(Relay(host, port), "given")
    env = os.environ.get("BOB_RELAY")
    if env:
        host, port = config.host_port(env, default_port=9000)
        return Target(Relay(host, port), "BOB_RELAY")
    return None


async def on_lan(nameplate: str | None, seconds: float = DISCOVERY) -> list[Target]:
    """What the LAN announces: the relays (`relays`), then for a receiver the senders of
    its `nameplate` (`senders`). Empty if nothing answers in time."""
    from retreatkit import mdns  # zeroconf only where it is used
    from retreatkit.lanaddress import networks  # ifaddr: zeroconf has loaded it

    ours = networks()
    # The browse ends GRACE after the first relay (the others announced answer the same
    # query), at once with MAX_RELAYS; a receiver that hears no relay listens the whole
    # window: anyone can announce its nameplate, and the first to answer may be false.
    found = await mdns.browse(
        mdns.RELAY,
        seconds,
        stop=lambda found: len(relays(found)) >= MAX_RELAYS,
        soon=lambda found: bool(relays(found)),
        grace=GRACE,
    )
    targets = [Target(relay, "lan") for relay in relays(found, ours)]
    if nameplate is not None:
        targets += [Target(peer, "peer") for peer in senders(found, nameplate, ours)]
    return targets


def senders(found: list[mdns.Found], nameplate: str, ours: Sequence[Network] = ()) -> list[Relay]:
    """The places where senders are announced for `nameplate`, at most MAX_PEERS, in the
    order heard: each of an announcement's addresses (`usable`, `nearest` first, at most
    MAX_ADDRESSES) a place of its own, once for each address and port. One false
    announcement at the real sender's address must not stand in for it, nor three that
    came first for the rest, nor a false address for the real sender's name (the first
    to take the connection kept the others untried, and said nothing): the receiver tries
    each place, one after another (meet.meet), and only the real one proves the
    passphrase."""
    chosen: dict[tuple[str, int], Relay] = {}
    for f in found:
        if (f.properties.get("kind"), f.properties.get("nameplate")) != ("sender", nameplate):
            continue
        for address in nearest(usable(f.addresses, ours), ours, MAX_ADDRESSES):
            if len(chosen) == MAX_PEERS:
                return list(chosen.values())
            chosen.setdefault((address, f.port), Relay(address, f.port))
    return list(chosen.values())


def relays(found: list[mdns.Found], ours: Sequence[Network] = ()) -> list[Relay]:
    """The relays announced, at most MAX_RELAYS, the first heard (dozens announced make
    bob dial no more), each at its addresses (`announced`), in the order of the first, so
    both sides of one network list them alike."""
    chosen: dict[tuple[str, int], Relay] = {}
    for f in found:
        if _is_relay(f) and len(chosen) < MAX_RELAYS:
            relay = announced(f, ours)
            if relay is not None:
                chosen.setdefault((relay.host, relay.port), relay)
    return sorted(chosen.values(), key=in_order)


def announced(found: mdns.Found, ours: Sequence[Network] = ()) -> Relay | None:
    """Where an announcement says to connect: its `nearest` addresses, the first as the
    relay's host, the others tried beside it (link.open_channel); None if it names none
    bob may be led to (`usable`)."""
    addresses = usable(found.addresses, ours)
    if not addresses:
        return None
    first, *others = nearest(addresses, ours, MAX_ADDRESSES)
    return Relay(first, found.port, tuple(others))


def usable(addresses: Sequence[str], ours: Sequence[Network]) -> list[str]:
    """The addresses of an announcement on a network of this machine's own (`ours`) that
    pass the test a peer's direct hints pass (hints.ordinary): anyone can announce
    anything, and an address elsewhere (the internet, say, or a VPN's far side) would
    have bob connect beyond the LAN at a neighbour's word, while loopback, 0.0.0.0, a
    multicast or a broadcast address would lead it to this machine's own ports, or
    nowhere. Loopback only on a machine on no network but loopback, where nobody else
    can announce. This machine's own LAN address is kept: a relay run beside bob is
    announced there, and anyone on the LAN reaches what listens there."""
    alone = bool(ours) and all(network.is_loopback for network in ours)
    out = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if hints.ordinary(address, ours, loopback=alone) and any(address in n for n in ours):
            out.append(text)
    return out


def in_order(relay: Relay) -> tuple[tuple[int, int], int]:
    """Relays in the order of their addresses (then ports)."""
    return (address_order(relay.host), relay.port)


def _is_relay(found: mdns.Found) -> bool:
    return found.properties.get("kind", "relay") == "relay"


async def meeting_places(
    nameplate: str, seconds: float = DISCOVERY, senders: bool = True
) -> list[list[Target]]:
    """A receiver's stages (module docstring): the LAN's relays, then the senders the LAN
    announces for `nameplate`, tried together; with no relay on the LAN, the default one
    last. Without `senders` (--no-direct: a sender is a direct connection), relays only."""
    found = await on_lan(nameplate if senders else None, seconds)
    relays = [t for t in found if t.how == "lan"]
    peers = [t for t in found if t.how == "peer"]
    stages = [stage for stage in (relays, peers) if stage]
    if not relays:
        stages.append([await default()])
    return stages


async def default() -> Target:
    """relay.retreat.lan:9000, resolved here (in a daemon thread, bounded: a LAN with no
    resolver must not hold bob up, nor its exit)."""
    try:
        async with asyncio.timeout(RESOLVE):
            infos = await in_thread(
                lambda: socket.getaddrinfo(DEFAULT.host, DEFAULT.port, type=socket.SOCK_STREAM)
            )
    except (OSError, TimeoutError):
        return Target(DEFAULT, "default")
    return Target(Relay(str(infos[0][4][0]), DEFAULT.port), "default")
