from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retreatkit.transfer import codes


def test_word_list_is_big_and_distinct() -> None:
    words = codes.words()
    assert len(words) >= 1024
    assert len(set(words)) == len(words)
    assert all(w.isascii() and w.isalpha() and w.islower() for w in words)


def test_generate_draws_words_from_the_list() -> None:
    code = codes.generate("7")
    assert code.nameplate == "7"
    assert len(code.secret_words) == 2
    assert set(code.secret_words) <= set(codes.words())
    assert codes.parse(str(code)) == code


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7-purple-sofa", ("7", ("purple", "sofa"))),
        ("  7-Purple-SOFA \n", ("7", ("purple", "sofa"))),
        ("7 purple sofa", ("7", ("purple", "sofa"))),
        ("123456-a-b-c", ("123456", ("a", "b", "c"))),
        # a nameplate has one spelling, on both sides and in the PAKE: 07 is 7
        ("07-purple-sofa", ("7", ("purple", "sofa"))),
        ("000000-purple-sofa", ("0", ("purple", "sofa"))),
    ],
)
def test_parse_forgives_spaces_and_case(text: str, expected: tuple[str, tuple[str, ...]]) -> None:
    code = codes.parse(text)
    assert (code.nameplate, code.secret_words) == expected


@pytest.mark.parametrize("text", ["", "7", "7-purple", "purple-sofa-7", "7-a1-b", "7--a-b"])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(codes.CodeError, match="a passphrase looks like 7-purple-sofa"):
        codes.parse(text)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("1234567-correct-horse", "the number in a passphrase has at most 6 digits"),
        ("7-a-b-c-d-e-f-g", "a passphrase has at most 6 words"),
        ("7-purple-abcdefghijklmnopq", "a passphrase's words have at most 16 letters"),
    ],
)
def test_parse_says_which_limit_a_passphrase_is_over(text: str, said: str) -> None:
    with pytest.raises(codes.CodeError) as caught:
        codes.parse(text)
    assert str(caught.value) == said


@given(st.text(max_size=80))
def test_parse_never_raises_anything_else(text: str) -> None:
    try:
        code = codes.parse(text)
    except codes.CodeError:
        return
    assert str(code).count("-") >= 2


def test_only_the_nameplate_is_public() -> None:
    code = codes.parse("42-alpha-beta")
    assert code.nameplate == "42"
    assert code.pake_password() == b"42-alpha-beta"


def test_four_letter_prefixes_stand_for_their_words() -> None:
    assert str(codes.expand(codes.parse("7-aban-abil"))) == "7-abandon-ability"
    assert str(codes.expand(codes.parse("7-abandon-ability"))) == "7-abandon-ability"
    # too short, or not the start of a list word, or a word of one's own: as typed
    assert str(codes.expand(codes.parse("7-aba-purple"))) == "7-aba-purple"
    assert str(codes.expand(codes.parse("7-abandonx-sofa"))) == "7-abandonx-sofa"
    assert str(codes.parse("BOB:7-ABANDON-ABILITY")) == "7-abandon-ability"  # a QR code's text
    assert len({w[:4] for w in codes.words()}) == 2048  # BIP-39: unique in four letters


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("7-abandno-ability", "7-abandon-ability"),  # swapped
        ("7-abandon-abilty", "7-abandon-ability"),  # left out
        ("7-abandon-abbility", "7-abandon-ability"),  # doubled
        ("7-abandon-zoo", None),  # nothing to correct
        ("7-purple-sofa", None),  # words of one's own, near no single list word
    ],
)
def test_did_you_mean_a_near_miss(typed: str, meant: str | None) -> None:
    better = codes.suggest(codes.parse(typed))
    assert (str(better) if better else None) == meant


def test_completion_at_the_prompt() -> None:
    assert codes.complete("7-aban") == ["7-abandon-"]
    assert codes.complete("7-abandon-abi") == ["7-abandon-ability"]
    assert codes.complete("7-abandon-zzz") == []
    assert codes.complete("abandon") == []  # no nameplate yet
