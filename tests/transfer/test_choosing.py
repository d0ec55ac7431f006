"""A sender that offers at several relays at once: when it stops waiting for them
(choosing.Tries, with the clock in the test's hands), and the asyncio shell around it
(anyrelay.AnyRelay) against a real relay process and a stand-in that takes connections
and never says a word."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator

import pytest

from retreatkit.testing import RelayProcess
from retreatkit.transfer.anyrelay import AnyRelay, FirstReachable
from retreatkit.transfer.choosing import SETTLE, Tries
from retreatkit.transfer.errors import LocalProtocolError
from retreatkit.transfer.relays import NoAnswer, NoneTook, Relay, RelayBusy, Unreachable
from retreatkit.transfer.rendezvous import OwnRendezvous

HERE = "127.0.0.1"
SILENT, REAL, OTHER = 0, 1, 2


def test_a_silent_relay_costs_nothing_once_a_real_one_answered() -> None:
    """The real relay answers 10 ms in: the wait is over SETTLE later, however long the
    silent one's own bound, and only the real one holds the nameplate."""
    tries = Tries(2)
    assert not tries.over(0.0) and tries.wake() is None  # nothing yet: no end in sight
    assert tries.answered(REAL, "17", 0.010)
    assert tries.wake() == pytest.approx(0.010 + SETTLE)
    assert not tries.over(0.010 + SETTLE / 2)
    assert tries.over(0.010 + SETTLE)
    assert (tries.held, tries.waiting(), tries.nameplate) == ([REAL], [SILENT], "17")


def test_several_real_relays_answer_within_the_settle_time_and_all_hold_it() -> None:
    """Two real relays a moment apart, a silent one: both hold it, each asked for the
    nameplate the first chose (the other gave its own: asked again)."""
    tries = Tries(3)
    assert tries.answered(OTHER, "17", 0.004)
    assert not tries.answered(REAL, "52", 0.006)  # its own nameplate: close, ask again
    assert not tries.over(0.1)
    assert tries.over(0.004 + SETTLE)
    assert (tries.held, tries.moved, tries.waiting()) == ([OTHER], [REAL], [SILENT])


def test_with_every_relay_settled_the_wait_ends_at_once() -> None:
    tries = Tries(3, nameplate="4321")
    tries.fail(SILENT, NoAnswer.at(Relay("10.0.0.9", 9101), "did not answer in 1 s"))
    assert tries.answered(REAL, "4321", 0.003)
    tries.fail(OTHER, RelayBusy.at(Relay("10.0.0.7", 9000), "says: the relay is full"))
    assert tries.over(0.003)  # not SETTLE later: nobody left to wait for
    assert tries.held == [REAL]


def test_with_no_relay_answering_each_ones_own_bound_ends_the_wait() -> None:
    """No answer: no end of the wait but the relays' own (the I/O's bound on each
    answer), and then every relay is named with what it did, in their order."""
    tries = Tries(2)
    assert not tries.over(1000.0) and tries.wake() is None
    late = NoAnswer.at(Relay("10.0.0.9", 9102), "did not answer in 1 s")
    early = NoAnswer.at(Relay("10.0.0.9", 9101), "did not answer in 1 s")
    tries.fail(1, late)
    tries.fail(0, early)
    assert tries.over(1000.0) and tries.held == []
    assert str(NoneTook(tries.errors())) == (
        "the relays at 10.0.0.9:9101, 10.0.0.9:9102 did not answer in 1 s"
    )


def test_each_relay_is_settled_once() -> None:
    tries = Tries(1)
    assert tries.answered(0, "5", 0.0)
    with pytest.raises(LocalProtocolError):
        tries.fail(0, NoAnswer("x"))


def test_what_several_relays_did_is_one_line_naming_each() -> None:
    errors = [
        NoAnswer.at(Relay("10.0.0.9", 9101), "did not answer in 1 s"),
        Unreachable(Relay("10.0.0.8", 9000), "Connection refused"),
        NoAnswer.at(Relay("10.0.0.9", 9102), "did not answer in 1 s"),
        RelayBusy.at(Relay("10.0.0.7", 9000), "says: the relay is full; try again later"),
    ]
    assert str(NoneTook(errors)) == (
        "the relays at 10.0.0.9:9101, 10.0.0.9:9102 did not answer in 1 s; the relay at"
        " 10.0.0.8:9000 cannot be reached (Connection refused); the relay at 10.0.0.7:9000"
        " says: the relay is full; try again later"
    )
    assert not NoneTook(errors).unreached
    assert str(NoneTook(errors[:1])) == "the relay at 10.0.0.9:9101 did not answer in 1 s"


@contextlib.asynccontextmanager
async def tarpit() -> AsyncIterator[tuple[Relay, asyncio.Event]]:
    """A port that takes every connection and never says a word; the event is set once
    bob lets a connection go (the tarpit reads its end)."""
    let_go = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # bob's request line, then nothing until bob closes
        let_go.set()
        writer.close()

    server = await asyncio.start_server(hold, HERE, 0)
    try:
        yield Relay(HERE, server.sockets[0].getsockname()[1]), let_go
    finally:
        server.close()


class Steps:
    """A clock that moves SETTLE on at each reading: the shell never waits in real time
    for the settle time to pass."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += SETTLE
        return self.now


async def test_the_sender_holds_at_the_real_relay_and_lets_the_silent_one_go(
    relay: RelayProcess,
) -> None:
    """The silent relay has 60 s to answer by its own bound, first in the order: the
    sender's offer is open once the real relay holds it and the settle time passed, on
    the clock; the silent one's connection is let go, not held to its bound."""
    real = Relay(relay.host, relay.port)
    async with tarpit() as (silent, let_go):
        sender = AnyRelay([silent, real], 1, 30.0, 5.0, 60.0, clock=Steps())
        try:
            plate = await sender.open(None)
            assert [member.relay for member in sender.held] == [real]
            assert plate.isdigit()
            await let_go.wait()
        finally:
            await sender.close()


async def test_no_relay_taking_the_offer_is_said_naming_each(relay: RelayProcess) -> None:
    """A silent relay and one that refuses connections: the sender is its own rendezvous
    and says what each did (it said `the relay did not answer in time`, of four)."""
    with socket.socket() as closed:
        closed.bind((HERE, 0))
        nowhere = Relay(HERE, closed.getsockname()[1])  # bound, not listening: refused
        async with tarpit() as (silent, _):
            said: list[str] = []

            async def announce(nameplate: str, addresses: list[str], port: int) -> Quiet:
                return Quiet()

            own = OwnRendezvous(1, 5.0, announce=announce, host=HERE)  # type: ignore[arg-type]
            sender = FirstReachable(AnyRelay([silent, nowhere], 1, 5.0, 5.0, 0.2), own, said.append)
            try:
                plate = await sender.open(None)
            finally:
                await sender.close()
    # (asyncio's own loop words a refusal its own way; bob's uvloop as the kernel does)
    refused = rf"(Connection refused|Connect call failed \('{HERE}', {nowhere.port}\))"
    assert len(said) == 1
    assert re.fullmatch(
        rf"No relay took the offer \(the relay at {silent} did not answer in 0\.2 s; the"
        rf" relay at {nowhere} cannot be reached \({refused}\)\): the receiver finds this"
        rf" computer on the LAN \(nameplate {plate} advertised\)",
        said[0],
    ), said


class Quiet:
    async def close(self) -> None:
        pass
