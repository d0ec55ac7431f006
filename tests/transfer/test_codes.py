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
    ],
)
def test_parse_forgives_spaces_and_case(text: str, expected: tuple[str, tuple[str, ...]]) -> None:
    code = codes.parse(text)
    assert (code.nameplate, code.secret_words) == expected


@pytest.mark.parametrize(
    "text", ["", "7", "7-purple", "purple-sofa-7", "1234567-a-b", "7-a1-b", "7--a-b"]
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(codes.CodeError, match="a passphrase looks like 7-purple-sofa"):
        codes.parse(text)


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
