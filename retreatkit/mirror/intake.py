"""One file's bytes from upstream onto the store: room made for it first, its answers
written as they come, continued where they broke (continuation.py), checked against its
hashes, and only then published.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp

from retreatkit import units
from retreatkit.mirror import continuation, faults
from retreatkit.mirror.blobs import IntegrityError
from retreatkit.mirror.errors import (
    BadFile,
    BadUpstreamData,
    LargerThanStore,
    MirrorError,
    StoreFull,
    UpstreamError,
    UpstreamTimeout,
)
from retreatkit.mirror.fill import CHUNK, Fill
from retreatkit.mirror.store import Store
from retreatkit.mirror.uplink import Uplink

log = logging.getLogger("retreatkit.mirror")
T = TypeVar("T")


class Broke(Exception):
    """A download's body broke off (silence, a reset, a close before its length): its
    rest may be asked for. `error` is what its readers learn if it is not."""

    def __init__(self, error: MirrorError) -> None:
        super().__init__(str(error))
        self.error = error


Room = Callable[[int, str], Awaitable[None]]  # evict so a file of this size fits (--max-size)


async def no_room_made(size: int, name: str) -> None:
    """No eviction: a store with no max_size (tests, a Fetcher made bare)."""
    return None


class Intake:
    def __init__(
        self, store: Store, uplink: Uplink, make_room: Room = no_room_made, store_limit: int = 0
    ) -> None:
        self.store = store
        self.uplink = uplink  # its clock and limits too, read at each use (tests move them)
        self.make_room = make_room
        self.store_limit = store_limit  # bytes the whole store may hold (max_size_bytes); 0: any

    async def take(self, fill: Fill) -> None:
        """`fill`'s file, downloaded whole, checked and published; a failure is raised."""
        store = self.store
        known = fill.source.size
        if known is not None:
            self._bound(fill.file, known)
            await self.make_room(known, fill.file)
        free = store.free_bytes()
        if known is not None and not store.space.room_for(known, free):
            raise StoreFull(store.space.no_room(fill.file, known, free))
        response = await self.uplink.open(fill.source.url, {}, fill.file)
        try:
            first = await self._begin(fill, response)
        except BaseException:
            response.release()
            raise
        floor = self.uplink.floor()  # one for the whole download, however many answers it takes
        progress = continuation.Progress()
        while True:
            try:
                async with response:
                    await self._receive(fill, response, floor)
                _ended(fill)
                break
            except Broke as broke:
                if not progress.another(fill.written):
                    raise broke.error from None
                log.info(
                    "continuing %s at %s after: %s",
                    fill.label, units.size(fill.written), broke.error,
                )  # fmt: skip
            response, first = await self._continue(fill, first)
        # a body cut short with no Content-Length nor a size in the index: by its hash
        assert fill.writer is not None
        try:
            fill.digest = fill.writer.check(fill.source.hashes)
        except IntegrityError as exc:  # remembered (_failed): a 504, as a retry gets the same
            raise BadFile(f"upstream sent bad bytes for {fill.file}: {exc}") from None
        await _whole(asyncio.to_thread(fill.writer.publish, fill.digest))
        store.published(fill.digest, fill.written)

    async def _begin(self, fill: Fill, response: aiohttp.ClientResponse) -> continuation.First:
        """The first answer's headers: refused, or room made and the file begun."""
        store, known = self.store, fill.source.size
        if response.status != 200:
            raise UpstreamError(f"upstream answered {response.status} for {fill.file}")
        fill.length = response.content_length
        if known is not None and fill.length is not None and fill.length != known:
            # not the file its index names (an upstream mid-sync): said before
            # its bytes cross the uplink, and not remembered, as it may mend
            raise BadUpstreamData(
                f"upstream has {fill.file} at {fill.length} bytes; its index says {known}"
            )
        size = fill.expected_size
        if size is not None:
            self._bound(fill.file, size)
        if size is not None and size != known:
            await self.make_room(size, fill.file)
        free = store.free_bytes()
        if size is not None:
            if not store.space.room_for(size, free):
                raise StoreFull(store.space.no_room(fill.file, size, free))
            fill.reserved = size
            store.space.reserve(size)
        elif store.space.full(free):  # a size nobody knows would only find out the hard way
            raise StoreFull(store.space.unknown_size(fill.file, free))
        fill.content_type = response.headers.get("Content-Type", fill.content_type)
        fill.writer = store.writer(tuple(fill.source.hashes))
        fill.headers.set()
        h = response.headers
        return continuation.First(size, h.get("ETag"), h.get("Last-Modified"), h.get("Date"))

    async def _receive(
        self, fill: Fill, response: aiohttp.ClientResponse, floor: faults.Floor
    ) -> None:
        """An answer's body onto the file. A break the rest may be asked for (a silence,
        a reset, a close) is a `Broke`; the mirror's own limits are not."""
        assert fill.writer is not None
        try:
            async for chunk in response.content.iter_chunked(CHUNK):
                size = fill.expected_size
                if size is not None and fill.written + len(chunk) > size:
                    # an answer with no length of its own (the file sent whole again, a
                    # part) that runs past the one its clients were told: they would
                    # hold that many of its bytes, a whole answer, before the hash check;
                    # with no length at all, past its index's size: nothing else stops
                    # it short of max_size, on a reservation of that size
                    said = "it said" if fill.length is not None else "its index says"
                    raise BadUpstreamData(f"upstream sent {fill.file} longer than {said}")
                # hashing and writing 256 KiB held the loop ~0.2 ms a chunk; a thread
                # costs ~20% more CPU and holds it not at all (bench/mirror_io.py)
                await _whole(asyncio.to_thread(fill.writer.write, chunk))
                fill.written += len(chunk)
                self._landed(fill)
                self.uplink.stats.upstream_bytes += len(chunk)
                self._bound(fill.file, fill.written)
                fill.notify()
                self.uplink.keep_up(floor, len(chunk), fill.file)
        except TimeoutError:
            raise Broke(UpstreamTimeout(f"upstream went silent sending {fill.file}")) from None
        except aiohttp.ClientError as exc:
            raise Broke(UpstreamError(faults.words(exc, fill.file))) from None

    async def _continue(
        self, fill: Fill, first: continuation.First
    ) -> tuple[aiohttp.ClientResponse, continuation.First]:
        """The upstream's answer to a request for the rest of a file that broke after
        `fill.written` bytes, taken: a 206 from there follows them, a 200 is written over
        them from byte 0. Readers following the file go on either way (fill.follow). With
        it, what the next request for the rest names as the file asked for: after a 200,
        that answer's validators, else If-Range would name a version the upstream no
        longer sends, and every later break would start the file over again."""
        assert fill.writer is not None
        at = fill.written
        first = dataclasses.replace(first, length=fill.expected_size)  # a 206 may have told it
        response = await self.uplink.open(fill.source.url, continuation.ask(at, first), fill.file)
        try:
            h = response.headers
            take = continuation.judge(
                response.status, h.get("Content-Range"), response.content_length, at,
                first, fill.file,
            )  # fmt: skip
        except BaseException:
            response.release()
            raise
        if take is continuation.Take.REST:
            if fill.length is None:  # its total, now known, ends the file
                fill.length = continuation.total_of(h.get("Content-Range"))
            return response, first
        log.info("upstream sent %s whole again: starting it over", fill.label)
        try:
            fill.writer.rewind()
        except BaseException:
            response.release()
            raise
        fill.written, fill.rewinds = 0, fill.rewinds + 1
        fill.notify()
        again = continuation.First(
            first.length, h.get("ETag"), h.get("Last-Modified"), h.get("Date")
        )
        return response, again

    def _landed(self, fill: Fill) -> None:
        """What of its reservation a download has on the disk now: out of the free space
        read, so no longer held apart (Space.held). Bytes a rewind writes over took no more."""
        landed = min(fill.written, fill.reserved)
        if landed > fill.landed:
            self.store.space.took(landed - fill.landed)
            fill.landed = landed

    def _bound(self, file: str, size: int) -> None:
        """Refuse a file larger than one download may be, or than the whole store may hold:
        kept, that one would evict every other file, then itself, and cross the uplink
        again for the next client."""
        if size > self.uplink.limits.max_size:
            raise UpstreamError(f"{file} is larger than the mirror's limit")
        if self.store_limit and size > self.store_limit:
            raise LargerThanStore(
                f"{file} ({units.size(size)}) is larger than all the mirror keeps:"
                f" {units.size(self.store_limit)} (max_size_bytes)"
            )


def _ended(fill: Fill) -> None:
    """A body that ended: a `Broke` if it is shorter than its length, or its index's
    size (with no Content-Length: a cut, which may mend, not bad bytes to remember).
    One longer than its length never got this far (`_receive`)."""
    length = fill.length if fill.length is not None else fill.source.size
    if length is not None and fill.written < length:
        raise Broke(BadUpstreamData(f"upstream cut {fill.file} short"))


async def _whole(work: Awaitable[T]) -> T:
    """A thread's write or publish, awaited; cancelled meanwhile (the mirror stopping), it
    still ends before the cancel goes on, so discarding the partial file never races it."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # the cancel is the news; its own error would only be a warning
        raise
