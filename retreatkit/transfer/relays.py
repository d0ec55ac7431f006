"""A relay as bob names it, and what goes wrong with one: every error about a relay names
its address, and the errors of several relays tried at once read as one line (`together`),
each address named once beside what happened there (no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

from retreatkit.transfer.errors import TransferError


@dataclass(frozen=True, slots=True)
class Relay:
    host: str
    port: int
    # more addresses of the same relay, tried beside `host` (link.open_channel): an
    # announcement on the LAN lists every address of the relay's host, some perhaps out
    # of our reach
    also: tuple[str, ...] = ()

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class RelayError(TransferError):
    """The relay refused, could not be reached, or said something that is not bob/1.
    `where` is the relay's address and `what` what it did, when the error is about one
    relay (`at`): several relays' errors are told together by them."""

    def __init__(self, message: str, where: str | None = None, what: str | None = None) -> None:
        super().__init__(message)
        self.where = where
        self.what = what

    @classmethod
    def at(cls, relay: Relay | None, what: str) -> Self:
        """`what` the relay at `relay` did, as one line: "the relay at HOST:PORT `what`"."""
        if relay is None:
            return cls(f"the relay {what}")
        return cls(f"the relay at {relay} {what}", str(relay), what)


class Unreachable(RelayError):
    """No connection to the relay (or to a sender that is its own) could be made."""

    def __init__(self, relay: Relay, why: str) -> None:
        nor = f" nor at {', '.join(relay.also)}" if relay.also else ""
        # no advice here: what to do depends on where the address came from, which only
        # the command knows (cli/relayhelp.py)
        super().__init__(
            f"cannot reach the relay at {relay}{nor}: {why}",
            str(relay),
            f"cannot be reached ({why})",
        )
        self.relay = relay
        self.why = why


class RelayBusy(RelayError):
    """The relay has no room (`busy`): a sender meets its receivers without it."""


class NoAnswer(RelayError):
    """The relay took the connection and said nothing in time."""


class NoneTook(RelayError):
    """None of the relays a sender tried took its offer: each was out of reach, silent or
    without room (`errors`, in the order tried). `unreached`: none could be reached."""

    def __init__(self, errors: Sequence[TransferError]) -> None:
        super().__init__(together(errors))
        self.errors = list(errors)
        self.unreached = all(isinstance(e, Unreachable) for e in errors)


def together(errors: Sequence[TransferError]) -> str:
    """Several relays' errors as one line, those that did the same named together, in the
    order of the first of each: `the relays at A, B did not answer in 1 s; the relay at C
    says: the relay is full`. One error is its own line."""
    if len(errors) == 1:
        return str(errors[0])
    groups: dict[tuple[str, bool], list[str]] = {}  # (what, or the whole line; named)
    for error in errors:
        where, what = getattr(error, "where", None), getattr(error, "what", None)
        if where is None or what is None:
            groups.setdefault((str(error), False), [])
        elif where not in (wheres := groups.setdefault((what, True), [])):
            wheres.append(where)
    return "; ".join(
        what if not named
        else f"the relay at {wheres[0]} {what}" if len(wheres) == 1
        else f"the relays at {', '.join(wheres)} {what}"
        for (what, named), wheres in groups.items()
    )  # fmt: skip
