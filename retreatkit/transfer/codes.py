"""Passphrases: NAMEPLATE-word-word[-word], drawn with `secrets` from a shipped word list."""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from retreatkit.relay.wire import NAMEPLATE

# A nameplate is public (the relay sees it); only the words are secret.
_CODE_RE = re.compile(r"^(?P<nameplate>[0-9]{1,6})(?P<words>(-[a-z]{1,16}){2,6})$")
NAMEPLATE_RE = re.compile(rf"^(?:{NAMEPLATE})$")  # as written on the wire
_TYPED_NAMEPLATE_RE = re.compile(r"^[0-9]{1,6}$")
WORD_BITS = 11  # log2(2048): a word drawn from the shipped list
MIN_BITS = 2 * WORD_BITS  # what a generated passphrase has; a chosen one needs as much


class CodeError(ValueError):
    """The passphrase given by the user is not of the form NAMEPLATE-word-word."""


@cache
def words() -> tuple[str, ...]:
    """The shipped word list (the BIP-39 English list: 2048 words, unique in 4 letters)."""
    # beside this module, as pip installs it: importlib.resources, for zip archives bob is
    # never run from, cost every bob run about 8 ms of imports (tempfile, shutil, zipfile)
    text = Path(__file__).with_name("words.txt").read_text("ascii")
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
    cleaned = text.strip().lower().replace(" ", "-").removeprefix("bob:")  # a QR code's text
    match = _CODE_RE.match(cleaned)
    if match is None:
        raise CodeError(_unlike(cleaned))
    # `07` is `7` (and goes into the PAKE as `7`), on both sides
    nameplate = str(int(match["nameplate"]))
    return Code(nameplate, tuple(match["words"].strip("-").split("-")))


_LOOSE_RE = re.compile(r"^(?P<nameplate>[0-9]+)(?P<words>(-[a-z]+)+)$")


def _unlike(cleaned: str) -> str:
    """Why `cleaned` is no passphrase: the shape, or (when it has the shape) the limit."""
    loose = _LOOSE_RE.match(cleaned)
    if loose is not None:
        words = loose["words"].strip("-").split("-")
        if len(loose["nameplate"]) > 6:
            return "the number in a passphrase has at most 6 digits"
        if len(words) > 6:
            return "a passphrase has at most 6 words"
        if any(len(w) > 16 for w in words):
            return "a passphrase's words have at most 16 letters"
    return "a passphrase looks like 7-purple-sofa: a number, then two or more words"


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


PREFIX = 4  # the list's words are unique in their first four letters (BIP-39)


@cache
def _by_prefix() -> dict[str, str]:
    return {w[:PREFIX]: w for w in words()}


def expand(code: Code) -> Code:
    """Each word given by at least its first four letters, as the list spells it: both
    sides do this before the PAKE, so `7-purp-sofa` and `7-purple-sofa` agree. A word
    the list does not start with stays as typed (a passphrase of one's own)."""
    pool = frozenset(words())
    out = []
    for word in code.secret_words:
        full = _by_prefix().get(word[:PREFIX]) if len(word) >= PREFIX else None
        out.append(full if word not in pool and full and full.startswith(word) else word)
    return Code(code.nameplate, tuple(out))


def _near(word: str) -> set[str]:
    """Strings one edit away (delete, swap, replace, insert), as typos are."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    out = {a + b[1:] for a, b in splits if b}
    out |= {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
    out |= {a + c + b[1:] for a, b in splits if b for c in letters}
    out |= {a + c + b for a, b in splits for c in letters}
    return out


def suggest(code: Code) -> Code | None:
    """A near miss, corrected: each word the list lacks that is one typo (a letter left
    out, added, changed or two swapped) from exactly one list word, or a four-letter
    prefix one typo from exactly one word's, becomes that word. None if nothing changes
    or some word has no single nearest one."""
    code = expand(code)
    pool = frozenset(words())
    out, changed = [], False
    for word in code.secret_words:
        if word in pool:
            out.append(word)
            continue
        near = _near(word)
        candidates = {w for w in near if w in pool}
        if len(word) == PREFIX:
            candidates |= {_by_prefix()[p] for p in near if p in _by_prefix()}
        if len(candidates) != 1:
            return None
        out.append(candidates.pop())
        changed = True
    return Code(code.nameplate, tuple(out)) if changed else None


def complete(text: str) -> list[str]:
    """Completions of what is typed at the passphrase prompt: the last word's, from the
    list, each followed by a dash until two words are there."""
    head, _, fragment = text.rpartition("-")
    if not head or not _TYPED_NAMEPLATE_RE.match(head.split("-")[0]):
        return []
    typed_words = len(head.split("-")) - 1
    suffix = "-" if typed_words < 1 else ""
    return [f"{head}-{w}{suffix}" for w in words() if w.startswith(fragment.lower())]
