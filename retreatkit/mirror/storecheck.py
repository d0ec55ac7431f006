"""The store's re-hash after a start: every blob checked in the background, rot dropped.

A store pre-warmed for an event can hold 100 GB: the mirror listens at once and checks
meanwhile; a blob asked for before the check reached it is verified on first serve
(`Store.verify`), so rot is never served either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from retreatkit.mirror.blobs import valid_hex

if TYPE_CHECKING:
    from retreatkit.mirror.store import Store


@dataclass
class Check:
    """The background re-hash of the store after a start."""

    state: str = "pending"  # pending, running, done (or stopped, by a shutdown)
    files: int = 0  # blobs on disk
    size_bytes: int = 0
    checked: int = 0
    dropped: int = 0  # corrupt blobs removed, by this check or on a first serve


def check_all(store: Store, pace: Callable[[], None] = lambda: None) -> Check:
    """Re-hash every blob not yet verified, dropping those that fail (blocking)."""
    check = store.check
    paths: list[Path] = []
    for path in store.blobs.glob("*/*"):
        with contextlib.suppress(OSError):
            size = path.stat().st_size
            if path.name not in store.verified:
                check.files += 1
                check.size_bytes += size
                paths.append(path)
    check.state = "running"
    for path in paths:
        pace()
        if store.halt.is_set():
            check.state = "stopped"
            return check
        if path.parent.name != path.name[:2] or not valid_hex("sha256", path.name):
            store.drop(path)
        else:
            store.verify(path.name)
        check.checked += 1
    check.state = "done"
    return check
