"""Where bob connects, tried in order: `--relay`, then `$BOB_RELAY`, then a relay (or, for
a receiver, the very sender) found on the LAN by zeroconf within DISCOVERY seconds, then
`relay.retreat.lan:9000`, the name the event's nameserver gives the relay. A sender that
reaches no relay at all is its own rendezvous (rendezvous.OwnRendezvous)."""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass

from retreatkit.transfer.link import Relay, Worker

DISCOVERY = 1.5  # seconds to listen for relays on the LAN
RESOLVE = 2.0  # seconds for the default name to resolve
REACH = 2.0  # seconds to connect to it: a name that leads nowhere must not hold bob up
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


async def on_lan(nameplate: str | None, seconds: float = DISCOVERY) -> Target | None:
    """A relay advertised on the LAN; for a receiver (`nameplate`), the sender that
    advertises that nameplate comes first. None if nothing answers in time."""
    from retreatkit import mdns  # zeroconf only where it is used

    def ours(found: list[mdns.Found]) -> bool:
        if nameplate is None:
            return bool(found)  # a sender takes the first relay that answers
        return any(f.properties.get("nameplate") == nameplate for f in found)

    # a receiver gives other answers a moment after the first (its sender may be among them)
    settle = 0.3 if nameplate is not None else None
    found = await mdns.browse(mdns.RELAY, seconds, ours, settle)
    peers = [f for f in found if f.properties.get("kind") == "sender"]
    relays = [f for f in found if f.properties.get("kind", "relay") == "relay"]
    for peer in peers:
        if nameplate is not None and peer.properties.get("nameplate") == nameplate:
            return Target(Relay(peer.addresses[0], peer.port), "peer")
    if relays:
        return Target(Relay(relays[0].addresses[0], relays[0].port), "lan")
    return None


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
