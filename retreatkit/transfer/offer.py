"""The offer (what the sender proposes) and its validation: the receiver's first line of defence."""

from __future__ import annotations

import functools
import json
import re
import struct
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from retreatkit.transfer.errors import UnsafeOffer

MAX_ENTRIES = 100_000
MAX_DEPTH = 64
MAX_COMPONENT = 255  # bytes, as on most file systems
MAX_PATH = 4096
MAX_TEXT = 1024 * 1024
MAX_OFFER = 32 * 1024 * 1024  # encoded JSON
MAX_SIZE = 1 << 50
_DRIVE = re.compile(r"^[A-Za-z]:")
_LENGTH = struct.Struct(">I")
# Bidi controls reorder what a terminal shows (CVE-2021-42574, "Trojan Source"): a name
# holding one can pass for another, so none is accepted, nor a control or line break.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_REFUSED_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


@dataclass(frozen=True, slots=True)
class Entry:
    """A folder or a file, by its relative path; size None means a stream of unknown length."""

    path: tuple[str, ...]
    is_dir: bool = False
    size: int | None = 0
    executable: bool = False

    def __post_init__(self) -> None:
        check_path(self.path)
        if self.is_dir and (self.size or self.executable):
            raise UnsafeOffer(f"folder {display_path(self.path)} claims a size")
        # type(): a bool is an int to isinstance, and True is not a size
        if self.size is not None and not (type(self.size) is int and 0 <= self.size <= MAX_SIZE):
            raise UnsafeOffer(f"{display_path(self.path)} claims an impossible size")


@dataclass(frozen=True, slots=True)
class Offer:
    """Checked when built, in time linear in the number of entries (a peer chooses it)."""

    text: str | None = None
    entries: tuple[Entry, ...] = field(default_factory=tuple)
    # derived once here: the session asks for them per record
    files: tuple[Entry, ...] = field(init=False, repr=False, compare=False)
    top_level: tuple[str, ...] = field(init=False, repr=False, compare=False)
    total_size: int | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        files: list[Entry] = []
        top: list[str] = []
        if self.text is not None:
            if self.entries:
                raise UnsafeOffer("an offer holds text or files, not both")
            if len(self.text.encode("utf-8", "surrogatepass")) > MAX_TEXT:
                raise UnsafeOffer(f"the text is over {MAX_TEXT} bytes")
        elif not self.entries:
            raise UnsafeOffer("the offer is empty")
        elif len(self.entries) > MAX_ENTRIES:
            raise UnsafeOffer(f"the offer lists over {MAX_ENTRIES} entries")
        seen: dict[tuple[str, ...], bool] = {}
        total: int | None = 0
        for entry in self.entries:
            path = entry.path
            if path in seen:
                raise UnsafeOffer(f"{display_path(path)} is listed twice")
            # a parent must come first and be a folder: no file may stand in for one.
            # Its own parent was checked the same way, so one look covers every level.
            if len(path) > 1 and seen.get(path[:-1]) is not True:
                raise UnsafeOffer(f"{display_path(path)} comes before its folder")
            seen[path] = entry.is_dir
            if len(path) == 1:
                top.append(path[0])
            if not entry.is_dir:
                files.append(entry)
                if entry.size is None:
                    if total is None:
                        raise UnsafeOffer("more than one stream of unknown length")
                    total = None
                elif total is not None:
                    total += entry.size
        object.__setattr__(self, "files", tuple(files))
        object.__setattr__(self, "top_level", tuple(top))
        object.__setattr__(self, "total_size", total)

    def encode(self) -> bytes:
        doc: dict[str, Any] = {"v": 1}
        if self.text is not None:
            doc["text"] = self.text
        else:
            doc["entries"] = [
                [list(e.path), "d" if e.is_dir else ("x" if e.executable else "f"), e.size]
                for e in self.entries
            ]
        # lone surrogates (argv and stdin decode stray bytes to them) can only stand in
        # strings: backslashreplace makes them the JSON escape that decodes back to them
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        body = text.encode("utf-8", "backslashreplace")
        return _LENGTH.pack(len(body)) + body

    @staticmethod
    def decode(body: bytes) -> Offer:
        """Parse an offer; anything malformed raises UnsafeOffer with one line.

        Read entry by entry, never as one JSON document: a peer's 32 MB of JSON made
        json.loads build 6 million strings (450 MB) before a single one was checked. Each
        entry is matched first (at most MAX_DEPTH names, a kind, a size), then only its
        names are decoded, and a name met again is the string kept the first time."""
        try:
            text = body.decode("utf-8")
            head = _HEAD.match(text)
            if head is None:
                raise UnsafeOffer("the offer is malformed")
            if head["v"] != "1":
                raise UnsafeOffer("the offer is of an unknown version")
            if head["key"] == "text":
                return Offer(text=_text(text, head.end()))
            return Offer(entries=_entries(text, head.end()))
        except UnsafeOffer:
            raise
        except (ValueError, RecursionError) as exc:
            raise UnsafeOffer(f"the offer is malformed ({type(exc).__name__})") from None


