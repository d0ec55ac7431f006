"""Safe writes of an accepted offer under the output folder.

Every path is opened component by component relative to a folder descriptor with
O_NOFOLLOW, so neither a sender-chosen name nor a symlink swapped in mid-transfer
can lead outside the output folder. Data goes to a private `.part` file and is
linked to its final name only after its hash checked; link() refuses to replace an
existing name, so nothing is ever overwritten. A top-level name that already
exists gets a free one instead: `photo.jpg` arrives as `photo (1).jpg`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Container
from pathlib import Path

from retreatkit.transfer.errors import TransferError
from retreatkit.transfer.offer import Entry, Offer, display_path, escape

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PART_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_RENAMES = 1000
# An offer may not take the last of the disk: 5% of it stays free, at most this much.
RESERVE = 64 * 1024 * 1024
RESERVE_SHARE = 0.05


class WriteError(TransferError):
    """We could not write what was offered (disk full, name taken, no permission).

    The message names paths and sizes for our user; `public` is what the sender may be
    told: what failed, never where, nor how much room is left.
    """

    def __init__(self, message: str, public: str = "the receiver could not save the files"):
        super().__init__(message)
        self.public = public


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def free_name(root_fd: int, name: str, taken: Container[str] = ()) -> str:
    """`name`, or `name (N)` before its extension, whichever does not exist yet.

    A renamed name also avoids `taken`: the other names of the same offer, which may
    not exist yet (`a.txt` and `a (1).txt` offered together, `a.txt` already there).
    """
    stem, dot, ext = name.rpartition(".") if "." in name.strip(".") else (name, "", "")
    for n in range(_MAX_RENAMES):
        candidate = name if n == 0 else f"{stem} ({n}){dot}{ext}"
        if len(candidate.encode()) > 255:
            break
        if n and candidate in taken:
            continue
        try:
            os.lstat(candidate, dir_fd=root_fd)
        except FileNotFoundError:
            return candidate
    raise WriteError(
        f"no free name for {escape(name)} in the output folder",
        "the receiver has no free name for a file",
    )


class Writer:
    """Writes one offer's folders and files; `abort()` leaves no partial file behind."""

    def __init__(self, output: Path, offer: Offer, umask: int | None = None) -> None:
        self.offer = offer
        self._umask = current_umask() if umask is None else umask
        try:
            self._root = os.open(output, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise WriteError(
                f"cannot open output folder {output}: {exc.strerror}",
                "the receiver cannot write into its folder",
            ) from None
        self._files = offer.files
        self._index = 0
        self._fd: int | None = None
        self._part: str | None = None
        self._parent: int | None = None
        self.top_names: dict[str, str] = {}
        taken = set(offer.top_level)
        for top in offer.top_level:
            self.top_names[top] = name = free_name(self._root, top, taken)
            taken.add(name)
        self.written: list[str] = []

    def final_path(self, entry: Entry) -> tuple[str, ...]:
        return (self.top_names[entry.path[0]], *entry.path[1:])

    def room(self) -> int:
        """Bytes this offer may take: the free space, less what always stays free."""
        st = os.statvfs(self._root)
        reserve = min(RESERVE, int(st.f_blocks * st.f_frsize * RESERVE_SHARE))
        return max(0, st.f_bavail * st.f_frsize - reserve)

    def check_space(self) -> int | None:
        """Refuse an offer whose sizes do not fit; returns the most a stream of unknown
        length may bring (None if there is no such stream)."""
        room = self.room()
        known = sum(e.size for e in self._files if e.size is not None)
        if known > room:
            raise WriteError(
                f"not enough space: {known} bytes offered, {room} free in the output folder",
                "the receiver has not enough free space",
            )
        if self.offer.total_size is None:
            return room - known
        return None

    def make_folders(self) -> None:
        for entry in self.offer.entries:
            if entry.is_dir:
                path = self.final_path(entry)
                parent = self._open_parent(path)
                try:
                    os.mkdir(path[-1], 0o777, dir_fd=parent)
                except OSError as exc:
                    raise self._error("cannot create folder", path, exc) from None
                finally:
                    os.close(parent)

    def write(self, data: bytes) -> None:
        if self._fd is None:
            self._open_part()
        assert self._fd is not None
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except OSError as exc:
                raise self._error("cannot write", self._current_path(), exc) from None
            view = view[written:]

    def finish_file(self) -> str:
        """The current file checked out: give it its final name. Returns that name."""
        if self._fd is None:
            self._open_part()
        assert self._fd is not None and self._parent is not None and self._part is not None
        entry = self._files[self._index]
        path = self.final_path(entry)
        mode = (0o777 if entry.executable else 0o666) & ~self._umask & 0o777
        try:
            os.fchmod(self._fd, mode)  # never setuid, setgid or sticky
            os.close(self._fd)
            self._fd = None
            # link() fails with EEXIST where rename() would silently replace
            os.link(self._part, path[-1], src_dir_fd=self._parent, dst_dir_fd=self._parent)
        except OSError as exc:
            self.abort()
            raise self._error("cannot save", path, exc) from None
        os.unlink(self._part, dir_fd=self._parent)
        os.close(self._parent)
        self._part = self._parent = None
        self._index += 1
        shown = display_path(path)
        self.written.append(shown)
        return shown

    def abort(self) -> None:
        """Remove the partial file, if any; finished files stay, they were verified."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._part is not None and self._parent is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._part, dir_fd=self._parent)
        if self._parent is not None:
            os.close(self._parent)
        self._part = self._parent = None

    def close(self) -> None:
        self.abort()
        os.close(self._root)

    # -- internals ----------------------------------------------------------------

    def _current_path(self) -> tuple[str, ...]:
        return self.final_path(self._files[self._index])

    def _open_part(self) -> None:
        if self._index >= len(self._files):
            raise WriteError("data beyond the last offered file")
        path = self._current_path()
        self._parent = self._open_parent(path)
        self._part = f".bob-{self._index}-{secrets.token_hex(4)}.part"
        try:
            self._fd = os.open(self._part, _PART_FLAGS, 0o600, dir_fd=self._parent)
        except OSError as exc:
            self.abort()
            raise self._error("cannot create", path, exc) from None

    def _open_parent(self, path: tuple[str, ...]) -> int:
        fd = os.dup(self._root)
        try:
            for part in path[:-1]:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nxt
        except OSError as exc:
            os.close(fd)
            raise self._error("cannot enter folder of", path, exc) from None
        return fd

    def _error(self, what: str, path: tuple[str, ...], exc: OSError) -> WriteError:
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # O_NOFOLLOW | O_DIRECTORY: either
            reason = "a symlink or file stands in the way"
        if exc.errno == errno.EEXIST:
            reason = "it already exists"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            public = "the receiver's disk is full"
        else:
            thing = "a folder" if "folder" in what else "a file"
            public = f"the receiver could not save {thing}: {reason}"
        return WriteError(f"{what} {display_path(path)}: {reason}", public)
