"""The store: blobs named by their sha256, an SQLite catalog of what they answer, their health.

One process owns a store at a time (a lock file): two mirrors writing one catalog would
each believe their own memory of it.

Lookups run on the event loop (point reads by primary key, microseconds); every write
runs on the one store thread (`run`), each thread over its own connection: SQLite's WAL
lets the loop read while the store thread writes. A blob is served only once it is
verified: written and checked by this process, or re-hashed since it started (in the
background, or on first serve if a client asks before the background check got to it).
Each verified blob's stamp (inode, size, mtime) is kept: a hit compares it with a stat
of the file it serves, so a blob changed on disk while the mirror runs is re-hashed
before it is served again, and dropped if it rotted, without hashing every hit.

A name that is not a hash (an apt pool file, an npm tarball) may come to be promised
other bytes by a newer index: the hashes a blob was checked against are kept with it,
so a hit can tell whether the blob held is still the file its index names
(`sources_changed` counts the indexes that changed a promise, for what memory holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from retreatkit.mirror.blobs import BlobWriter, blob_path, hash_file_as, valid_hex
from retreatkit.mirror.errors import LocalError, StoreFull
from retreatkit.mirror.records import Object, Source, kind_of
from retreatkit.mirror.space import Space
from retreatkit.mirror.storecheck import Check

__all__ = ["Check", "Store", "valid_hex"]

log = logging.getLogger("retreatkit.mirror")
T = TypeVar("T")
_SQLITE_FULL = 13
Stamp = tuple[int, int, int]  # inode, size, mtime_ns of a blob when it was last verified
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
create table if not exists blobs (
    digest text primary key,    -- sha256 of a blob on disk
    size integer not null,
    kind text not null,         -- 'index', 'archive' or 'local' (what goes first when full)
    pinned integer not null default 0,  -- never evicted: the organiser's own files
    last_access real not null,  -- written in batches, never on the hit path
    created real not null
);
create index if not exists blobs_evict on blobs(pinned, kind, last_access);
create table if not exists blob_hashes (
    digest text primary key,    -- a blob's sha256
    hashes text not null        -- JSON {algo: hex}: its other hashes, as checked
);
"""
_SOURCE_COLUMNS = {
    "ecosystem": "text", "package": "text", "size": "integer", "aliases": "text", "shown": "text",
}  # fmt: skip


def stamp(st: os.stat_result) -> Stamp:
    """What a change to a blob's file alters: an edit its mtime (and perhaps size), a
    replacement its inode."""
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class StoreInUse(LocalError):
    """Another process holds this store."""


class StoreUnusable(LocalError):
    """The store's folder cannot be made or written: a read-only or full disk, a path
    that is no folder."""


def unusable(root: Path, exc: OSError | sqlite3.Error) -> StoreUnusable:
    if isinstance(exc, OSError):
        why, full = exc.strerror or str(exc), exc.errno in (errno.ENOSPC, errno.EDQUOT)
    else:  # a full disk can read as SQLite's "disk I/O error" (making its WAL files)
        why, full = str(exc), exc.sqlite_errorname == "SQLITE_FULL" or _free(root) == 0
    if full:
        return StoreUnusable(
            f"cannot use the store {root}: its disk is full ({why}); free space there or"
            " name another folder"
        )
    return StoreUnusable(f"cannot use the store {root}: {why}; name another folder")


def _free(path: Path) -> int | None:
    """Bytes free to us on the disk holding `path` (or its nearest existing folder)."""
    for folder in (path, *path.parents):
        try:
            st = os.statvfs(folder)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return None