# The offer's layout, as encode() writes it (whitespace between tokens allowed): its head,
# then its text, or its entries one by one, each with its path's names left undecoded.
_WS = r"[ \t\n\r]*"
# possessive: a name of millions of escapes kept a backtracking record for each (2.3 GB)
_STRING = r'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
_HEAD = re.compile(
    rf'{_WS}\{{{_WS}"v"{_WS}:{_WS}(?P<v>-?[0-9]{{1,20}}|"[^"]{{0,20}}"|null|true|false)'
    rf'{_WS},{_WS}"(?P<key>entries|text)"{_WS}:{_WS}'
)
_ENTRY = re.compile(
    rf"\[{_WS}\[{_WS}(?P<path>{_STRING}(?:{_WS},{_WS}{_STRING}){{0,{MAX_DEPTH - 1}}})"
    rf'{_WS}\]{_WS},{_WS}"(?P<kind>[dfx])"{_WS},{_WS}(?P<size>null|0|[1-9][0-9]{{0,15}}){_WS}\]'
)
_COMMA = re.compile(rf"{_WS},{_WS}")
_CLOSE = re.compile(rf"{_WS}\]")
_END = re.compile(rf"{_WS}\}}{_WS}")
_DECODER = json.JSONDecoder()


def _text(text: str, pos: int) -> str:
    """The offered text at `pos`: a string, and the offer's end after it."""
    if not text.startswith('"', pos):
        raise UnsafeOffer("the offered text is not text")  # not decoded: it may be anything
    value, end = _DECODER.raw_decode(text, pos)
    if _END.fullmatch(text, end) is None:
        raise UnsafeOffer("the offer is malformed")
    assert isinstance(value, str)
    return value


def _entries(text: str, pos: int) -> tuple[Entry, ...]:
    """The entries from the list's opening bracket at `pos` to the offer's end.

    Each entry's folder is looked up as it is read (Offer checks it again, and the rest):
    an offer whose paths name folders it never listed is refused at its first such entry,
    not once all of them are built, and a path holds its folder's own names, so an offer
    has one string per entry, however deep its paths go."""
    if not text.startswith("[", pos):
        raise UnsafeOffer("the offer's entry list is malformed")
    pos += 1
    entries: list[Entry] = []
    folders: dict[tuple[str, ...], tuple[str, ...]] = {}  # each folder's path, as kept
    close = _CLOSE.match(text, pos)  # an empty list: Offer says so
    while close is None:
        entry = _ENTRY.match(text, pos)
        if entry is None:
            raise UnsafeOffer("an offer entry is malformed")
        if len(entries) == MAX_ENTRIES:  # said as Offer says it; the entry is never built
            raise UnsafeOffer(f"the offer lists over {MAX_ENTRIES} entries")
        names = tuple(json.loads(f"[{entry['path']}]"))  # strings only, as matched
        path = names[-1:]
        if len(names) > 1:
            parent = folders.get(names[:-1])
            if parent is None:
                check_path(names)  # an unsafe name says so, before any name is shown
                raise UnsafeOffer(f"{display_path(names)} comes before its folder")
            path = parent + path
        kind, size = entry["kind"], entry["size"]
        if kind == "d":
            folders.setdefault(path, path)
        entries.append(
            Entry(
                path,
                is_dir=kind == "d",
                size=None if size == "null" else int(size),
                executable=kind == "x",
            )
        )
        pos = entry.end()
        close = _CLOSE.match(text, pos)
        if close is None:
            comma = _COMMA.match(text, pos)
            if comma is None:
                raise UnsafeOffer("an offer entry is malformed")
            pos = comma.end()
    if _END.fullmatch(text, close.end()) is None:
        raise UnsafeOffer("the offer is malformed")
    return tuple(entries)


