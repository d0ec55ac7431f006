"""Where bob connects, tried in order: `--relay`, then `$BOB_RELAY`, then the relays (or,
for a receiver, the very sender) found on the LAN by zeroconf within DISCOVERY seconds,
then `relay.retreat.lan:9000`, the name the event's nameserver gives the relay.

Anyone on the LAN can announce a relay, so the relays announced never push out the one
the event's nameserver names: when any relay is announced, bob tries
`relay.retreat.lan:9000` too, if the name resolves, first (`candidates`). Of the relays
announced it takes one for each address (the one at port 9000, else the lowest port: a
neighbour announcing six relays from one machine has one place, and announcing others
at a real relay's address pushes that one out of nothing), at most MAX_RELAYS of those,
in the order of their addresses; a sender and a receiver that heard the same
announcements, in whatever order, try the same relays in the same order. The sender
asks them all at once (anyrelay.AnyRelay), each with HELLO seconds to answer, and holds
its nameplate at every one that answers; the receiver tries them in that order, each a
second after the one before or as soon as one fails (meet.meet), so it meets the sender
at the first that holds it. A relay that takes connections and never answers costs the
sender nothing once a real one answered, and the receiver a second if it comes first.
A sender that no relay takes (none reached, none answers, none has room) is its own
rendezvous (rendezvous.OwnRendezvous).

An announcement lists every address of its host, its uplink's too, in an order that
varies from one announcement to the next (zeroconf's own): bob tries at most
link.MAX_ADDRESSES of those on a network of this machine's own, in the order of the
addresses (lanaddress.nearest), and never one elsewhere, nor one that leads to this
machine's own ports, or nowhere (`usable`). A relay's are tried each a moment after the
one before (link.open_channel), and bob names the one that answered; a sender's are
places of their own (`senders`).

Anyone on the LAN can announce anything, so a receiver never takes one announcement's
word: it meets its sender in stages (`meeting_places`), the relays first, tried in turn
(a sender that found them waits at each), then the senders announcing its nameplate, at
most MAX_PEERS of them, tried together (meet.meet: each a moment after the one before,
or as soon as one fails), so a neighbour announcing a sender, or a relay, at a port that
never answers costs a receiver a moment, one that refuses or answers anything but bob/1
nothing; only MAX_PEERS false places heard before the real sender keep a receiver from
it."""

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
from retreatkit.transfer.link import MAX_ADDRESSES, Relay, discard, in_thread

if TYPE_CHECKING:
    from retreatkit import mdns

DISCOVERY = 1.5  # seconds to listen for relays on the LAN
RESOLVE = 2.0  # seconds for the default name to resolve
REACH = 2.0  # seconds to connect to it: a name that leads nowhere must not hold bob up
# seconds for a relay found on the LAN (or by the default name) to answer bob's request
# line: a real one answers in milliseconds, and one that took the connection and says
# nothing costs no more than this
HELLO = 1.0
# Senders announced for one nameplate that a receiver tries, each a second after the one
# before (meet.STAGGER) or as soon as one fails. Anyone can announce one, and only its
# key exchange tells the real one: a false one costs a receiver a second at most, one
# that plays the key exchange gets one guess at the words, and this many heard before
# the real sender keep the receiver from it.
MAX_PEERS = 8
MAX_RELAYS = 4  # relays announced on the LAN that bob tries, one for each address
MAX_HEARD = 256  # announcements a browse takes at most
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


@dataclass(frozen=True, slots=True)
class Heard:
    relays: list[Target]  # to try, in the order both sides try them (`candidates`)
    peers: list[Target]  # senders announced for a receiver's nameplate (`senders`)
    default: Target  # relay.retreat.lan:9000, at its address if it resolved


async def on_lan(nameplate: str | None, seconds: float = DISCOVERY) -> Heard:
    """What the LAN announces, and the default relay looked up meanwhile: the relays to
    try (`candidates`), then for a receiver the senders of its `nameplate` (`senders`).
    No relay and no sender if nothing answers in time."""
    from retreatkit import mdns  # zeroconf only where it is used
    from retreatkit.lanaddress import networks  # ifaddr: zeroconf has loaded it

    ours = networks()
    named = asyncio.ensure_future(default())
    try:
        # The browse ends GRACE after the first relay (the others announced answer the
        # same query); a receiver that hears no relay listens the whole window: anyone
        # can announce its nameplate, and the first to answer may be false.
        found = await mdns.browse(
            mdns.RELAY,
            seconds,
            stop=lambda found: len(found) >= MAX_HEARD,
            soon=lambda found: bool(relays(found, ours)),
            grace=GRACE,
        )
        fallback = await named
    finally:
        discard(named)
    peers = [] if nameplate is None else senders(found, nameplate, ours)
    return Heard(
        candidates(relays(found, ours), fallback),
        [Target(peer, "peer") for peer in peers],
        fallback,
    )


def candidates(announced: Sequence[Relay], fallback: Target) -> list[Target]:
    """The relays to try, in the order both sides try them: with any relay announced,
    the default one first if its name resolved (the event's nameserver said where it is:
    no announcement pushes it out), then the announced ones (`relays`). A relay both
    named and announced is tried once, as announced (at all its addresses), first."""
    lan = [Target(relay, "lan") for relay in announced]
    if not lan or fallback.relay == DEFAULT:  # nothing announced, or the name did not resolve
        return lan
    same = [t for t in lan if _same(t.relay, fallback.relay)]
    first = same[0] if same else fallback
    return [first, *(t for t in lan if t is not first)]


def _same(announced: Relay, named: Relay) -> bool:
    return announced.port == named.port and named.host in (announced.host, *announced.also)


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
    """The relays announced, each at its addresses (`announced`): one for each address,
    the one at port 9000 there, else the lowest port (a neighbour announcing dozens from
    one machine takes one place, and none announced at a real relay's address and
    another port pushes it out), at most MAX_RELAYS, in the order of their addresses
    (then ports): two sides that heard the same announcements, in whatever order, list
    the same relays alike."""
    chosen: dict[str, Relay] = {}
    for f in found:
        relay = announced(f, ours) if _is_relay(f) else None
        if relay is None:
            continue
        kept = chosen.get(relay.host)
        if kept is None or _rank(relay) < _rank(kept):
            chosen[relay.host] = relay
    return sorted(chosen.values(), key=in_order)[:MAX_RELAYS]


def _rank(relay: Relay) -> tuple[bool, int]:
    """Which of the relays announced at one address is taken: 9000 (a relay's port), else
    the lowest."""
    return (relay.port != DEFAULT.port, relay.port)


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
    """A receiver's stages (module docstring): the relays (`candidates`), then the senders
    the LAN announces for `nameplate`, tried together; with no relay announced, the
    default one last. Without `senders` (--no-direct: a sender is a direct connection),
    relays only."""
    heard = await on_lan(nameplate if senders else None, seconds)
    stages = [stage for stage in (heard.relays, heard.peers) if stage]
    if not heard.relays:
        stages.append([heard.default])
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
