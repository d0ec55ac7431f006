"""Before any service starts: each folder start-up writes to can be written, with room.

A full or read-only disk was met by the service that wrote to it as it started: `up`
started the relay, then the mirror could not open its store, and the relay stopped
again ("Relay listening", "Stopped: relay", the reason). An `up` whose state folder
was full ran on with a dashboard that logged nothing. Each folder is now tried first,
with a file the size of what start-up writes there, and each one that fails is one
line naming the folder and what to do, while nothing runs yet.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retreatkit.units import size

# What start-up writes in each folder, with room to spare. Measured on a tmpfs, where a
# file takes whole 4 KiB pages. The state folder: the admin token, the endpoint's note
# and its folder, a guest's console log and definition, the dashboard's first log
# lines, a page or two each
FEW_FILES = 100_000
# a new store: its catalog (4 kB), the catalog's write-ahead log (78 kB) and its
# shared-memory index (32 kB): 116 kB in all before the first file
STORE_NEEDS = 250_000
# an image as `up` rebuilds it at each start, kernel and initramfs: with our kernel the
# relay's is 6.0 MB and the mirror's 9.2 MB; Debian's kernel is ~8 MB more
IMAGE_NEEDS = 20_000_000


@dataclass(frozen=True)
class Folder:
    """A folder a service writes to as it starts."""

    path: Path
    what: str  # "the state folder", "the mirror's store"
    moved_by: str  # what names another folder: "XDG_STATE_HOME", "[mirror] store"
    needs: int  # bytes start-up writes there


def state_folder(path: Path) -> Folder:
    """The user's state folder (admin/token.py): every service writes there."""
    return Folder(path, "the state folder", "XDG_STATE_HOME", FEW_FILES)


def written_by(service: Any) -> list[Folder]:
    """The folders a service writes to as it starts beyond the state folder: an optional
    `folders_written()` method (the mirror's store, a guest's disk and image)."""
    own = getattr(service, "folders_written", None)
    return list(own()) if own is not None else []


def make_disks(service: Any) -> list[str]:
    """What a service makes before any service starts, where no fixed need says whether
    it fits (a guest's data disk): an optional `make_disks()` method, which returns what
    it could not make, one line each."""
    own = getattr(service, "make_disks", None)
    return list(own()) if own is not None else []


def problems(folders: Iterable[Folder]) -> list[str]:
    """Each folder that cannot be written now, or has no room for what start-up writes
    there, as one line; the same folder once (the need of the first that names it)."""
    out: list[str] = []
    seen: set[Path] = set()
    for folder in folders:
        if folder.path not in seen:
            seen.add(folder.path)
            if (problem := problem_of(folder)) is not None:
                out.append(problem)
    return out


def problem_of(folder: Folder) -> str | None:
    # a folder not made yet is made where its nearest existing parent is, on that disk:
    # tried there, nothing is made before the check passes (os.path.exists: a parent we
    # may not search is not there for us, where Path.exists raised PermissionError)
    paths = (folder.path, *folder.path.parents)
    where = next(p for p in paths if os.path.exists(p))  # noqa: PTH110
    exc = _try_writing(where, folder.needs)
    if exc is None:
        return None
    named = f"{folder.what} {folder.path}"
    if exc.errno == errno.EDQUOT:
        return f"{named} is over your disk quota: free some space or set {folder.moved_by}"
    if exc.errno == errno.ENOSPC:
        free = _free(where)
        room = f"{size(free)} free, " if free is not None else ""
        return (
            f"{named} is full ({room}{size(folder.needs)} needed to start): free some space"
            f" or set {folder.moved_by}"
        )
    why = exc.strerror or str(exc)
    return f"{named} cannot be written ({why}): make it writable or set {folder.moved_by}"


def _try_writing(folder: Path, needs: int) -> OSError | None:
    """Make a file of `needs` bytes in `folder` and remove it; what failed, if anything.
    Blocks allocated, not only counted: statvfs knows neither quotas nor a file system
    that reports no size (some FUSE mounts), while the write is what start-up will do."""
    probe = folder / f".retreatkit-room-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)  # fmt: skip
    except OSError as exc:
        return exc
    try:
        try:
            os.posix_fallocate(fd, 0, needs)
        finally:
            os.close(fd)  # where a network file system reports a write it could not keep
    except OSError as exc:
        return exc
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def _free(path: Path) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize
