"""Where a receiver meets its sender: one place (a relay it was given), or stages of
places tried in turn, the places of one stage together, each a moment after the one
before (find.meeting_places). A place is
met when the sender there proves the passphrase (key confirmation), so an announcement
that leads to a port that never answers, or to something that sends no well-formed key
exchange message (junk, nothing, or a close), costs only itself while the next place
is tried. One guess at the words in all: the peers' messages are checked one at a time
(a lock across every place), and the first that is well formed but then fails key
confirmation, or stops after ours went out, ends the search at every place."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from retreatkit.relay import wire
from retreatkit.transfer import codes
from retreatkit.transfer.errors import PakeFailed, TransferError
from retreatkit.transfer.link import CONNECT_TIMEOUT, Link, NoAnswer, Unreachable
from retreatkit.transfer.machine import Session
from retreatkit.transfer.pake import Side
from retreatkit.transfer.relays import together
from retreatkit.transfer.sending import handshake

Connector = Callable[[wire.Request], Awaitable[Link]]
# seconds a place of a stage has to meet the sender before the next is tried beside it:
# through a relay on a LAN, a key exchange takes a few round trips
STAGGER = 1.0


@dataclass(frozen=True, slots=True)
class Place:
    connector: Connector
    label: str = "the relay"  # what the user is told: "the relay at 10.0.0.3:9000"
    # said when the sender is met here, on that link (link.relay: where it was reached)
    met: Callable[[Link], None] = lambda link: None
    # seconds for the first line (`paired`, or an error) once connected: a relay on the LAN
    # answers in milliseconds, and one that says nothing must not hold the receiver up
    hello: float = CONNECT_TIMEOUT


@dataclass(slots=True)
class Met:
    place: Place
    link: Link
    session: Session
    paired: wire.Reply


async def meet(
    stages: Sequence[Sequence[Place]], code: codes.Code, say: Callable[[str], None]
) -> Met:
    """The first place whose sender confirms the keys. A stage whose places all fail
    gives way to the next, said in one line; the last stage's first error is raised. A
    failed guess (PakeFailed) anywhere ends it at once: the words are used up."""
    search = _Search()
    for n, stage in enumerate(stages):
        try:
            return await _race(stage, code, search)
        except _AllFailed as failed:
            errors = failed.errors
        if n == len(stages) - 1:
            raise _telling(errors)
        say(f"Not met at {_what(stage)} ({_telling(errors)}); trying {_what(stages[n + 1])}")
    raise AssertionError("no stage to meet at")


def _telling(errors: Sequence[TransferError]) -> TransferError:
    """The error to show for a stage: the first from a place that answered (`no sender
    is waiting on nameplate N` says to check the passphrase), over those that stayed
    silent or out of reach (anyone can announce a relay at a port that never answers);
    several relays that all stayed silent, each named (relays.together)."""
    answered = [e for e in errors if not isinstance(e, NoAnswer | Unreachable)]
    if answered:
        return answered[0]
    if len(errors) > 1 and any(isinstance(e, NoAnswer) for e in errors):
        return NoAnswer(together(errors))
    return errors[0]


def _what(stage: Sequence[Place]) -> str:
    if len(stage) == 1:
        return stage[0].label
    if all(place.label.startswith("the relay at") for place in stage):
        return f"the {len(stage)} relays announced on the LAN"
    return f"the {len(stage)} senders announced on the LAN"


class _Search:
    """What the places of a search share: one peer's key exchange message checked at a
    time (`lock`), and whether the search is over (met, or a failed guess), so that a
    place whose turn comes after that checks nothing."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.over = False

    def turn(self) -> None:
        if self.over:
            raise TransferError("the search ended elsewhere")

    def end(self) -> None:
        self.over = True


class _AllFailed(Exception):
    def __init__(self, errors: list[TransferError]) -> None:
        super().__init__("every place failed")
        self.errors = errors


async def _race(stage: Sequence[Place], code: codes.Code, search: _Search) -> Met:
    """The places of a stage, each started STAGGER seconds after the one before, or as
    soon as a place fails; a failed guess at one (PakeFailed) ends them all. A sender that
    found several relays waits at each: a receiver that met it at the first leaves the
    others alone, where its join would pair with the sender's waiting connection there and
    end before a key exchange, which that relay counts against the receiver's address as
    a failed guess."""
    tasks: list[asyncio.Task[Met]] = []
    errors: dict[int, TransferError] = {}
    won: Met | None = None
    try:
        pending: set[asyncio.Task[Met]] = set()
        start = True
        while won is None:
            if start and len(tasks) < len(stage):
                tasks.append(task := asyncio.create_task(_at(stage[len(tasks)], code, search)))
                pending.add(task)
            if not pending:
                break
            more = len(tasks) < len(stage)
            done, pending = await asyncio.wait(
                pending, timeout=STAGGER if more else None, return_when=asyncio.FIRST_COMPLETED
            )
            start = True  # a place failed, or the last one started has had its time
            for task in sorted(done, key=tasks.index):
                exc = task.exception()
                if exc is None:
                    won = won or task.result()
                elif isinstance(exc, PakeFailed):
                    raise exc  # the words are used up: no other place gets a guess
                elif isinstance(exc, TransferError):
                    errors[tasks.index(task)] = exc
                else:
                    raise exc
    finally:
        for task in tasks:
            task.cancel()  # each closes its own link when cancelled
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, Met) and result is not won:  # a second winner
                await result.link.close()
    if won is None:
        raise _AllFailed([errors[i] for i in sorted(errors)])
    won.place.met(won.link)
    return won


async def _at(place: Place, code: codes.Code, search: _Search) -> Met:
    link = await place.connector(wire.Request(wire.Role.RECV, code.nameplate))
    try:
        paired = await link.line(place.hello, "paired")
        session = Session(Side.RECEIVER, code)
        await handshake(link, session, search.lock, search.turn, search.end)
        search.end()  # met: as the lock is let go, before any other place's turn
    except BaseException:
        await link.close()
        raise
    return Met(place, link, session, paired)
