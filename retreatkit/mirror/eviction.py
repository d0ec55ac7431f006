"""The store under `--max-size`: least recently used blobs go first, archives before indexes.

nginx's cache manager drops the least recently used entries over `max_size`; apt-cacher-ng
expires only what no index names. Both ideas hold here: above the limit, blobs are removed
until the store is back under 90% of it (so a store at its limit does not evict on every
fill), cold archives first, then indexes, each least recently used first; the
organiser's own files (pinned) never. A removed blob's names go, the sources that say
where upstream keeps it stay: it is fetched again if anyone asks.

A download of known size makes its room first (`make_room`): under the limit, and on the
disk, whose free space it would otherwise be refused for while the store holds files it
may drop. Without a limit nothing is evicted: a full disk refuses, as the organiser chose.

Hits are noted in memory (`Store.accessed`) and written in one batch every
`FLUSH_EVERY` seconds, so a cache hit never waits on SQLite.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

from retreatkit.mirror.store import Store

FLUSH_EVERY = 30.0  # seconds between writes of last-access times
BATCH = 256  # candidates read at a time
TARGET = 0.9  # of the limit, once eviction starts


@dataclass
class Evicted:
    blobs: int = 0
    bytes: int = 0
    keys: list[str] = field(default_factory=list)  # names that went, for the memory caches


def forget(store: Store, digest: str) -> tuple[list[str], int]:
    """Remove a blob and every name it answers (blocking); (keys, bytes freed)."""

    def write(db: sqlite3.Connection) -> tuple[list[str], int]:
        keys = [k for (k,) in db.execute("select key from objects where digest = ?", (digest,))]
        row = db.execute("select size from blobs where digest = ?", (digest,)).fetchone()
        db.execute("delete from objects where digest = ?", (digest,))
        db.execute("delete from blobs where digest = ?", (digest,))
        db.execute("delete from blob_hashes where digest = ?", (digest,))
        return keys, int(row[0]) if row else 0

    keys, size = store.transaction(write)
    path = store.blob_path(digest)
    on_disk = 0
    with contextlib.suppress(OSError):
        on_disk = path.stat().st_size
        path.unlink()  # a client being sent it by sendfile keeps its open file
    if on_disk:
        store.check.files = max(0, store.check.files - 1)
        store.check.size_bytes = max(0, store.check.size_bytes - on_disk)
    store.verified.pop(digest, None)
    store.used = max(0, store.used - size)
    return keys, size


def coldest(store: Store, limit: int) -> list[tuple[str, int]]:
    """Evictable blobs in the order they go: archives, then indexes (a page still in use
    names what can be fetched again; a cold archive is only bytes), each least recently
    used first. Pinned blobs are never listed."""
    rows = store.db().execute(
        "select digest, size from blobs where pinned = 0"
        " order by case kind when 'archive' then 0 else 1 end, last_access limit ?",
        (limit,),
    )
    return [(str(d), int(n)) for d, n in rows]


def evict(store: Store, limit: int) -> Evicted:
    """Bring the store under its limit (blocking: the store thread)."""
    if not limit or store.used <= limit:
        return Evicted()
    store.flush_access()
    target = int(limit * TARGET)
    return _evict_until(store, lambda: store.used <= target)


def _evict_until(store: Store, enough: Callable[[], bool]) -> Evicted:
    """Forget the coldest blobs, one at a time, until `enough()` holds or only pinned
    blobs are left (the organiser's files are never dropped)."""
    done = Evicted()
    while not enough():
        batch = coldest(store, BATCH)
        if not batch:
            break
        for digest, _ in batch:
            if enough():
                break
            keys, size = forget(store, digest)
            done.blobs += 1
            done.bytes += size
            done.keys += keys
    return done


def short(store: Store, limit: int, size: int) -> bool:
    """Whether a new file of `size` bytes needs room made: over the limit, or not on the
    disk. A file larger than the limit never gets any: the store would be emptied for it."""
    if not limit or size > limit:
        return False
    space = store.space
    # against the limit, downloads under way count whole (`used` has none of their bytes
    # until published); on the disk, only what they have still to write (Space.held)
    over = store.used + space.reserved + size > limit
    return over or not space.room_for(size, store.free_bytes())


def make_room(store: Store, limit: int, size: int) -> Evicted:
    """Evict so a new file of `size` bytes fits (blocking: the store thread): the store
    down to 90% of its limit with the file counted, and until the disk has room for it."""
    if not short(store, limit, size):
        return Evicted()
    store.flush_access()
    target, space = int(limit * TARGET), store.space
    # a disk that all the store's droppable files would not free enough of (other files
    # on it, keep_free_bytes): the cache is not emptied in vain, the file is refused
    droppable = store.db().execute("select coalesce(sum(size), 0) from blobs where pinned = 0")
    disk = space.room_for(size, store.free_bytes() + int(droppable.fetchone()[0]))

    def enough() -> bool:
        under = store.used + space.reserved + size <= target
        return under and (not disk or space.room_for(size, store.free_bytes()))

    return _evict_until(store, enough)
