"""What one receive made in its output folder, by device and inode, so that a stop on
purpose removes exactly that: never a name that was there before, nor one put there
meanwhile, nor anything through a symlink."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from retreatkit.transfer.errors import TransferError

Path = tuple[str, ...]  # components below the output folder


class Made:
    """The files a receive named and the folders it created, oldest first."""

    def __init__(self) -> None:
        self._items: list[tuple[Path, tuple[int, int, int], bool]] = []

    def add(self, path: Path, st: os.stat_result, folder: bool = False) -> None:
        self._items.append((path, _identity(st, folder), folder))

    def forget(self) -> None:
        """The receive completed: all of it is the user's now."""
        self._items = []

    def undo(self, open_parent: Callable[[Path], int]) -> None:
        """Remove them newest first (files, then folders deepest first). `open_parent`
        opens a path's folder one component at a time with O_NOFOLLOW; a name whose
        device and inode changed is not ours any more and stays, and so does a folder
        someone put a file in (rmdir fails)."""
        items, self._items = self._items, []
        for path, identity, folder in reversed(items):
            with contextlib.suppress(OSError, TransferError):
                parent = open_parent(path)
                try:
                    if _identity(os.lstat(path[-1], dir_fd=parent), folder) != identity:
                        continue
                    if folder:
                        os.rmdir(path[-1], dir_fd=parent)
                    else:
                        os.unlink(path[-1], dir_fd=parent)
                finally:
                    os.close(parent)


def _identity(st: os.stat_result, folder: bool) -> tuple[int, int, int]:
    """Device and inode; for a file its change time too, since a name removed and made
    again may get the freed inode number. (A folder's changes with every name made in
    it; an rmdir that is wrong costs nothing, as it only removes an empty folder.)"""
    return st.st_dev, st.st_ino, 0 if folder else st.st_ctime_ns
