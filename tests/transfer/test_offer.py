"""The offer is the receiver's first line of defence: hostile paths, sizes and JSON."""

from __future__ import annotations

import json
import re
import tracemalloc
import unicodedata
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retreatkit.transfer.errors import RemoteProtocolError, UnsafeOffer
from retreatkit.transfer.offer import (
    MAX_COMPONENT,
    MAX_DEPTH,
    MAX_ENTRIES,
    MAX_OFFER,
    MAX_PATH,
    MAX_SIZE,
    MAX_TEXT,
    Entry,
    Offer,
    check_component,
    display_path,
    escape,
    offer_length,
)

# Characters a terminal must never receive raw: C0, DEL, C1, format (incl. bidi), separators.
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def doc(entries: Any, **extra: Any) -> bytes:
    return json.dumps({"v": 1, "entries": entries, **extra}).encode()


def decode_entries(*entries: Any) -> Offer:
    return Offer.decode(doc(list(entries)))


def assert_one_line(exc: BaseException) -> None:
    text = str(exc)
    assert text
    assert "\n" not in text and "\r" not in text
    assert all(ch.isprintable() for ch in text), repr(text)


# -- names and paths --------------------------------------------------------------------


UNSAFE_NAMES = [
    pytest.param("", id="empty"),
    pytest.param(".", id="dot"),
    pytest.param("..", id="dotdot"),
    pytest.param("/", id="slash"),
    pytest.param("/etc", id="absolute"),
    pytest.param("a/b", id="slash-inside"),
    pytest.param("../x", id="dotdot-slash"),
    pytest.param("a\\b", id="backslash-inside"),
    pytest.param("\\\\server\\share", id="unc"),
    pytest.param("..\\..\\x", id="dotdot-backslash"),
    pytest.param("a\0b", id="nul"),
    pytest.param("\0", id="only-nul"),
    pytest.param("C:x", id="drive-relative"),
    pytest.param("c:", id="drive-only"),
    pytest.param("Z:\\Windows", id="drive-absolute"),
    pytest.param("x" * (MAX_COMPONENT + 1), id="overlong-ascii"),
    pytest.param("é" * (MAX_COMPONENT // 2 + 1), id="overlong-utf8-bytes"),
    pytest.param("a\udc80b", id="lone-surrogate"),
    pytest.param("\u202eexe.txt", id="bidi-override"),
    pytest.param("a\u2066b", id="bidi-isolate"),
    pytest.param("\x1b[31mred", id="escape"),
    pytest.param("two\nlines", id="newline"),
    pytest.param("\x9bcsi", id="c1-control"),
    pytest.param("\x7f", id="delete"),
    pytest.param("line\u2028sep", id="line-separator"),
]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_unsafe_component_is_refused(name: str) -> None:
    with pytest.raises(UnsafeOffer) as info:
        check_component(name)
    assert_one_line(info.value)


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_unsafe_component_in_decoded_offer(name: str) -> None:
    with pytest.raises(UnsafeOffer) as info:
        decode_entries([[name], "f", 1])
    assert_one_line(info.value)
    # also as a child below a legitimate folder
    with pytest.raises(UnsafeOffer):
        decode_entries([["d"], "d", 0], [["d", name], "f", 1])


@pytest.mark.parametrize(
    "name",
    [
        "...",
        "..a",
        "a..",
        " ",
        "~",
        "-rf",
        ".hidden",
        "x" * MAX_COMPONENT,
        "é" * (MAX_COMPONENT // 2),
        "1:x",  # not a drive letter
        "ab:c",
        "trailing dot.",
        "trailing space ",
        "CON",  # a device on Windows, a name on POSIX
        "nul.txt",
        "\u200bzero-width",  # shown escaped, but a legal name
        "family \U0001f468\u200d\U0001f469",  # emoji joined by ZWJ (a format character)
    ],
)
def test_odd_but_safe_component_is_accepted(name: str) -> None:
    check_component(name)
    offer = decode_entries([[name], "f", 3])
    assert offer.files[0].path == (name,)


def test_escaped_name_in_error_message() -> None:
    with pytest.raises(UnsafeOffer) as info:
        check_component("\x1b]0;pwned\x07/x")
    assert "\x1b" not in str(info.value) and "\x07" not in str(info.value)
    assert "\\x1b" in str(info.value)


def test_path_too_deep() -> None:
    ok = tuple("d" for _ in range(MAX_DEPTH))
    Entry(ok)
    with pytest.raises(UnsafeOffer, match="levels deep"):
        Entry((*ok, "d"))


def test_path_too_long() -> None:
    part = "p" * 200
    count = MAX_PATH // (len(part) + 1)
    Entry(tuple(part for _ in range(count)))
    with pytest.raises(UnsafeOffer, match="longer than"):
        Entry(tuple(part for _ in range(count + 1)))


def test_empty_path() -> None:
    with pytest.raises(UnsafeOffer):
        Entry(())
    with pytest.raises(UnsafeOffer):
        decode_entries([[], "f", 0])


def test_path_components_must_be_strings() -> None:
    with pytest.raises(UnsafeOffer):
        decode_entries([[1], "f", 0])
    with pytest.raises(UnsafeOffer):
        decode_entries([[None], "f", 0])
    with pytest.raises(UnsafeOffer):
        decode_entries(["a", "f", 0])  # a string is not a list of components
    with pytest.raises(UnsafeOffer):
        decode_entries([[["a"]], "f", 0])


# -- structure ----------------------------------------------------------------------------


def test_duplicate_paths() -> None:
    with pytest.raises(UnsafeOffer, match="listed twice"):
        decode_entries([["a"], "f", 1], [["a"], "f", 1])
    with pytest.raises(UnsafeOffer, match="listed twice"):
        decode_entries([["d"], "d", 0], [["d"], "d", 0])
    with pytest.raises(UnsafeOffer, match="listed twice"):
        decode_entries([["d"], "d", 0], [["d", "x"], "f", 1], [["d", "x"], "x", 1])
    # a file and a folder of the same name
    with pytest.raises(UnsafeOffer, match="listed twice"):
        decode_entries([["d"], "d", 0], [["d"], "f", 1])


def test_file_used_as_parent_folder() -> None:
    with pytest.raises(UnsafeOffer, match="before its folder"):
        decode_entries([["a"], "f", 1], [["a", "b"], "f", 1])
    with pytest.raises(UnsafeOffer, match="before its folder"):
        decode_entries([["a"], "x", 1], [["a", "b"], "d", 0])


def test_children_before_their_folder() -> None:
    with pytest.raises(UnsafeOffer, match="before its folder"):
        decode_entries([["d", "x"], "f", 1], [["d"], "d", 0])
    with pytest.raises(UnsafeOffer, match="before its folder"):
        decode_entries([["d", "e", "x"], "f", 1])
    with pytest.raises(UnsafeOffer, match="before its folder"):
        decode_entries([["d"], "d", 0], [["d", "e", "x"], "f", 1])


def test_nested_offer_is_accepted() -> None:
    offer = decode_entries(
        [["d"], "d", 0], [["d", "e"], "d", 0], [["d", "e", "x"], "x", 5], [["y"], "f", 0]
    )
    assert [e.path for e in offer.files] == [("d", "e", "x"), ("y",)]
    assert offer.files[0].executable
    assert offer.top_level == ("d", "y")
    assert offer.total_size == 5


def test_two_unknown_length_streams() -> None:
    with pytest.raises(UnsafeOffer, match="more than one stream"):
        decode_entries([["a"], "f", None], [["b"], "f", None])
    one = decode_entries([["a"], "f", None], [["b"], "f", 1])
    assert one.total_size is None


def test_too_many_entries() -> None:
    # the limit is checked as the list is read: the entry past it is never built, and the
    # receiver is told what is wrong ("malformed or too long" left it guessing)
    rows: list[Any] = [[[f"f{i}"], "f", 1] for i in range(MAX_ENTRIES)]
    with pytest.raises(UnsafeOffer) as raised:
        Offer.decode(doc([*rows, [["one-more"], "f", 1]]))
    assert str(raised.value) == "the offer lists over 100000 entries"
    with pytest.raises(UnsafeOffer) as raised:
        Offer.decode(doc([*rows, 0]))
    assert str(raised.value) == "an offer entry is malformed"
    entries = tuple(Entry((f"f{i}",)) for i in range(MAX_ENTRIES + 1))
    with pytest.raises(UnsafeOffer) as raised:
        Offer(entries=entries)
    assert str(raised.value) == "the offer lists over 100000 entries"


def deep_offer(entries: int, depth: int) -> bytes:
    """A hostile offer's shape: a chain of folders, then files at the bottom, every path
    repeating every folder's name (as encode() writes it)."""
    folders = [Entry(tuple(f"d{d:02d}" for d in range(n)), is_dir=True) for n in range(1, depth)]
    bottom = folders[-1].path
    files = [Entry((*bottom, f"f{i}"), size=1) for i in range(entries - len(folders))]
    return Offer(entries=(*folders, *files)).encode()[4:]


def test_an_offer_is_read_without_a_string_per_name_in_each_path() -> None:
    """json.loads built every path's names anew: 32 MB of offer took 351 MB before a
    single entry was checked. Read entry by entry, a name is one string however many
    paths hold it, and reading takes little more than the offer's own text."""
    body = deep_offer(20_000, 45)
    tracemalloc.start()
    try:
        offer = Offer.decode(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(offer.entries) == 20_000
    assert offer.entries[-1].path[0] is offer.entries[-2].path[0]
    assert peak < 4 * len(body)  # 2.9 times now; 11 times with json.loads


def peak_of(body: bytes) -> tuple[str, int]:
    """What decoding `body` says, and the most memory it took on the way."""
    tracemalloc.start()
    try:
        try:
            Offer.decode(body)
            said = "accepted"
        except UnsafeOffer as exc:
            said = str(exc)
        return said, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_hostile_offer_is_refused_before_it_takes_memory() -> None:
    """A name of millions of escapes took 583 MB of the matcher's backtracking records
    for 8 MB of offer; paths of names never listed as folders were all built (134 MB for
    14 MB) before the first was found to come before its folder."""
    escapes = b'{"v":1,"entries":[[["' + b"\\a" * 4_000_000
    said, peak = peak_of(escapes)
    assert said == "an offer entry is malformed" and peak < 2 * len(escapes)
    unlisted = [[[f"n{i}_{d}" for d in range(64)], "f", 1] for i in range(20_000)]
    body = json.dumps({"v": 1, "entries": unlisted}, separators=(",", ":")).encode()
    said, peak = peak_of(body)
    assert said.endswith("/n0_63 comes before its folder") and peak < 2 * len(body)
    controls = b'{"v":1,"entries":[[["' + b"\\u0001" * 2_000_000 + b'"],"f",0]]}'
    said, peak = peak_of(controls)  # each shown as 4 characters: all 2 million were
    assert said == "unsafe name '" + "\\x01" * 10 + "...': longer than 255 bytes"
    assert peak < 4 * len(controls)


def test_an_offer_of_a_newer_version_or_with_text_that_is_no_string_says_so() -> None:
    with pytest.raises(UnsafeOffer) as newer:
        Offer.decode(b'{"v":2,"entries":[[["a"],"f",1]]}')
    assert str(newer.value) == "the offer is of an unknown version"
    with pytest.raises(UnsafeOffer) as listed:
        Offer.decode(b'{"v":1,"text":[' + b'"x",' * 1000 + b'"x"]}')
    assert str(listed.value) == "the offered text is not text"


def test_empty_offer() -> None:
    with pytest.raises(UnsafeOffer, match="empty"):
        decode_entries()


def test_text_and_files_are_exclusive() -> None:
    with pytest.raises(UnsafeOffer):
        Offer(text="hi", entries=(Entry(("a",)),))


def test_text_limits() -> None:
    assert Offer.decode(json.dumps({"v": 1, "text": "hi"}).encode()).text == "hi"
    with pytest.raises(UnsafeOffer, match="over"):
        Offer.decode(json.dumps({"v": 1, "text": "x" * (MAX_TEXT + 1)}).encode())
    with pytest.raises(UnsafeOffer, match="not text"):
        Offer.decode(json.dumps({"v": 1, "text": 5}).encode())
    with pytest.raises(UnsafeOffer, match="not text"):
        Offer.decode(json.dumps({"v": 1, "text": None}).encode())


def test_offer_length_header() -> None:
    with pytest.raises(UnsafeOffer, match="short"):
        offer_length(b"\0\0\0")
    with pytest.raises(UnsafeOffer, match="over"):
        offer_length((MAX_OFFER + 1).to_bytes(4, "big"))
    assert offer_length(b"\0\0\0\x05rest") == 9


# -- malformed JSON and types -----------------------------------------------------------


MALFORMED = [
    pytest.param(b"", id="empty"),
    pytest.param(b"{", id="truncated"),
    pytest.param(b"\xff\xfe\x00", id="not-utf8"),
    pytest.param(b"null", id="null"),
    pytest.param(b"[]", id="list"),
    pytest.param(b'"v"', id="string"),
    pytest.param(b"{}", id="no-version"),
    pytest.param(b'{"v": 2, "entries": []}', id="version-2"),
    pytest.param(b'{"v": "1", "entries": []}', id="version-string"),
    pytest.param(b'{"v": 1}', id="no-entries"),
    pytest.param(b'{"v": 1, "entries": {}}', id="entries-dict"),
    pytest.param(b'{"v": 1, "entries": "abc"}', id="entries-string"),
    pytest.param(b'{"v": 1, "entries": [null]}', id="entry-null"),
    pytest.param(b'{"v": 1, "entries": [["a"]]}', id="entry-short"),
    pytest.param(b'{"v": 1, "entries": [[["a"], "f", 1, 2]]}', id="entry-long"),
    pytest.param(b'{"v": 1, "entries": [[["a"], "l", 1]]}', id="kind-symlink"),
    pytest.param(b'{"v": 1, "entries": [[["a"], 0, 1]]}', id="kind-int"),
    pytest.param(b'{"v": 1, "entries": [[["a"], "f", "12"]]}', id="size-string"),
    pytest.param(b'{"v": 1, "entries": [[["a"], "f", -1]]}', id="size-negative"),
    pytest.param(b'{"v": 1, "entries": [[["a"], "f", true]]}', id="size-bool"),
    pytest.param(b'{"v": 1, "entries": [[["a"], "f", false]]}', id="size-false"),
    pytest.param(b'{"v": 1, "entries": [[["a"], "f", 1.5]]}', id="size-float"),
    pytest.param(b'{"v": 1, "entries": [[["a"], "f", 1e400]]}', id="size-inf"),
    pytest.param(b'{"v": 1, "entries": [[["a"], "f", NaN]]}', id="size-nan"),
    pytest.param(b'{"v": 1, "entries": [[["a"], "f", [1]]]}', id="size-list"),
    pytest.param(b'{"v": 1, "entries": [[["a"], "f", %d]]}' % (MAX_SIZE + 1), id="size-over-limit"),
    pytest.param(b'{"v": 1, "entries": [[["a"], "f", 1%s]]}' % (b"0" * 5000), id="size-huge"),
    pytest.param(b'{"v": 1, "entries": [[["d"], "d", 5]]}', id="folder-with-size"),
    pytest.param(b'{"v": 1, "entries": [[["a"], "f", 1]]' + b"]" * 3, id="trailing"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep-nesting"),
    pytest.param(b'{"v": 1, "entries": [[["\\ud800"], "f", 1]]}', id="surrogate-name"),
]


@pytest.mark.parametrize("body", MALFORMED)
def test_malformed_offer(body: bytes) -> None:
    with pytest.raises(UnsafeOffer) as info:
        Offer.decode(body)
    assert_one_line(info.value)


def test_unsafe_offer_is_a_remote_protocol_error() -> None:
    assert issubclass(UnsafeOffer, RemoteProtocolError)


def test_entry_rejects_bool_and_negative_sizes() -> None:
    for size in (True, False, -1, MAX_SIZE + 1, "1", 1.0):
        with pytest.raises(UnsafeOffer):
            Entry(("a",), size=size)  # type: ignore[arg-type]


# -- properties ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decode_arbitrary_bytes_raises_only_unsafe_offer(body: bytes) -> None:
    try:
        Offer.decode(body)
    except UnsafeOffer as exc:
        assert_one_line(exc)


_json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)
_entry_like = st.tuples(
    st.lists(st.text(max_size=6), max_size=3) | _json,
    st.sampled_from(["d", "f", "x", "l", "", None, 1]),
    st.none() | st.integers(-2, 2**60) | st.booleans() | st.floats() | st.text(max_size=3),
).map(list)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        _json,
        st.fixed_dictionaries({"v": st.just(1), "entries": st.lists(_entry_like, max_size=5)}),
        st.fixed_dictionaries({"v": _json, "text": _json}),
    )
)
def test_decode_arbitrary_json_raises_only_unsafe_offer(value: Any) -> None:
    body = json.dumps(value).encode()
    try:
        offer = Offer.decode(body)
    except UnsafeOffer as exc:
        assert_one_line(exc)
        return
    # anything accepted is safe to write: validated paths, sane sizes
    for entry in offer.entries:
        for part in entry.path:
            check_component(part)
        assert entry.size is None or (type(entry.size) is int and 0 <= entry.size <= MAX_SIZE)


# argv and stdin decode stray bytes to U+DC80..U+DCFF (surrogateescape); any other
# surrogate is allowed in a str but a high+low pair is one character to JSON
_any_char = st.characters() | st.integers(0xD800, 0xDFFF).map(chr)
_argv_char = st.characters(exclude_categories=["Cs"]) | st.integers(0xDC80, 0xDCFF).map(chr)
_name_chars = st.characters(
    codec="utf-8",
    exclude_categories=["Cc", "Zl", "Zp"],
    exclude_characters="/\\\0\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069",
)
_component = (
    st.text(_name_chars, min_size=1, max_size=12)
    .filter(lambda s: s not in (".", "..") and not re.match(r"^[A-Za-z]:", s))
    .filter(lambda s: len(s.encode()) <= MAX_COMPONENT)
)


@st.composite
def valid_offers(draw: st.DrawFn) -> Offer:
    if draw(st.booleans()) and draw(st.booleans()):
        return Offer(text=draw(st.text(_argv_char, max_size=50)))
    entries: list[Entry] = []
    folders: list[tuple[str, ...]] = [()]
    seen: set[tuple[str, ...]] = set()
    streams = 0
    for _ in range(draw(st.integers(1, 8))):
        parent = draw(st.sampled_from(folders))
        if len(parent) >= 4:
            parent = ()
        path = (*parent, draw(_component))
        if path in seen:
            continue
        seen.add(path)
        kind = draw(st.sampled_from(["d", "f", "x"]))
        if kind == "d":
            entries.append(Entry(path, is_dir=True))
            folders.append(path)
            continue
        size: int | None = draw(st.integers(0, MAX_SIZE))
        if streams == 0 and draw(st.integers(0, 4)) == 0:
            size, streams = None, 1
        entries.append(Entry(path, size=size, executable=kind == "x"))
    return Offer(entries=tuple(entries))


@settings(max_examples=200, deadline=None)
@given(valid_offers())
def test_encode_decode_round_trip(offer: Offer) -> None:
    encoded = offer.encode()
    assert offer_length(encoded) == len(encoded)
    assert Offer.decode(encoded[4:]) == offer


def test_text_with_lone_surrogates_round_trips() -> None:
    # argv and stdin decode undecodable bytes to lone surrogates (surrogateescape)
    offer = Offer(text="caf\udce9 \ud800!")
    assert Offer.decode(offer.encode()[4:]) == offer


def _unescape(shown: str) -> str:
    return re.sub(
        r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})",
        lambda m: "\\" if m[1] == "\\" else chr(int(m[1][1:], 16)),
        shown,
    )


