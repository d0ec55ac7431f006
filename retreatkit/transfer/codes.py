"""Passphrases: NAMEPLATE-word-word[-word], drawn with `secrets` from a shipped word list."""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass
from functools import cache
from importlib import resources

# A nameplate is public (the relay sees it); only the words are secret.
_CODE_RE = re.compile(r"^(?P<nameplate>[0-9]{1,6})(?P<words>(-[a-z]{1,16}){2,6})$")
NAMEPLATE_RE = re.compile(r"^[0-9]{1,6}$")
WORD_BITS = 11  # log2(2048): a word drawn from the shipped list
MIN_BITS = 2 * WORD_BITS  # what a generated passphrase has; a chosen one needs as much


class CodeError(ValueError):
    """The passphrase given by the user is not of the form NAMEPLATE-word-word."""


@cache
def words() -> tuple[str, ...]:
    """The shipped word list (the BIP-39 English list: 2048 words, unique in 4 letters)."""
    text = resources.files(__package__).joinpath("words.txt").read_text("ascii")
    return tuple(w for w in text.split() if w)


@dataclass(frozen=True, slots=True)
class Code:
    nameplate: str
    secret_words: tuple[str, ...]

    def __str__(self) -> str:
        return "-".join((self.nameplate, *self.secret_words))

    def pake_password(self) -> bytes:
        # The whole code goes into the PAKE, so one nameplate's session cannot be
        # replayed into another's.
        return str(self).encode("ascii")


def parse(text: str) -> Code:
    """Parse a passphrase the user typed; surrounding spaces and case are forgiven."""
    cleaned = text.strip().lower().replace(" ", "-")
    match = _CODE_RE.match(cleaned)
    if match is None:
        raise CodeError("a passphrase looks like 7-purple-sofa: a number, then two or more words")
    return Code(match["nameplate"], tuple(match["words"].strip("-").split("-")))


def entropy_bits(code: Code) -> float:
    """How hard the words are to guess, estimated without flattery.

    A word from the shipped list is one of 2048: 11 bits, if it was drawn at random.
    Any other word counts for what its letters could carry (log2(26) a letter) but never
    more than a list word: people pick words they know, not random letters. A repeated
    word adds nothing. The nameplate is public and counts for nothing.
    """
    pool = frozenset(words())
    bits = 0.0
    for word in dict.fromkeys(code.secret_words):
        bits += WORD_BITS if word in pool else min(WORD_BITS, len(word) * math.log2(26))
    return bits


def generate(nameplate: str, count: int = 2) -> Code:
    """A fresh code for a relay-allocated nameplate: `count` words, 11 bits each."""
    if NAMEPLATE_RE.match(nameplate) is None:
        raise CodeError(f"not a nameplate: {nameplate!r}")
    pool = words()
    return Code(nameplate, tuple(secrets.choice(pool) for _ in range(count)))
