"""What an interrupted receive leaves for the next run of the same offer into the same
folder: a record of where its top-level names went, and `.part` files named after the
offer, so a second `bob recv` can claim what it holds (resume.py says how it is checked).

The record is `.bob-<offer key>.resume` in the output folder: JSON, private (0600), ours
(our uid, one link, no symlink followed) and locked (flock) while a receive uses it, so
two receivers of one offer into one folder never share a `.part`. Anything about it that
does not check out, and it is ignored: the receive starts over under fresh names.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from retreatkit.transfer.errors import UnsafeOffer
from retreatkit.transfer.offer import Offer, check_component

_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_RECORD = 16 * 1024 * 1024  # the record lists each top-level name once


def offer_key(offer: Offer) -> str:
    """The same offer (names, kinds, sizes, order) always has the same key."""
    return hashlib.sha256(offer.encode()).hexdigest()[:32]


def owned_file(st: os.stat_result) -> bool:
    """A regular file of ours with no other name: safe to append to or truncate."""
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1


@dataclass
class Record:
    """The open, locked resume record of one offer in one output folder."""

    root: int
    key: str
    fd: int | None = None  # open and locked: ours for this receive
    tops: dict[str, str] = field(default_factory=dict)  # offered name -> name on disk
    folders: dict[str, tuple[int, int]] = field(default_factory=dict)  # (dev, ino) we made

    @property
    def name(self) -> str:
        return f".bob-{self.key}.resume"

    @property
    def tag(self) -> str:
        """What `.part` names carry: the offer's key while we hold its record, else a
        random tag (another receive holds it: nothing of ours may collide with its parts)."""
        return self.key[:16] if self.fd is not None else self._random

    _random: str = field(default_factory=lambda: secrets.token_hex(8))

    @classmethod
    def open(cls, root: int, offer: Offer) -> Record:
        """The record as an earlier receive left it, locked; empty if there is none."""
        record = cls(root, offer_key(offer))
        try:
            fd = os.open(record.name, _FLAGS, dir_fd=root)
        except OSError:  # none, or a symlink planted in its place
            return record
        if not record._lock(fd):
            return record
        try:
            st = os.fstat(fd)
            if not owned_file(st) or st.st_size > MAX_RECORD:
                raise ValueError("not ours")
            doc = json.loads(os.pread(fd, MAX_RECORD, 0) or b"{}")
            record._load(doc, offer)
        except (ValueError, TypeError, KeyError, OSError, UnsafeOffer):
            record.tops, record.folders = {}, {}
        return record

    def _lock(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another receive of this offer is writing here now
            os.close(fd)
            return False
        self.fd = fd
        return True

    def _load(self, doc: Any, offer: Offer) -> None:
        tops = {str(k): str(v) for k, v in doc["tops"]}
        if set(tops) != set(offer.top_level):
            raise ValueError("another offer")
        folders = {str(k): (int(v[0]), int(v[1])) for k, v in doc["folders"]}
        for name in tops.values():
            check_component(name)
        for name, identity in folders.items():
            st = os.lstat(name, dir_fd=self.root)
            if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) != identity:
                raise ValueError("a folder changed")
        self.tops, self.folders = tops, folders

    def save(self, tops: dict[str, str], folders: list[str]) -> None:
        """Write down where this receive puts things (once it is accepted)."""
        if self.fd is None:
            try:
                fd = os.open(self.name, _FLAGS | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=self.root)
            except OSError:
                return  # another receive made one meanwhile: this one keeps random parts
            if not self._lock(fd):
                return
        assert self.fd is not None
        identity = {}
        for name in folders:
            with contextlib.suppress(OSError):
                st = os.lstat(name, dir_fd=self.root)
                identity[name] = [st.st_dev, st.st_ino]
        doc = {"v": 1, "tops": list(tops.items()), "folders": list(identity.items())}
        _overwrite(self.fd, json.dumps(doc).encode())
        self.tops = dict(tops)

    def remove(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.name, dir_fd=self.root)
            self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # the lock goes with it
            self.fd = None


def _overwrite(fd: int, data: bytes) -> None:
    """`data` as the whole file, which is one JSON document at every step: it grows first,
    by spaces after the old record (JSON allows them), so a full disk (OSError, which the
    caller says) leaves the old one whole; then the new one goes over it, padded with
    spaces, and the spaces are cut off (a process killed first leaves them, harmless).
    Written straight over, a longer record the disk took up to the end of a page was a
    piece of JSON, and a shorter one killed before the cut ran on into the old one's end:
    no resume could read either."""
    old = os.fstat(fd).st_size
    if len(data) > old:
        _pwrite(fd, b" " * (len(data) - old), old)
    _pwrite(fd, data.ljust(old), 0)
    os.ftruncate(fd, len(data))


def _pwrite(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if not written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view, offset = view[written:], offset + written


def part_name(tag: str, index: int) -> str:
    return f".bob-{tag}-{index}.part"


def open_part(parent: int, name: str, offset: int | None) -> int:
    """The `.part` to write: a fresh one (offset None), or ours cut back to `offset`."""
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    if offset is not None:
        fd = os.open(name, flags, dir_fd=parent)
        try:
            if not owned_file(os.fstat(fd)):
                raise OSError(errno.EPERM, "not a partial file of ours")
            os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
        except OSError:
            os.close(fd)
            raise
        return fd
    try:
        return os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=parent)
    except FileExistsError:  # a part of ours an earlier run did not claim: start it over
        os.unlink(name, dir_fd=parent)
        return os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=parent)


def held(parent: int, name: str, size: int) -> int:
    """How much of a file a `.part` of ours holds (0 if none, or not ours)."""
    try:
        st = os.lstat(name, dir_fd=parent)
    except OSError:
        return 0
    return min(st.st_size, size) if owned_file(st) else 0


def read_file(parent: int, name: str, length: int, block: int = 1 << 20) -> Iterator[bytes]:
    """The first `length` bytes of a file, never through a symlink; OSError if shorter."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        left = length
        while left:
            chunk = os.read(fd, min(block, left))
            if not chunk:
                raise OSError(errno.EIO, f"{name} is shorter than it was")
            left -= len(chunk)
            yield chunk
    finally:
        os.close(fd)