def lock(root: Path) -> int:
    """Take the store's lock file (released when the descriptor closes, a crash included)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreInUse(
            f"the store {root} is in use by another retreatkit process; stop it first"
            " (or send files to the running mirror)"
        ) from None
    return fd


class Store:
    def __init__(self, root: Path, keep_free: int = 0) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.tmp = root / "tmp"
        self.space = Space(keep_free)
        self.check = Check()
        self.verified: dict[str, Stamp] = {}  # digest -> its file's stamp when checked
        self.accessed: dict[str, float] = {}  # digest -> last hit, until the next flush
        # bumped when an index promises a name other hashes than before: what was checked
        # against the old promise (files kept in memory) is checked again
        self.sources_changed = 0
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mirror-store")
        self.halt = threading.Event()  # ends a check under way: the process is stopping
        try:
            self._lock = lock(root)
        except OSError as exc:
            raise unusable(root, exc) from None
        try:
            self._open()
        except (OSError, sqlite3.Error) as exc:  # read-only, full: one line, not a traceback
            self.close()
            raise unusable(root, exc) from None

    def _open(self) -> None:
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():  # a crash mid-download leaves these
            leftover.unlink()
        db = self.db()
        db.executescript(_SCHEMA)
        have = {row[1] for row in db.execute("pragma table_info(sources)")}
        for column, kind in _SOURCE_COLUMNS.items():  # stores made before these existed
            if column not in have:
                db.execute(f"alter table sources add column {column} {kind}")
        if db.execute("select count(*) from blobs").fetchone()[0] == 0:
            # a store made before blobs were accounted: each as last used when fetched
            rows = db.execute("select key, digest, size, fetched from objects").fetchall()
            self._write(
                "insert or ignore into blobs values (?, ?, ?, 0, ?, ?)",
                [(d, n, kind_of(k), t, t) for k, d, n, t in rows],
            )
        self.used: int = db.execute("select coalesce(sum(size), 0) from blobs").fetchone()[0]

    def db(self) -> sqlite3.Connection:
        """This thread's connection: the loop reads over one, the store thread writes over
        another, so the loop never waits on a write."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.root / "index.sqlite", isolation_level=None, check_same_thread=False
            )
            conn.execute("pragma journal_mode=wal")
            conn.execute("pragma synchronous=normal")
            conn.execute("pragma busy_timeout=5000")
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    async def run(self, fn: Callable[[], T]) -> T:
        """Run a write (or anything slow on the catalog) on the store thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def close(self) -> None:
        self.halt.set()
        self._pool.shutdown(wait=True)
        with contextlib.suppress(LocalError, sqlite3.Error):
            self.flush_access()
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1

    # -- blobs ----------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return blob_path(self.blobs, digest)

    def has_blob(self, digest: str) -> bool:
        return valid_hex("sha256", digest) and self.blob_path(digest).is_file()

    def writer(self, algos: tuple[str, ...] = ("sha256",)) -> BlobWriter:
        return BlobWriter(self.blobs, self.tmp, algos)

    def put_bytes(self, data: bytes, expected: Mapping[str, str] | None = None) -> str:
        w = self.writer(tuple(expected or ()))
        try:
            w.write(data)
            digest = w.commit(expected)
        except BaseException:
            w.discard()
            raise
        self.published(digest, len(data))
        return digest

    def read(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    def published(self, digest: str, size: int) -> None:
        """A blob this process wrote and checked: verified, and counted once."""
        if digest not in self.verified:
            self.check.files += 1
            self.check.size_bytes += size
        try:  # stamped again each time: a second publish renamed a new file into place
            self.verified[digest] = stamp(self.blob_path(digest).stat())
        except OSError:
            self.verified.pop(digest, None)

    def free_bytes(self) -> int:
        try:
            st = os.statvfs(self.root)
        except OSError:
            return 0
        return st.f_bavail * st.f_frsize

    def outgrown(self) -> None:
        """A write found the disk full: it stays full until there is more room than now,
        with a margin for the filesystem's own blocks."""
        self.space.outgrew(self.free_bytes() + (1 << 20))

    def verify(self, digest: str) -> bool:
        """Re-hash one blob (blocking); a blob that fails is removed. True if it is good."""
        if digest in self.verified:
            return True
        return self._rehash(digest, "")

    def intact(self, digest: str, st: os.stat_result) -> bool:
        """Whether a verified blob's file is as it was when checked (a stat, no hashing)."""
        return self.verified.get(digest) == stamp(st)

    def recheck(self, digest: str) -> bool:
        """Re-hash a blob whose file changed since it was checked (blocking): restamped if
        good, dropped if not. True if it is good."""
        return self._rehash(digest, " (changed on disk while the mirror ran)")

    def read_checked(self, digest: str) -> bytes | None:
        """A small blob's bytes, re-hashed only if its file changed since it was checked
        (blocking); None if it is gone or rotted (then dropped)."""
        path = self.blob_path(digest)
        try:
            with path.open("rb") as f:
                st = os.fstat(f.fileno())
                body = f.read()
        except FileNotFoundError:
            return None
        if self.intact(digest, st):
            return body
        if hashlib.sha256(body).hexdigest() == digest:
            self.verified[digest] = stamp(st)
            return body
        self.drop(path, " (changed on disk while the mirror ran)")
        return None

    def _rehash(self, digest: str, why: str) -> bool:
        return self.hash_blob(digest, (), why) is not None

    def drop(self, path: Path, why: str = "") -> None:
        log.warning("dropping corrupt blob %s%s", path.name, why)
        self.verified.pop(path.name, None)
        size = 0
        with contextlib.suppress(OSError):
            size = path.stat().st_size
            path.unlink()
        self.check.dropped += 1
        self.check.files = max(0, self.check.files - 1)
        self.check.size_bytes = max(0, self.check.size_bytes - size)

    # -- the catalog: lookups (any thread) ----------------------------------------------

    def get(self, key: str) -> Object | None:
        row = (
            self.db()
            .execute(
                "select key, digest, size, content_type, fetched, etag, last_modified"
                " from objects where key = ?",
                (key,),
            )
            .fetchone()
        )
        if row is None:
            return None
        obj = Object(*row)
        return obj if self.has_blob(obj.digest) else None

    def hashes_of(self, digest: str) -> dict[str, str]:
        """A blob's hashes as far as they are known: its sha256, and those it was checked
        against or hashed for since."""
        row = self.db().execute("select hashes from blob_hashes where digest = ?", (digest,))
        found = row.fetchone()
        return {**(json.loads(found[0]) if found else {}), "sha256": digest}

    def hash_blob(
        self, digest: str, algos: tuple[str, ...], why: str = ""
    ) -> dict[str, str] | None:
        """A blob's hashes by `algos`, read from its file (blocking); None if it is gone,
        unreadable, or rotted (then dropped, the log saying `why`)."""
        path = self.blob_path(digest)
        try:
            before = path.stat()
            found = hash_file_as(path, ("sha256", *algos))
        except FileNotFoundError:
            self.verified.pop(digest, None)
            return None
        except OSError as exc:
            log.warning("cannot read blob %s: %s", digest, exc.strerror)
            return None
        if found["sha256"] != digest:
            self.drop(path, why)
            return None
        self.verified[digest] = stamp(before)
        return found

    def source(self, name: str) -> Source | None:
        row = (
            self.db()
            .execute(
                "select url, hashes, ecosystem, package, size, aliases, shown from sources"
                " where name = ?",
                (name,),
            )
            .fetchone()
        )
        if row is None:
            return None
        url, hashes, ecosystem, package, size, aliases, shown = row
        also = tuple(json.loads(aliases)) if aliases else ()
        return Source(
            name, url, json.loads(hashes), ecosystem or "", package or "", size, also, shown
        )

    def names(self, prefix: str) -> list[str]:
        """Keys under a prefix, without it, in order."""
        return [key.removeprefix(prefix) for key, _, _ in self.catalog(prefix)]

    def catalog(self, prefix: str) -> list[tuple[str, str, int]]:
        """(key, digest, size) of every object under a prefix, in key order."""
        rows = self.db().execute(
            "select key, digest, size from objects where key >= ? and key < ? order by key",
            (prefix, prefix + "\U0010ffff"),
        )
        return [(str(k), str(d), int(n)) for k, d, n in rows]

    def held(self, keys: Iterable[str]) -> dict[str, int]:
        """Of these keys, those the store holds a blob for, with their sizes."""
        wanted = list(keys)
        found: dict[str, int] = {}
        db = self.db()
        for i in range(0, len(wanted), 500):
            part = wanted[i : i + 500]
            marks = ",".join("?" * len(part))
            for key, digest, size in db.execute(
                f"select key, digest, size from objects where key in ({marks})",  # noqa: S608
                part,
            ):
                if self.has_blob(digest):
                    found[key] = size
        return found

    # -- the catalog: writes (the store thread) ---------------------------------------

    def put(
        self,
        *objs: Object,
        kind: str | None = None,
        pinned: bool = False,
        hashes: Mapping[str, str] | None = None,
    ) -> None:
        """Names for blobs on disk, and the blobs' accounting (new ones count as just used);
        `hashes`: what their blob (one) was checked against, kept with it."""
        now = time.time()
        blobs = {o.digest: (o.digest, o.size, kind or kind_of(o.key), int(pinned), now, now)
                 for o in objs}  # fmt: skip

        def write(db: sqlite3.Connection) -> int:
            db.executemany(
                "insert or replace into objects values (?, ?, ?, ?, ?, ?, ?)",
                [(o.key, o.digest, o.size, o.content_type, o.fetched, o.etag, o.last_modified)
                 for o in objs],
            )  # fmt: skip
            added = 0
            for row in blobs.values():
                cursor = db.execute("insert or ignore into blobs values (?, ?, ?, ?, ?, ?)", row)
                added += row[1] if cursor.rowcount == 1 else 0
                if pinned:
                    db.execute(
                        "update blobs set pinned = 1, kind = ? where digest = ?", (row[2], row[0])
                    )
            for digest in blobs if hashes else ():
                _note_hashes(db, digest, hashes or {})
            return added

        self.used += self.transaction(write)

    def flush_access(self) -> None:
        """Write the hits noted since the last flush, in one transaction (the store thread)."""
        if not self.accessed:
            return
        batch, self.accessed = self.accessed, {}
        self._write(
            "update blobs set last_access = max(last_access, ?) where digest = ?",
            [(when, digest) for digest, when in batch.items()],
        )

    def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A write, whole or not at all. It takes the write lock as it begins (waiting
        for another writer, as long as busy_timeout): one that read first and wrote
        after another thread's commit would fail at once (`database is locked`)."""
        db = self.db()
        try:
            db.execute("begin immediate")
            result = fn(db)
            db.execute("commit")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("rollback")
            raise self._catalog_error(exc) from None
        return result

    def touch(self, key: str, when: float) -> None:
        self._write("update objects set fetched = ? where key = ?", [(when, key)])

    def note_hashes(self, digest: str, hashes: Mapping[str, str]) -> None:
        """Hashes a blob was found to have (the store thread)."""
        self.transaction(lambda db: _note_hashes(db, digest, hashes))

    def add_sources(self, sources: Iterable[Source]) -> None:
        """Where upstream keeps files and what they must hash to, as an index just read
        says; one that promises a name other hashes than before bumps `sources_changed`."""
        rows = [
            (s.name, s.url, json.dumps(dict(s.hashes), sort_keys=True), s.ecosystem,
             s.package, s.size, json.dumps(s.aliases) if s.aliases else None, s.shown)
            for s in sources
        ]  # fmt: skip

        def write(db: sqlite3.Connection) -> bool:
            changed = _promises_changed(db, {row[0]: row[2] for row in rows})
            db.executemany(
                "insert or replace into sources"
                " (name, url, hashes, ecosystem, package, size, aliases, shown)"
                " values (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            return changed

        if self.transaction(write):
            self.sources_changed += 1

    def save(
        self,
        key: str,
        data: bytes,
        content_type: str,
        sources: Iterable[Source] = (),
        etag: str | None = None,
        modified: str | None = None,
    ) -> Object:
        """An index page, its blob and the files it names, in one go (blocking)."""
        self.add_sources(sources)
        try:
            digest = self.put_bytes(data)
        except StoreFull:
            self.outgrown()
            raise
        obj = Object(key, digest, len(data), content_type, time.time(), etag, modified)
        self.put(obj)
        return obj

    def _write(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        self.transaction(lambda db: db.executemany(sql, rows))

    def _catalog_error(self, exc: sqlite3.Error) -> LocalError:
        if getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL:
            self.outgrown()
            return StoreFull("the mirror's disk is full (its catalog cannot grow)")
        return LocalError(f"the mirror's catalog failed: {exc}")


def _note_hashes(db: sqlite3.Connection, digest: str, hashes: Mapping[str, str]) -> None:
    """Add to the hashes known of a blob (its sha256 is its name: not kept twice)."""
    row = db.execute("select hashes from blob_hashes where digest = ?", (digest,)).fetchone()
    known: dict[str, str] = json.loads(row[0]) if row else {}
    more = {a: h.lower() for a, h in hashes.items() if a != "sha256" and valid_hex(a, h.lower())}
    if not more.items() - known.items():
        return
    known.update(more)
    db.execute(
        "insert or replace into blob_hashes values (?, ?)",
        (digest, json.dumps(known, sort_keys=True)),
    )


def _promises_changed(db: sqlite3.Connection, promises: Mapping[str, str]) -> bool:
    """Whether any of these names (name -> hashes as JSON) was promised other hashes."""
    names = list(promises)
    for i in range(0, len(names), 500):
        part = names[i : i + 500]
        marks = ",".join("?" * len(part))
        for name, hashes in db.execute(
            f"select name, hashes from sources where name in ({marks})",  # noqa: S608
            part,
        ):
            if hashes != promises[name] and json.loads(hashes) != json.loads(promises[name]):
                return True
    return False
