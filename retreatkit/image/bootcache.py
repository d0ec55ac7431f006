"""An image's kernel and initramfs as qemu boots them: unpacked once, then kept.

An image holds them compressed with xz, its smallest form; unpacking the mirror's
initramfs (22 MB) takes the host about 0.4 s, which every boot and every restart would
add to the guest's start. Unpacked, they are kept by the SHA-256 of what they came
from, so a rebuilt image is unpacked afresh and an unchanged one never again.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from retreatkit.image.paths import cache_dir, private_dir

KEEP = 6  # of each kind, the most recently booted: the images of an event, ~36 MB a pair
RECENT = 3600.0  # seconds: a file booted this recently is kept whatever KEEP says, since
# another start may be about to hand it to qemu


def folder() -> Path:
    return cache_dir() / "boot"


class NotAsNamed(ValueError):
    """What was to be unpacked is not what its image's manifest names."""


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def forget(source: Path) -> None:
    """Whatever `source` was unpacked to: the next boot unpacks it again."""
    digest = _digest(source.read_bytes())[:32]
    for path in folder().glob(f"{digest}.*"):
        path.unlink(missing_ok=True)


def unpacked(
    source: Path, kind: str, make: Callable[[Path, Path], bool], sha256: str | None = None
) -> Path | None:
    """`source` unpacked: from the cache, or made by `make(source, into)` and kept. None
    when `make` says there is nothing to unpack (it then writes nothing). NotAsNamed if
    `source`'s SHA-256 is not `sha256` (a manifest's): checked at every boot, since it
    is computed anyway to find the unpacked file.

    `make` raises what it raises; what it left half-written is removed."""
    data = source.read_bytes()  # hashed and unpacked alike: a rebuild meanwhile is not mixed in
    whole = _digest(data)
    if sha256 is not None and whole != sha256:
        raise NotAsNamed(f"its SHA-256 is {whole[:16]}..., not {sha256[:16]}...")
    digest = whole[:32]
    base = private_dir(folder())
    target = base / f"{digest}.{kind}"
    try:
        os.utime(target)  # booted again: the last one `prune` removes
        return target
    except FileNotFoundError:  # never unpacked, or pruned just now
        pass
    # two guests of one image may start at once: each writes its own, the last rename wins
    partial = base / f".{digest}.{kind}.{os.getpid()}.{threading.get_ident()}"
    copy = partial.with_name(partial.name + ".source")
    try:
        copy.write_bytes(data)
        if not make(copy, partial):
            return None
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
        copy.unlink(missing_ok=True)
    prune(base, kind)
    return target


def prune(base: Path, kind: str, now: float | None = None) -> None:
    """All but the KEEP most recently booted of `kind`, and leftovers of a start that
    died mid-unpack, once none of them was touched for RECENT seconds."""
    now = time.time() if now is None else now
    found: list[tuple[float, Path]] = []
    for path in base.iterdir():
        try:
            found.append((path.stat().st_mtime, path))
        except FileNotFoundError:  # pruned by another start meanwhile
            continue
    found.sort(reverse=True)
    kept = 0
    for mtime, path in found:
        if path.name.startswith("."):
            if now - mtime > RECENT:
                path.unlink(missing_ok=True)
            continue
        if not path.name.endswith(f".{kind}"):
            continue
        kept += 1
        if kept > KEEP and now - mtime > RECENT and _untouched(path, now):
            path.unlink(missing_ok=True)


def _untouched(path: Path, now: float) -> bool:
    """Not booted since it was listed (another start may just have taken it)."""
    try:
        return now - path.stat().st_mtime > RECENT
    except FileNotFoundError:
        return False