def offer_length(first_chunk: bytes) -> int:
    """The encoded offer's length, read from its first record."""
    if len(first_chunk) < _LENGTH.size:
        raise UnsafeOffer("the offer is malformed (short)")
    length: int = _LENGTH.unpack_from(first_chunk)[0]
    if length > MAX_OFFER:
        raise UnsafeOffer(f"the offer is over {MAX_OFFER} bytes")
    return length + _LENGTH.size


def check_component(name: str) -> None:
    """One path component the receiver may create inside its output folder.

    Trailing dots and spaces and Windows device names (CON, NUL, ...) are ordinary names
    on the POSIX systems bob receives on: they are accepted, and shown so that an edge
    space is visible.
    """
    why = name_problem(name)
    if why is not None:
        shown = show_name(name[:60])  # cut first: a peer's name may be megabytes long
        if len(shown) > 60 or len(name) > 60:
            shown = shown[:40] + "..."
        raise UnsafeOffer(f"unsafe name '{shown}': {why}")  # quoted: '' is a name too


def name_problem(name: str) -> str | None:
    """Why the receiver would refuse this name, or None."""
    if name in ("", ".", ".."):
        return "empty, '.' or '..'"
    if "/" in name or "\\" in name or "\0" in name:
        return "contains a separator or NUL"
    if _DRIVE.match(name):
        return "looks like a drive letter"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if len(encoded) > MAX_COMPONENT:
        return f"longer than {MAX_COMPONENT} bytes"
    if not name.isprintable():  # the rare case: look closer
        for ch in name:
            if ch in _BIDI:
                return "contains a bidi control character"
            if unicodedata.category(ch) in _REFUSED_CATEGORIES:
                return "contains a control character or line break"
    return None


def check_path(path: tuple[str, ...]) -> None:
    if not path or len(path) > MAX_DEPTH:
        raise UnsafeOffer(f"unsafe path: {len(path)} levels deep")
    for part in path:
        if not isinstance(part, str):
            raise UnsafeOffer("unsafe path: not text")
    if sum(map(_checked_size, path)) + len(path) > MAX_PATH:
        raise UnsafeOffer(f"unsafe path: longer than {MAX_PATH} bytes")


@functools.lru_cache(maxsize=1 << 14)
def _checked_size(name: str) -> int:
    """A safe component's size in UTF-8 (UnsafeOffer if it is not safe). Cached: every
    path repeats its folders' names, and checking each again was 3/4 of the time a
    100,000-entry offer took to read. Refusals raise, so only safe names are kept."""
    check_component(name)
    return len(name.encode("utf-8"))


def escape(name: str) -> str:
    """A name as it is safe to show on a terminal: control, format and bidi characters escaped."""
    if name.isprintable() and "\\" not in name:  # nearly every name: no loop in Python
        return name
    out = []
    for ch in name:
        if ch.isprintable() and ch != "\\":
            out.append(ch)
        elif ch == "\\":
            out.append("\\\\")
        else:
            code = ord(ch)
            if code < 0x100:
                out.append(f"\\x{code:02x}")
            else:
                out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def show_name(name: str) -> str:
    """A name as shown: escaped, and a space at either end made visible (`a.txt\\x20`)."""
    shown = escape(name)
    if shown[:1] == " " or shown[-1:] == " ":
        stripped = shown.strip(" ")
        if not stripped:
            return "\\x20" * len(shown)
        head = len(shown) - len(shown.lstrip(" "))
        tail = len(shown) - len(shown.rstrip(" "))
        shown = "\\x20" * head + stripped + "\\x20" * tail
    return shown


def display_path(path: tuple[str, ...]) -> str:
    return "/".join(show_name(p) for p in path)
