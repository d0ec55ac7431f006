"""The records every ecosystem shares: what the store holds and what it may fetch."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

# store keys of indexes: what names the files, as opposed to the files themselves
_INDEX = re.compile(
    r"^(pypi/simple/|opam/index\.tar\.gz$|lists/|npm/packument/|npm/abbreviated/"
    r"|apt/[^/]+/(dists/|by-hash/))"
)


def fetchable(url: str) -> bool:
    """Whether an index's URL for a file is one the mirror can fetch: http or https, a
    host, a port that is one. An index chooses its URLs; one that does not parse would
    fail the whole page it sits in, not just its own file."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port out of range or not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def kind_of(key: str) -> str:
    """'index' or 'archive': which a full store gives up last. (Local files are pinned by
    whoever adds them, whatever their key.)"""
    return "index" if _INDEX.match(key) else "archive"


@dataclass(frozen=True, slots=True)
class Object:
    """A name a client asks for (`pypi/simple/numpy`, `pypi/<sha256>/<file>`) and the blob,
    named by its sha256, that answers it."""

    key: str
    digest: str
    size: int
    content_type: str
    fetched: float  # wall-clock time upstream last confirmed it
    etag: str | None = None  # the upstream's validators, for revalidation
    last_modified: str | None = None


@dataclass(frozen=True, slots=True)
class Source:
    """A file an index the mirror read names: where upstream keeps it and what it must hash to."""

    name: str  # the key the file is stored under once fetched
    url: str
    hashes: Mapping[str, str]  # algo -> lowercase hex; every one is checked
    ecosystem: str  # "pypi", "opam", ...
    package: str  # the project or package it belongs to, for the organiser's lists
    size: int | None = None  # as the index promised, if it did
    aliases: tuple[str, ...] = ()  # other keys the same bytes answer (opam: one per hash)
    shown: str | None = None  # its name in messages, where its URL's is a hash (apt by-hash)

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    @property
    def file(self) -> str:
        """The file's own name, as the upstream's URL has it, or as its index names it."""
        if self.shown is not None:
            return self.shown
        return unquote(PurePosixPath(urlsplit(self.url).path).name)


def agrees(promised: Mapping[str, str], known: Mapping[str, str]) -> bool | None:
    """Whether a file whose hashes are `known` (its sha256, and any others learnt) is the
    one an index promises: False if a hash both name differs; True if none differs and
    the promise names the sha256 (the name the store keeps the file by) or nothing the
    file's known hashes lack; None if the file must be hashed for what the promise names."""
    if any(known[algo] != want.lower() for algo, want in promised.items() if algo in known):
        return False
    if ("sha256" in promised and "sha256" in known) or all(a in known for a in promised):
        return True
    return None


@dataclass(frozen=True, slots=True)
class Processed:
    """An upstream index as the mirror keeps it, and the files it names."""

    body: bytes
    content_type: str
    sources: tuple[Source, ...] = ()


@dataclass(frozen=True, slots=True)
class Blob:
    """A verified file the store holds; `body` when it is small enough for memory."""

    obj: Object
    path: Path
    body: bytes | None = None
