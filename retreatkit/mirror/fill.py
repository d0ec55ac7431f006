"""One download in progress and its readers, who all learn how it ended, never hang.

Every reader gets the bytes as they arrive and, at the end, either a whole verified
body or an error (a cut, once a 200 went out).
"""

from __future__ import annotations

import asyncio
import enum
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from retreatkit.mirror.blobs import BlobWriter
from retreatkit.mirror.errors import BadUpstreamData, LocalError, MirrorError
from retreatkit.mirror.records import Source
from retreatkit.mirror.stats import iso
from retreatkit.mirror.store import Store

CHUNK = 256 * 1024


class FillState(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass
class Fill:
    """Readers follow `written`; `state` says how it ended; `headers` is set once the
    upstream answered (or the fill failed before it did)."""

    source: Source
    started: float  # wall-clock
    readers: int = 0
    writer: BlobWriter | None = None
    written: int = 0
    length: int | None = None  # the upstream's Content-Length
    reserved: int = 0  # disk space held for it
    landed: int = 0  # of that, bytes on the disk: its furthest write (a rewind writes over)
    content_type: str = "application/octet-stream"
    state: FillState = FillState.RUNNING
    digest: str | None = None
    rewinds: int = 0  # times the upstream sent it whole again, written over from byte 0
    # the furthest any reader was sent: the bytes before it crossed the uplink for that
    # reader; another reader sent them again is saved them (Stats.bytes_saved)
    furthest: int = 0
    error: MirrorError | None = None
    headers: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def file(self) -> str:
        """The file's own name, as the upstream's URL has it, or as its index names it."""
        return self.source.file

    @property
    def label(self) -> str:
        """How the log names it: the file's own name first (a log panel as narrow as the
        dashboard's cuts a line's end, and PyPI's store names start with a 64-digit
        hash), then where the store keeps it: its ecosystem, or the whole name when that
        hides the file (opam's archives are stored by checksum)."""
        name, file = self.name, self.file
        if name.endswith("/" + file):
            return f"{file} from {name.split('/', 1)[0]}"
        return f"{file} as {name}"

    def rewritten_since(self, writing: int) -> int | None:
        """Where the bytes on disk stopped being those a reader of `writing` (`rewinds`
        when it began) may have sent: a download the upstream started over (a
        continuation answered whole) with other bytes, once or more."""
        return self.writer.changed_since(writing) if self.writer is not None else None

    @property
    def expected_size(self) -> int | None:
        return self.length if self.length is not None else self.source.size

    def current(self) -> FillState:
        return self.state

    def fail(self, error: MirrorError) -> None:
        self.error, self.state = error, FillState.FAILED

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        await self._changed.wait()

    async def ended(self) -> None:
        """Wait until it is done or failed."""
        while self.current() is FillState.RUNNING:
            await self.changed()

    def record(self, ended: str | None) -> dict[str, Any]:
        """The organiser's view of it (docs/admin-api.md, "mirror fetch")."""
        item: dict[str, Any] = {
            "ecosystem": self.source.ecosystem,
            "package": self.source.package,
            "file": self.file,
            "bytes": self.written,
            "size_bytes": self.expected_size,
            "started_at": iso(self.started),
            "readers": self.readers,
        }
        if ended is not None:
            item["ended"] = ended
            if self.error is not None:
                item["error"] = str(self.error)
        return item


def sent(fill: Fill, before: int, after: int) -> int:
    """A reader was sent the fill's bytes `before` to `after`: how many of them another
    reader had been sent already (saved the uplink)."""
    saved = max(0, min(after, fill.furthest) - before)
    fill.furthest = max(fill.furthest, after)
    return saved


async def follow(fill: Fill, store: Store) -> AsyncIterator[bytes]:
    """The fill's bytes as they arrive; raises its error if it fails, even mid-way."""
    await fill.headers.wait()
    if fill.error is not None:
        raise fill.error
    fd = open_fill(fill, store)
    offset = 0
    since = fill.rewinds  # the writing its bytes come from
    try:
        while True:
            state = fill.current()  # a call, not an attribute: it changes across awaits
            if state is FillState.FAILED:
                raise fill.error or LocalError(f"the download of {fill.file} failed")
            # the last byte waits for the hash check: until then no reader holds a
            # complete body, so a file that fails verification is never a whole 200
            limit = fill.written if state is FillState.DONE else fill.written - 1
            if offset == 0:  # nothing sent yet: whatever comes is the writing under way
                since = fill.rewinds
            changed = fill.rewritten_since(since)
            if (changed is not None and offset > changed) or (
                state is FillState.DONE and offset > limit
            ):  # it sent bytes of another file than the one now coming: never spliced
                raise BadUpstreamData(f"upstream changed {fill.file} while sending it")
            if offset < limit:
                chunk = os.pread(fd, min(CHUNK, limit - offset), offset)
                if not chunk:
                    raise LocalError(f"the mirror lost track of {fill.file}")
                offset += len(chunk)
                yield chunk
                continue
            if state is FillState.DONE:
                return
            await fill.changed()
    finally:
        os.close(fd)


def open_fill(fill: Fill, store: Store) -> int:
    """The file a fill writes, opened for reading: its bytes stay readable through the
    rename that publishes it and an eviction that removes it after."""
    # the temp file may have been published (renamed) or dropped since: try both
    published = store.blob_path(fill.digest) if fill.digest else None
    for path in (fill.writer.path if fill.writer else None, published):
        if path is None:
            continue
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
    raise fill.error or LocalError(f"the mirror lost track of {fill.file}")
