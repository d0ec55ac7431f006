"""Where a receiver meets its sender, in stages: what the user is told as one stage gives
way to the next, and which error ends the search (in process; places that fail at once)."""

from __future__ import annotations

import pytest

from retreatkit.relay import wire
from retreatkit.transfer import codes
from retreatkit.transfer.errors import PakeFailed, TransferError
from retreatkit.transfer.link import Link
from retreatkit.transfer.meet import Place, meet

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
