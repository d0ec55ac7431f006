"""Content-addressed blobs: written privately, checked, then published under their sha256.

A blob is written to a private temp file, checked against every hash the index
promised, fsynced and only then renamed to `blobs/sha256/ab/<hex>`: a partial,
truncated or mismatched download is never published, so never served.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

from retreatkit.mirror.errors import BadUpstreamData, LocalError, StoreFull

ALGOS = ("md5", "sha1", "sha256", "sha512")
# sha1 only ever joins a stronger hash, or stands for npm's `shasum`, the one check the
# oldest npm packages have: npm trusts nothing more for them either
_HEX_LEN = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}
_HEX = {algo: re.compile(f"[0-9a-f]{{{n}}}") for algo, n in _HEX_LEN.items()}
_FULL = (errno.ENOSPC, errno.EDQUOT)


class IntegrityError(BadUpstreamData):
    """Downloaded bytes do not match what the index promised."""


def valid_hex(algo: str, value: str) -> bool:
    pattern = _HEX.get(algo)
    return pattern is not None and pattern.fullmatch(value) is not None


def disk_error(exc: OSError, doing: str) -> LocalError:
    """An OSError from our own disk, as the error a user can act on."""
    if exc.errno in _FULL:
        return StoreFull(f"the mirror's disk is full ({doing})")
    return LocalError(f"the mirror's disk failed {doing}: {exc.strerror or exc}")


def blob_path(root: Path, digest: str) -> Path:
    if not valid_hex("sha256", digest):
        raise ValueError("not a sha256")
    return root / digest[:2] / digest


def hash_file(path: Path) -> str:
    """sha256 of a file, read in 1 MiB pieces (blocking: call it from a thread)."""
    return hash_file_as(path, ("sha256",))["sha256"]


def hash_file_as(path: Path, algos: tuple[str, ...]) -> dict[str, str]:
    """A file's hashes by each of `algos` the store can check, read once in 1 MiB pieces
    (blocking: call it from a thread)."""
    hashes = {a: hashlib.new(a) for a in algos if a in _HEX_LEN}
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            for h in hashes.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashes.items()}


class BlobWriter:
    """A blob being written: hashes on the way in, published only by publish()."""

    def __init__(self, root: Path, tmp: Path, algos: tuple[str, ...] = ("sha256",)) -> None:
        self.root = root
        self.hashes = {a: hashlib.new(a) for a in {"sha256", *algos} if a in _HEX_LEN}
        self.size = 0
        try:
            fd, name = tempfile.mkstemp(dir=tmp, suffix=".part")
        except OSError as exc:
            raise disk_error(exc, "creating a file") from None
        self.path = Path(name)
        self._fd: int | None = fd
        self._algos = tuple(self.hashes)
        self.extent = 0  # bytes on disk, from this writing or one rewound
        # by writing (0, then one more at each rewind): where its first chunk that differs
        # from the bytes it was written over starts. A reader that had sent bytes past it
        # sent part of another file
        self.changes: list[int | None] = [None]

    def rewind(self) -> None:
        """Write from byte 0 again (a download started over), hashing afresh. The bytes
        on disk stay until written over, each compared with what replaces it, so readers
        that had sent them learn whether they still hold the file (`changed_since`)."""
        if self._fd is None:
            raise LocalError("rewind of a blob already closed")
        self.changes.append(None)
        self.extent = max(self.extent, self.size)
        self.hashes = {a: hashlib.new(a) for a in self._algos}
        self.size = 0
        try:
            os.lseek(self._fd, 0, os.SEEK_SET)
        except OSError as exc:
            raise disk_error(exc, "writing a download") from None

    def changed_since(self, writing: int) -> int | None:
        """Where the bytes on disk first stopped being those of `writing` (0 the first,
        one more at each rewind), as far as the writings since have come; None if nowhere.
        Each later writing is compared with the bytes it was written over, which the one
        before left, so a change any of them made is seen, not only the first one's."""
        return min((at for at in self.changes[writing + 1 :] if at is not None), default=None)

    def write(self, data: bytes) -> None:
        if self._fd is None:
            raise LocalError("write to a blob already closed")
        if self.size < self.extent and self.changes[-1] is None:
            try:
                before = os.pread(self._fd, min(len(data), self.extent - self.size), self.size)
            except OSError as exc:
                raise disk_error(exc, "reading a download back") from None
            if before != data[: len(before)]:
                self.changes[-1] = self.size
        for h in self.hashes.values():
            h.update(data)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            raise disk_error(exc, "writing a download") from None
        self.size += len(data)

    def check(self, expected: Mapping[str, str] | None = None) -> str:
        """Compare every expected hash; returns the sha256. Discards the blob on a mismatch."""
        got = {a: h.hexdigest() for a, h in self.hashes.items()}
        strongest_first = sorted((expected or {}).items(), key=lambda kv: -_HEX_LEN.get(kv[0], 0))
        for algo, want in strongest_first:
            if algo in got and got[algo] != want.lower():
                self.discard()
                raise IntegrityError(f"{algo} mismatch: expected {want}, got {got[algo]}")
        return got["sha256"]

    def publish(self, digest: str) -> Path:
        """fsync and rename into place (blocking: the mirror calls it from a thread)."""
        if self._fd is None:
            raise LocalError("publish of a blob already closed")
        target = blob_path(self.root, digest)
        try:
            if self.extent > self.size:  # rewound, and shorter this time
                os.ftruncate(self._fd, self.size)
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            target.parent.mkdir(parents=True, exist_ok=True)
            self.path.replace(target)  # same content, same name: replacing is harmless
        except OSError as exc:
            self.discard()
            raise disk_error(exc, "storing a download") from None
        return target

    def commit(self, expected: Mapping[str, str] | None = None) -> str:
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
