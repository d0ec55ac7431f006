"""Where a receiver meets its sender, in stages: what the user is told as one stage gives
way to the next, and which error ends the search (in process; places that fail at once)."""

from __future__ import annotations

import asyncio

import pytest

from retreatkit.relay import wire
from retreatkit.transfer import codes
from retreatkit.transfer.aio import via_relay
from retreatkit.transfer.errors import PakeFailed, TransferError
from retreatkit.transfer.link import Link
from retreatkit.transfer.meet import Place, meet
from retreatkit.transfer.relays import NoAnswer, Relay, RelayError, Unreachable

CODE = codes.parse("7-purple-sofa")


def failing(error: TransferError) -> Place:
    async def connect(request: wire.Request) -> Link:
        raise error

    return Place(connect, label=f"place {error}")


async def test_each_stage_given_up_is_said_in_the_same_words_as_it_was_announced() -> None:
    said: list[str] = []
    stages = [
        [failing(TransferError("refused"))],
        [failing(TransferError("silent")), failing(TransferError("gone"))],
        [failing(TransferError("last"))],
    ]
    with pytest.raises(TransferError, match=r"^last$"):
        await meet(stages, CODE, said.append)
    assert said == [
        "Not met at place refused (refused); trying the 2 senders announced on the LAN",
        "Not met at the 2 senders announced on the LAN (silent); trying place last",
    ]


async def test_a_wrong_passphrase_ends_the_search_the_words_are_used_up() -> None:
    said: list[str] = []
    wrong = PakeFailed("wrong passphrase")
    stages = [[failing(TransferError("silent")), failing(wrong)], [failing(TransferError("x"))]]
    with pytest.raises(PakeFailed):
        await meet(stages, CODE, said.append)
    assert said == []


async def test_several_silent_relays_are_told_together_each_named() -> None:
    """Every relay of a stage stayed silent: the one line says which (it said `the relay
    did not answer in time`, of four)."""
    silent = [
        failing(NoAnswer.at(Relay("10.0.0.9", port), "did not answer in 1 s"))
        for port in (9101, 9102)
    ]
    gone = failing(Unreachable(Relay("10.0.0.7", 9000), "No route to host"))
    with pytest.raises(NoAnswer) as caught:
        await meet([[*silent, gone]], CODE, [].append)
    assert str(caught.value) == (
        "the relays at 10.0.0.9:9101, 10.0.0.9:9102 did not answer in 1 s; the relay at"
        " 10.0.0.7:9000 cannot be reached (No route to host)"
    )


async def test_a_relay_that_takes_the_connection_and_says_nothing_fails_at_its_bound() -> None:
    """A place's `hello` bounds the relay's first line (a relay on the LAN answers in
    milliseconds), and the error names where it was."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # never a word

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    tarpit = Relay("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        place = Place(via_relay(tarpit, 30.0), f"the relay at {tarpit}", hello=0.05)
        with pytest.raises(NoAnswer) as caught:
            await meet([[place]], CODE, [].append)
        assert str(caught.value) == f"the relay at {tarpit} did not answer in 0.05 s"
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_what_a_relay_says_names_it() -> None:
    async def relay_says(line: bytes) -> str:
        reader = asyncio.StreamReader()
        reader.feed_data(line)
        reader.feed_eof()
        link = Link(reader, None, 1.0)
        link.relay = Relay("10.0.0.3", 9000)
        with pytest.raises(RelayError) as caught:
            await link.line(1.0, "paired")
        return str(caught.value)

    assert await relay_says(b"error no sender is waiting on nameplate 7\n") == (
        "the relay at 10.0.0.3:9000 says: no sender is waiting on nameplate 7"
    )
    assert await relay_says(b"") == "the relay at 10.0.0.3:9000 closed the connection"
    assert await relay_says(b"ok 7\n") == (
        "the relay at 10.0.0.3:9000 answered 'ok' where bob/1 says 'paired'"
    )
