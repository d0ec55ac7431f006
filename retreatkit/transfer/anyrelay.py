"""A sender's offer at the relays bob found (find.on_lan), all asked at once, and with
none to take it the sender's own rendezvous; what the user is told of either."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from retreatkit.transfer.choosing import Tries
from retreatkit.transfer.errors import TransferError
from retreatkit.transfer.link import CONNECT_TIMEOUT, Link, Relay, discard
from retreatkit.transfer.relays import NoAnswer, NoneTook, RelayBusy, Unreachable
from retreatkit.transfer.rendezvous import Closed, OwnRendezvous, RelayRendezvous, Rendezvous

# A relay that cannot be reached, says nothing, or has no room is as good as none: the
# sender meets its receivers on the LAN instead (a receiver tries the relay, then the LAN).
NO_RELAY = (Unreachable, NoAnswer, RelayBusy, NoneTook)


class AnyRelay:
    """Several relays, and anyone can announce one: none is trusted over another. The
    sender asks every one at once and holds its nameplate at each that answers `ok` in
    time (choosing.Tries: the first to answer chooses the nameplate, the others are asked
    for that one, and the wait ends a moment after the first answer); receivers try them
    in turn (find.meeting_places), and the first receiver to join anywhere is served. So
    a relay that never answers costs the sender nothing once a real one answered, and one
    that answers and forwards nothing costs only itself. With none taking the offer,
    NoneTook names each relay and what it did, unless one refused it outright (`error`:
    that one's error)."""

    def __init__(
        self,
        relays: Sequence[Relay],
        count: int,
        timeout: float,
        reach: float = CONNECT_TIMEOUT,
        answer: float = CONNECT_TIMEOUT,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.count, self.timeout, self.reach, self.answer = count, timeout, reach, answer
        self.members = [self._member(r) for r in relays]
        self.held: list[RelayRendezvous] = []
        self._clock = clock
        self._nexts: dict[asyncio.Task[tuple[Link, str]], RelayRendezvous] = {}
        self._closed = False

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    async def open(self, nameplate: str | None) -> str:
        tasks = [asyncio.ensure_future(m.open(nameplate)) for m in self.members]
        tries = Tries(len(tasks), nameplate)
        try:
            pending = set(tasks)
            while not tries.over(self._now()):  # each relay bounded by `reach`, `answer`
                wake = tries.wake()
                timeout = None if wake is None else max(0.0, wake - self._now())
                done, pending = await asyncio.wait(
                    pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                for task in sorted(done, key=tasks.index):
                    n = tasks.index(task)
                    exc = task.exception()
                    if isinstance(exc, TransferError):
                        tries.fail(n, exc)
                    elif exc is not None:
                        raise exc
                    elif not tries.answered(n, task.result(), self._now()):
                        await self.members[n].close()
        finally:
            for task in tasks:
                discard(task)
        for n in tries.waiting():  # not waited for: what it held meanwhile goes
            await self.members[n].close()
        plate = tries.nameplate
        if not tries.held or plate is None:
            errors = tries.errors()
            refused = [e for e in errors if not isinstance(e, NO_RELAY)]
            raise refused[0] if refused else NoneTook(errors)
        self.held = [self.members[n] for n in tries.held]
        again = [self._member(self.members[n].relay) for n in tries.moved]
        self.members += again
        opened = await asyncio.gather(*(m.open(plate) for m in again), return_exceptions=True)
        self.held += [m for m, done in zip(again, opened, strict=True) if done == plate]
        return plate

    def _member(self, relay: Relay) -> RelayRendezvous:
        return RelayRendezvous(relay, self.count, self.timeout, self.reach, self.answer)

    async def next(self) -> tuple[Link, str]:
        while True:
            if self._closed or not self.held:
                raise Closed
            for member in self.held:
                if member not in self._nexts.values():
                    self._nexts[asyncio.ensure_future(member.next())] = member
            done, _ = await asyncio.wait(set(self._nexts), return_when=asyncio.FIRST_COMPLETED)
            task = min(done, key=lambda t: self.held.index(self._nexts[t]))
            member = self._nexts.pop(task)
            exc = task.exception()
            if exc is None:
                for other in self.held:
                    if other is not member:
                        other.wanted -= 1  # served: none of them waits for this one
                return task.result()
            self.held.remove(member)  # that relay went away; the others still hold
            await member.close()
            if not self.held:
                raise exc

    def one_more(self) -> None:
        for member in self.members:
            member.one_more()

    async def close(self) -> None:
        self._closed = True
        nexts, self._nexts = self._nexts, {}
        for task in nexts:
            task.cancel()
        for task in nexts:
            with contextlib.suppress(BaseException):
                result = await task
                await result[0].close()  # joined while we stopped: it goes too
        for member in self.members:
            await member.close()


class Said:
    """Relays found on the LAN, said (`say`) once they hold the nameplate, at the addresses
    that answered: a line said before could name an address out of reach, or a relay that
    then took nothing (FirstReachable says so instead)."""

    def __init__(
        self, relays: RelayRendezvous | AnyRelay, say: Callable[[list[Relay]], None]
    ) -> None:
        self.relays = relays
        self._say = say

    async def open(self, nameplate: str | None) -> str:
        plate = await self.relays.open(nameplate)
        held = self.relays.held if isinstance(self.relays, AnyRelay) else [self.relays]
        self._say([member.relay for member in held])
        return plate

    async def next(self) -> tuple[Link, str]:
        return await self.relays.next()

    def one_more(self) -> None:
        self.relays.one_more()

    async def close(self) -> None:
        await self.relays.close()


class FirstReachable:
    """The relay, if it is reached and has room; else our own."""

    def __init__(
        self,
        first: Rendezvous,
        then: OwnRendezvous,
        said: Callable[[str], None],
    ) -> None:
        self.current: Rendezvous = first
        self._then = then
        self._said = said

    async def open(self, nameplate: str | None) -> str:
        try:
            return await self.current.open(nameplate)
        except NO_RELAY as exc:
            unreached = isinstance(exc, Unreachable) or (
                isinstance(exc, NoneTook) and exc.unreached
            )
            why = None if unreached else str(exc)
        await self.current.close()
        self.current = self._then
        plate = await self._then.open(nameplate)
        self._said(
            ("No relay on this network" if why is None else f"No relay took the offer ({why})")
            + f": the receiver finds this computer on the LAN (nameplate {plate} advertised)"
        )
        return plate

    async def next(self) -> tuple[Link, str]:
        return await self.current.next()

    def one_more(self) -> None:
        self.current.one_more()

    async def close(self) -> None:
        await self.current.close()
