"""A store moved between machines: a self-verifying bundle, re-hashed as it is taken in.

A bundle is a folder (a USB stick, or `bob send` of the folder):

    retreatkit-bundle.json   {"format": ..., "version": 1, "blobs": N, "bytes": B}, last
    catalog.jsonl            one JSON line per catalog row: {"object": [...]},
                             {"source": [...]}, {"blob": [...]}, written first
    blobs/sha256/ab/<hex>    every blob, named by its sha256, as in a store

Every blob is hashed on the way out (a blob that rotted in the store stays behind) and
again on the way in, through the same writer downloads use: a blob whose bytes do not
match its name is skipped and reported by the names it answers, and everything else is
taken. A blob's catalog rows come in only with it; the sources (where upstream keeps
each file) all come in, so a skipped file is fetched again once the uplink allows.
Blobs already in the DEST folder with the right size are not copied again, so an export
cut short resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from retreatkit.mirror.blobs import BlobWriter, IntegrityError, blob_path, valid_hex
from retreatkit.mirror.errors import LocalError
from retreatkit.mirror.records import kind_of
from retreatkit.mirror.store import Store

FORMAT = "retreatkit-mirror-bundle"
VERSION = 1
HEADER = "retreatkit-bundle.json"
CATALOG = "catalog.jsonl"
CHUNK = 1 << 20
Progress = Callable[[int], None]  # bytes done since the last call


class BundleError(LocalError):
    """A bundle that cannot be read or written at all (not a bundle, no room, ...)."""


@dataclass
class Report:
    blobs: int = 0  # copied or taken in
    bytes: int = 0
    already: int = 0  # there before
    damaged: list[str] = field(default_factory=list)  # one line each, by name


@dataclass
class _Catalog:
    objects: list[list[object]] = field(default_factory=list)
    sources: list[list[object]] = field(default_factory=list)
    blobs: dict[str, list[object]] = field(default_factory=dict)  # digest -> its blobs row
    names: dict[str, list[str]] = field(default_factory=dict)  # digest -> keys it answers

    def sizes(self) -> dict[str, int]:
        """digest -> size, of every blob an object names."""
        return {str(o[1]): int(str(o[2])) for o in self.objects}

    def name(self, digest: str) -> str:
        keys = sorted(self.names.get(digest, []))
        more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
        return (keys[0] if keys else f"blob {digest}") + more


def _read_store(root: Path) -> _Catalog:
    """The catalog of a store, read without taking its lock: a serving mirror may be
    exporting itself (it only adds files meanwhile, and those wait for the next export)."""
    db_path = root / "index.sqlite"
    if not db_path.is_file():
        raise BundleError(f"{root} is not a mirror store (no index.sqlite)")
    db = sqlite3.connect(db_path)
    try:
        cat = _Catalog()
        cat.objects = [list(r) for r in db.execute("select * from objects order by key")]
        cat.sources = [
            list(r)
            for r in db.execute(
                "select name, url, hashes, ecosystem, package, size, aliases from sources"
            )
        ]
        cat.blobs = {str(r[0]): list(r) for r in db.execute("select * from blobs")}
    finally:
        db.close()
    for obj in cat.objects:
        cat.names.setdefault(str(obj[1]), []).append(str(obj[0]))
    return cat


def _copy(src: Path, dest: Path, digest: str, progress: Progress) -> int:
    """Copy and hash; the copy is renamed into place only if the bytes match their name."""
    tmp = dest.with_suffix(".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    h, size = hashlib.sha256(), 0
    with src.open("rb") as r, tmp.open("wb") as w:
        while chunk := r.read(CHUNK):
            h.update(chunk)
            w.write(chunk)
            size += len(chunk)
            progress(len(chunk))
        w.flush()
        os.fsync(w.fileno())
    if h.hexdigest() != digest:
        tmp.unlink()
        raise IntegrityError(f"sha256 mismatch: expected {digest}, got {h.hexdigest()}")
    tmp.replace(dest)
    return size


def plan_export(store_root: Path) -> tuple[int, int]:
    """(blobs, bytes) an export of this store would write, for a progress bar."""
    sizes = _read_store(store_root).sizes()
    return len(sizes), sum(sizes.values())


def export(store_root: Path, dest: Path, progress: Progress = lambda n: None) -> Report:
    """Write a bundle of the store at `store_root` into `dest` (new or empty, or an
    earlier export of it being resumed)."""
    if dest.exists() and any(dest.iterdir()) and not (dest / CATALOG).exists():
        raise BundleError(f"{dest} is not empty: give a new or empty folder")
    cat = _read_store(store_root)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / HEADER).unlink(missing_ok=True)  # not complete until written again, last
    sizes = cat.sizes()
    report, kept = Report(), set()
    for digest in sorted(sizes):
        src = blob_path(store_root / "blobs" / "sha256", digest)
        target = blob_path(dest / "blobs" / "sha256", digest)
        try:
            if target.is_file() and target.stat().st_size == src.stat().st_size:
                report.already += 1
                progress(target.stat().st_size)
            else:
                report.bytes += _copy(src, target, digest, progress)
                report.blobs += 1
            kept.add(digest)
        except FileNotFoundError:
            report.damaged.append(f"missing in the store: {cat.name(digest)}")
        except IntegrityError as exc:
            report.damaged.append(f"damaged in the store: {cat.name(digest)}: {exc}")
        except OSError as exc:
            raise BundleError(f"cannot write {target}: {exc.strerror or exc}") from None
    with (dest / CATALOG).open("w") as f:
        for obj in cat.objects:
            if str(obj[1]) in kept:
                f.write(json.dumps({"object": obj}) + "\n")
        for source in cat.sources:
            f.write(json.dumps({"source": source}) + "\n")
        for digest in sorted(kept):
            row = cat.blobs.get(digest)
            if row is not None:
                f.write(json.dumps({"blob": row}) + "\n")
    header = {
        "format": FORMAT, "version": VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "blobs": len(kept), "bytes": sum(sizes[d] for d in kept),
    }  # fmt: skip
    (dest / HEADER).write_text(json.dumps(header) + "\n")
    return report


def _lines(path: Path) -> Iterator[dict[str, list[object]]]:
    with path.open() as f:
        for number, line in enumerate(f, 1):
            try:
                item = json.loads(line)
            except ValueError:
                raise BundleError(
                    f"{path}, line {number}: not JSON: the bundle is damaged"
                ) from None
            if isinstance(item, dict) and len(item) == 1:
                yield item


def read_bundle(src: Path) -> _Catalog:
    try:
        header = json.loads((src / HEADER).read_text())
    except FileNotFoundError:
        raise BundleError(
            f"{src} is not a complete bundle (no {HEADER}): export it again"
        ) from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {src / HEADER}: {exc}") from None
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise BundleError(f"{src} is not a bundle this retreatkit can read")
    cat = _Catalog()
    for item in _lines(src / CATALOG):
        ((kind, row),) = item.items()
        if kind == "object" and len(row) == 7 and valid_hex("sha256", str(row[1])):
            cat.objects.append(row)
            cat.names.setdefault(str(row[1]), []).append(str(row[0]))
        elif kind == "source" and len(row) == 7:
            cat.sources.append(row)
        elif kind == "blob" and len(row) == 6 and valid_hex("sha256", str(row[0])):
            cat.blobs[str(row[0])] = row
    return cat


def take(store: Store, src: Path, progress: Progress = lambda n: None) -> Report:
    """Take a bundle into `store` (blocking), re-hashing every blob."""
    cat = read_bundle(src)
    report, held = Report(), set()
    for digest in sorted(cat.names):
        if store.has_blob(digest):
            report.already += 1
            held.add(digest)
            continue
        path = blob_path(src / "blobs" / "sha256", digest)
        writer: BlobWriter | None = None
        try:
            with path.open("rb") as f:
                writer = store.writer()
                while chunk := f.read(CHUNK):
                    writer.write(chunk)
                    progress(len(chunk))
            writer.commit({"sha256": digest})
        except FileNotFoundError:
            report.damaged.append(f"missing: {cat.name(digest)}")
            continue
        except IntegrityError as exc:
            report.damaged.append(f"damaged: {cat.name(digest)}: {exc}; skipped")
            continue
        except BaseException:
            if writer is not None:
                writer.discard()
            raise
        store.published(digest, writer.size)
        report.blobs += 1
        report.bytes += writer.size
        held.add(digest)
    _catalog_in(store, cat, held)
    return report


def _catalog_in(store: Store, cat: _Catalog, held: set[str]) -> None:
    """Rows for the blobs taken in: an object only where the store has none as fresh."""
    objects = [o for o in cat.objects if str(o[1]) in held]
    sizes, now = cat.sizes(), time.time()
    blobs = [
        cat.blobs.get(d) or [d, sizes[d], kind_of(min(cat.names[d])), 0, now, now]
        for d in sorted(held)
    ]

    def write(db: sqlite3.Connection) -> int:
        db.executemany(
            "insert or ignore into sources (name, url, hashes, ecosystem, package, size, aliases)"
            " values (?, ?, ?, ?, ?, ?, ?)",
            cat.sources,
        )
        db.executemany(
            "insert into objects values (?, ?, ?, ?, ?, ?, ?) on conflict(key) do update set"
            " digest = excluded.digest, size = excluded.size, content_type ="
            " excluded.content_type, fetched = excluded.fetched, etag = excluded.etag,"
            " last_modified = excluded.last_modified where excluded.fetched > objects.fetched",
            objects,
        )
        added = 0
        for row in blobs:
            cursor = db.execute("insert or ignore into blobs values (?, ?, ?, ?, ?, ?)", row)
            added += int(str(row[1])) if cursor.rowcount == 1 else 0
        return added

    store.used += store.transaction(write)