@settings(max_examples=500, deadline=None)
@given(st.text(_any_char))
def test_escape_never_emits_control_or_format_characters(name: str) -> None:
    shown = escape(name)
    for ch in shown:
        assert unicodedata.category(ch) not in _UNSAFE_CATEGORIES, (name, shown)
        assert ch.isprintable()
    # and it loses nothing: the escaping is reversible, so two names never look alike
    assert _unescape(shown) == name


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[2J", "\\x1b[2J"),
        ("evil\u202etxt.exe", "evil\\u202etxt.exe"),
        ("\u2066x\u2069", "\\u2066x\\u2069"),  # bidi isolates
        ("\u200bzero-width", "\\u200bzero-width"),
        ("\x85next-line", "\\x85next-line"),  # C1
        ("\x9b31mcsi", "\\x9b31mcsi"),  # C1 CSI
        ("a\nb\rc\td", "a\\x0ab\\x0dc\\x09d"),
        ("\x7f", "\\x7f"),
        ("line\u2028sep", "line\\u2028sep"),
        ("back\\slash", "back\\\\slash"),
        ("\U000e0001tag", "\\U000e0001tag"),
        ("\ud800", "\\ud800"),
        ("plain é 日本 🙂", "plain é 日本 🙂"),
    ],
)
def test_escape_known_cases(raw: str, shown: str) -> None:
    assert escape(raw) == shown


def test_display_path_escapes_each_component() -> None:
    assert display_path(("a\x1b", "b\u202e")) == "a\\x1b/b\\u202e"
