"""What bob says when it reaches no relay: where the address came from (--relay,
BOB_RELAY, a LAN announcement, the default name), and advice that fits that source.

The transfer layer names the relay and what failed; only the command knows how the user
chose the address, so the advice is added here. Telling someone who set BOB_RELAY to
"set BOB_RELAY" sends them round in a circle."""

from __future__ import annotations

from retreatkit.transfer import aio, codes, find
from retreatkit.transfer.errors import TransferError
from retreatkit.transfer.link import NoAnswer

LOOK = "to let bob look for one on the LAN"


def advice(target: find.Target) -> str | None:
    """What to do about a relay that is not there, for where its address came from."""
    relay = target.relay
    if target.how == "BOB_RELAY":
        return f"BOB_RELAY names {relay}: check it, give --relay HOST:PORT, or unset it {LOOK}"
    if target.how == "given":
        env = _env()
        if env is None:
            return f"--relay names {relay}: check it, or leave it out {LOOK}"
        if env.relay == relay:
            return f"--relay and BOB_RELAY name {relay}: check it, or leave out both {LOOK}"
        return f"--relay names {relay}: check it, or leave it out to use BOB_RELAY's {env.relay}"
    if target.how == "lan":
        return "announced on the LAN: give --relay HOST:PORT, or set BOB_RELAY, for another relay"
    if target.how == "default":
        return (
            f"{find.DEFAULT} is the relay bob tries when given none and none is announced:"
            " give --relay HOST:PORT or set BOB_RELAY"
        )
    return None  # "peer": a sender found on the LAN, no relay (unreached says so)


def advised(exc: TransferError, target: find.Target | None) -> TransferError:
    """`exc` with the advice for `target`'s source, when it says no relay is there (none
    reached at its address, or none answering it)."""
    if not isinstance(exc, aio.Unreachable | NoAnswer) or target is None:
        return exc
    told = advice(target)
    return exc if told is None else aio.RelayError(f"{exc} ({told})")


def _env() -> find.Target | None:
    try:
        return find.given(None)
    except ValueError:  # not HOST:PORT: leaving out --relay would not get far either
        return None


def needs_relay(exc: TransferError, target: find.Target | None, otherwise: str) -> TransferError:
    """--no-direct found no relay: the one bob looked for by name is not there, and the
    way bob meets a peer without one (a sender as its own rendezvous) is direct."""
    if not isinstance(exc, aio.Unreachable) or target is None or target.how != "default":
        return exc
    return aio.RelayError(
        f"--no-direct needs a relay, and none answers at {exc.relay} ({exc.why}): give"
        f" --relay HOST:PORT, or leave out --no-direct {otherwise}"
    )


def unreached(
    exc: TransferError, target: find.Target | None, code: codes.Code, no_direct: bool = False
) -> TransferError:
    """What a receiver that reached nobody is told: the LAN had no sender waiting on its
    nameplate (or the one it found has gone), which says more than a default relay name
    that leads nowhere; with --no-direct, that it looked for a relay alone."""
    if no_direct:
        return needs_relay(exc, target, "to connect to a sender on the LAN")
    if not isinstance(exc, aio.Unreachable) or target is None:
        return exc
    if target.how == "peer":
        return aio.RelayError(
            f"the sender of nameplate {code.nameplate} on this network is not waiting any"
            f" more ({exc.why}): ask for a new bob send"
        )
    if target.how == "default":
        return aio.RelayError(
            f"no sender is waiting on nameplate {code.nameplate} on this network, and no relay"
            f" answers at {exc.relay} ({exc.why}): check the passphrase, or give --relay"
            " HOST:PORT"
        )
    return exc
