"""Downloads under way: one a file however many clients ask, each streamed to all of
them as it arrives (fill.py), a few at once; how each ended, for the organiser's list,
and what a failure teaches (a full disk, bad bytes not asked for again at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from retreatkit.mirror import faults
from retreatkit.mirror.badfiles import BadFiles
from retreatkit.mirror.errors import BadFile, LargerThanStore, LocalError, MirrorError, StoreFull
from retreatkit.mirror.fill import Fill, FillState
from retreatkit.mirror.intake import Intake
from retreatkit.mirror.noroom import NoRoom
from retreatkit.mirror.records import Source
from retreatkit.mirror.store import Store
from retreatkit.mirror.uplink import Uplink

log = logging.getLogger("retreatkit.mirror")

RECENT = 100  # finished fetches kept for the organiser's list
Publish = Callable[[Fill], Awaitable[None]]


class Downloads:
    def __init__(self, store: Store, uplink: Uplink, intake: Intake) -> None:
        self.store = store
        self.uplink = uplink  # its clock too, read at each use (tests move it)
        self.intake = intake
        self.inflight: dict[str, Fill] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self.bad = BadFiles()  # files whose bytes failed their hash: not asked again at once
        self.no_room = NoRoom(store, uplink.clock)  # refusals for want of room, in the log
        # clients choose how many different files they ask for: the uplink is not theirs
        self._slots = asyncio.Semaphore(uplink.limits.downloads)

    async def close(self) -> None:
        """End every download now: their clients are cut at once (a short answer never
        completes), their partial files go; a download asked for after this fails."""
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def fill(self, source: Source, publish: Publish) -> Fill:
        """Start a download of `source`, or join the one under way."""
        running = self.inflight.get(source.name)
        if running is not None:
            self.uplink.stats.coalesced += 1
            running.readers += 1
            return running
        fill = Fill(source, time.time(), readers=1)
        if self.closed:
            fill.fail(LocalError("the mirror is shutting down"))
            fill.headers.set()
            return fill
        bad = self.bad.answer(source.name, self.uplink.clock())
        if bad is not None:  # a client's retry of bytes that failed their hash just now
            fill.fail(BadFile(bad))
            fill.headers.set()
            return fill
        self.inflight[source.name] = fill
        task = asyncio.create_task(self._run(fill, publish))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fill

    async def _run(self, fill: Fill, publish: Publish) -> None:
        self.uplink.stats.upstream_fetches += 1
        started = time.monotonic()
        space = self.store.space
        ended = "stored"
        try:
            async with self._slots:
                await self.intake.take(fill)
            await publish(fill)
            fill.state = FillState.DONE
            log.info(
                "fetched %s (%d bytes, %.2fs)", fill.label, fill.written, time.monotonic() - started
            )
        except asyncio.CancelledError:
            fill.fail(LocalError("the mirror is shutting down"))
            ended = "cancelled"
            raise
        except MirrorError as exc:
            fill.fail(exc)
            ended = self._failed(fill, exc)
        except Exception as exc:  # a bug must not leave readers waiting forever
            log.exception("fetch of %s failed", fill.label)
            fill.fail(LocalError(f"the mirror failed fetching {fill.name}: {faults.why(exc)}"))
            ended = "mirror error"
        finally:
            if fill.writer is not None and fill.state is not FillState.DONE:
                fill.writer.discard()
            space.release(fill.reserved, fill.landed)
            del self.inflight[fill.name]
            fill.headers.set()
            fill.notify()
            self.recent.appendleft(fill.record(ended))

    def _failed(self, fill: Fill, exc: MirrorError) -> str:
        said = f"fetch of {fill.label} failed: {exc}"
        self.uplink.count(exc)
        if isinstance(exc, StoreFull) and not isinstance(exc, LargerThanStore):
            if fill.writer is not None:  # a write found the disk full
                self.store.space.outgrew(self._outgrew(fill))
            elif fill.expected_size is not None:  # refused before a byte: too big for the room
                self.store.space.did_not_fit(fill.expected_size)
            self.no_room.said(fill.name, said)  # once a while, however many retry
        else:
            log.warning("%s", said)
        if isinstance(exc, BadFile):
            self.bad.remember(fill.source.keys, str(exc), self.uplink.clock())
        return faults.ended(exc)

    def _outgrew(self, fill: Fill) -> int:
        """A file that filled the disk needs more than the room it had:
        what it took, what was left, and a margin for the filesystem's own blocks."""
        taken = 0
        if fill.writer is not None:
            with contextlib.suppress(OSError):
                taken = fill.writer.path.stat().st_blocks * 512
        return taken + self.store.free_bytes() + (1 << 20)

    def fetches(self) -> dict[str, list[dict[str, Any]]]:
        running = sorted(self.inflight.values(), key=lambda f: f.started, reverse=True)
        return {"in_progress": [f.record(None) for f in running], "recent": list(self.recent)}
