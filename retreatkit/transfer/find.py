"""Where bob connects, tried in order: `--relay`, then `$BOB_RELAY`, then a relay (or, for
a receiver, the very sender) found on the LAN by zeroconf within DISCOVERY seconds, then
`relay.retreat.lan:9000`, the name the event's nameserver gives the relay. A sender that
reaches no relay at all is its own rendezvous (rendezvous.OwnRendezvous).

Anyone on the LAN can announce anything, so a receiver never takes one announcement's
word: it meets its sender in stages (`meeting_places`), the relay announced on the LAN
first (a sender that found it waits there), then the senders announcing its nameplate,
at most MAX_PEERS of them, tried together (aio.meet), so a neighbour announcing every
nameplate at a port that never answers holds nobody up."""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from retreatkit.transfer.link import Relay, Worker

if TYPE_CHECKING:
    from retreatkit import mdns

DISCOVERY = 1.5  # seconds to listen for relays on the LAN
RESOLVE = 2.0  # seconds for the default name to resolve
REACH = 2.0  # seconds to connect to it: a name that leads nowhere must not hold bob up
MAX_PEERS = 3  # senders announcing one nameplate that a receiver tries at once
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
    """What the LAN announces: for a sender (no `nameplate`) the first relay that
    answers; for a receiver, the first relay and up to MAX_PEERS senders of its nameplate
    (at distinct addresses), relay first. Empty if nothing answers in time."""
    from retreatkit import mdns  # zeroconf only where it is used

    def relay(found: list[mdns.Found]) -> bool:
        return any(map(_is_relay, found))

    # Only a relay ends the browse early (a sender takes the first, never a sender's
    # announcement). A receiver with none hears the whole window: anyone can announce its
    # nameplate, and the first to answer may be a false one, the real sender later.
    found = await mdns.browse(mdns.RELAY, seconds, relay)
    relays = [f for f in found if _is_relay(f)]
    targets = [Target(Relay(f.addresses[0], f.port), "lan") for f in relays[:1]]
    seen: set[str] = set()
    for f in found:
        if nameplate is None or len(seen) == MAX_PEERS:
            break
        said = (f.properties.get("kind"), f.properties.get("nameplate"))
        if said == ("sender", nameplate) and f.addresses[0] not in seen:
            seen.add(f.addresses[0])
            targets.append(Target(Relay(f.addresses[0], f.port), "peer"))
    return targets


def _is_relay(found: mdns.Found) -> bool:
    return found.properties.get("kind", "relay") == "relay"


async def meeting_places(
    nameplate: str, seconds: float = DISCOVERY, senders: bool = True
) -> list[list[Target]]:
    """A receiver's stages (module docstring): the LAN's relay, then the senders the LAN
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
            infos = await Worker().run(
                lambda: socket.getaddrinfo(DEFAULT.host, DEFAULT.port, type=socket.SOCK_STREAM)
            )
    except (OSError, TimeoutError):
        return Target(DEFAULT, "default")
    return Target(Relay(str(infos[0][4][0]), DEFAULT.port), "default")
