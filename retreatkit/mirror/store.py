"""Content-addressed blobs on disk and an SQLite index of what they stand for.

A blob is written to a private temp file, fsynced, checked against every hash the
index promised, and only then renamed to `blobs/sha256/ab/<hex>`: a partial,
truncated or mismatched download is never published, so never served.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("retreatkit.mirror")

ALGOS = ("md5", "sha256", "sha512")
_HEX_LEN = {"md5": 32, "sha256": 64, "sha512": 128}
_SCHEMA = """
create table if not exists objects (
    key text primary key,       -- what a client asks for, e.g. 'pypi/simple/numpy'
    digest text not null,       -- sha256 of the blob that answers it
    size integer not null,
    content_type text not null,
    fetched real not null,      -- when upstream last confirmed it
    etag text,
    last_modified text
);
create table if not exists sources (
    name text primary key,      -- a file the mirror may fetch: 'pypi/<sha256>/<filename>'
    url text not null,          -- where upstream has it
    hashes text not null        -- JSON {algo: hex} it must match
);
"""


class IntegrityError(Exception):
    """Downloaded bytes do not match what the index promised."""


_HEX = {algo: re.compile(f"[0-9a-f]{{{n}}}") for algo, n in _HEX_LEN.items()}


def valid_hex(algo: str, value: str) -> bool:
    pattern = _HEX.get(algo)
    return pattern is not None and pattern.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Object:
    key: str
    digest: str
    size: int
    content_type: str
    fetched: float
    etag: str | None = None
    last_modified: str | None = None


class BlobWriter:
    """A blob being written: hashes on the way in, published only by commit()."""

    def __init__(self, store: Store, algos: tuple[str, ...] = ("sha256",)) -> None:
        self.store = store
        self.hashes = {a: hashlib.new(a) for a in {"sha256", *algos}}
        self.size = 0
        fd, name = tempfile.mkstemp(dir=store.tmp, suffix=".part")
        self.path = Path(name)
        self._fd: int | None = fd

    def write(self, data: bytes) -> None:
        assert self._fd is not None
        for h in self.hashes.values():
            h.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self.size += len(data)

    def check(self, expected: dict[str, str] | None = None) -> str:
        """Compare every expected hash; returns the sha256. Discards the blob on a mismatch."""
        got = {a: h.hexdigest() for a, h in self.hashes.items()}
        for algo, want in (expected or {}).items():
            if algo in got and got[algo] != want.lower():
                self.discard()
                raise IntegrityError(f"{algo} mismatch: expected {want}, got {got[algo]}")
        return got["sha256"]

    def publish(self, digest: str) -> None:
        """fsync and rename into place (blocking: the mirror calls it from a thread)."""
        assert self._fd is not None
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        target = self.store.blob_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.path.replace(target)  # same content, same name: replacing is harmless

    def commit(self, expected: dict[str, str] | None = None) -> str:
        """check() then publish(). Returns the sha256."""
        digest = self.check(expected)
        self.publish(digest)
        return digest

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.tmp = root / "tmp"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():  # a crash mid-download leaves these
            leftover.unlink()
        self.db = sqlite3.connect(root / "index.sqlite", isolation_level=None)
        self.db.execute("pragma journal_mode=wal")
        self.db.execute("pragma synchronous=normal")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- blobs ----------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        if not valid_hex("sha256", digest):
            raise ValueError("not a sha256")
        return self.blobs / digest[:2] / digest

    def has_blob(self, digest: str) -> bool:
        return valid_hex("sha256", digest) and self.blob_path(digest).is_file()

    def writer(self, algos: tuple[str, ...] = ("sha256",)) -> BlobWriter:
        return BlobWriter(self, algos)

    def put_bytes(self, data: bytes, expected: dict[str, str] | None = None) -> str:
        w = self.writer(tuple(expected or ()))
        w.write(data)
        return w.commit(expected)

    def read(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    # -- index ----------------------------------------------------------------------

    def get(self, key: str) -> Object | None:
        row = self.db.execute(
            "select key, digest, size, content_type, fetched, etag, last_modified"
            " from objects where key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        obj = Object(*row)
        return obj if self.has_blob(obj.digest) else None

    def put(self, obj: Object) -> None:
        self.db.execute(
            "insert or replace into objects values (?, ?, ?, ?, ?, ?, ?)",
            (
                obj.key,
                obj.digest,
                obj.size,
                obj.content_type,
                obj.fetched,
                obj.etag,
                obj.last_modified,
            ),
        )

    def touch(self, key: str) -> None:
        self.db.execute("update objects set fetched = ? where key = ?", (time.time(), key))

    def add_sources(self, rows: list[tuple[str, str, dict[str, str]]]) -> None:
        self.db.executemany(
            "insert or replace into sources values (?, ?, ?)",
            [(name, url, json.dumps(hashes, sort_keys=True)) for name, url, hashes in rows],
        )

    def source(self, name: str) -> tuple[str, dict[str, str]] | None:
        row = self.db.execute("select url, hashes from sources where name = ?", (name,)).fetchone()
        if row is None:
            return None
        hashes: dict[str, str] = json.loads(row[1])
        return str(row[0]), hashes

    def counts(self) -> dict[str, Any]:
        objects, size = self.db.execute(
            "select count(*), coalesce(sum(size), 0) from objects"
        ).fetchone()
        blobs = sum(1 for _ in self.blobs.glob("*/*"))
        return {"objects": objects, "object_bytes": size, "blobs": blobs}

    # -- integrity --------------------------------------------------------------------

    def verify(self) -> tuple[int, int]:
        """Re-hash every blob; drop those that do not match their name. (kept, dropped)"""
        kept = dropped = 0
        for path in self.blobs.glob("*/*"):
            digest = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            if digest.hexdigest() == path.name and path.parent.name == path.name[:2]:
                kept += 1
            else:
                log.warning("dropping corrupt blob %s", path.name)
                path.unlink()
                dropped += 1
        return kept, dropped
