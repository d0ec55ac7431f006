"""The mirror's requests upstream, in one place: index pages read whole, files downloaded
once however many ask (downloads.py, intake.py), each request bounded in time and never
sent to an upstream known to be down (uplink.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from retreatkit.mirror import bodies, faults
from retreatkit.mirror.downloads import Downloads, Publish
from retreatkit.mirror.errors import (
    BadUpstreamData,
    MirrorError,
    UpstreamDown,
    UpstreamError,
    UpstreamTimeout,
)
from retreatkit.mirror.fill import CHUNK, Fill
from retreatkit.mirror.health import Health
from retreatkit.mirror.intake import Intake, Room, no_room_made
from retreatkit.mirror.memory import Lease, Working
from retreatkit.mirror.records import Source
from retreatkit.mirror.resolver import Sessions
from retreatkit.mirror.stats import Stats
from retreatkit.mirror.store import Store
from retreatkit.mirror.uplink import Limits, Uplink

# a page fetch goes on after its client stopped waiting (index_timeout), for the next one,
# but not for ever: an upstream trickling at the least rate a download must keep would hold
# the page's one fetch, and its memory, for hours
PAGE_PATIENCE = 10
MAX_PAGES_READING = 64 * 1024 * 1024  # bytes of pages read and processed at once (Settings)


@dataclass(frozen=True, slots=True)
class Reply:
    """An upstream's answer to an index request, read whole."""

    status: int
    body: bytes
    content_type: str
    etag: str | None
    last_modified: str | None


class Fetcher:
    """What the rest of the mirror asks upstream through: pages here, files by
    `downloads`, both through the one `uplink`, whose clock and limits are the
    fetcher's (tests move them by hand)."""

    def __init__(
        self,
        store: Store,
        session: aiohttp.ClientSession | Sessions,
        limits: Limits,
        stats: Stats,
        health: Health,
        clock: Callable[[], float] = time.monotonic,
        make_room: Room = no_room_made,
        store_limit: int = 0,
        working: Working | None = None,
    ) -> None:
        self.uplink = Uplink(session, limits, stats, health, clock)
        intake = Intake(store, self.uplink, make_room, store_limit)
        self.downloads = Downloads(store, self.uplink, intake)
        self.inflight = self.downloads.inflight
        self.no_room = self.downloads.no_room
        # pages apart: slow ones never hold a download back, nor downloads a page
        self._pages = asyncio.Semaphore(limits.pages)
        # and the bytes of those read at once, with what is made of them (Mirror.working)
        self.working = working if working is not None else Working(MAX_PAGES_READING)

    @property
    def clock(self) -> Callable[[], float]:
        return self.uplink.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.uplink.clock = clock

    @property
    def limits(self) -> Limits:
        return self.uplink.limits

    @limits.setter
    def limits(self, limits: Limits) -> None:
        self.uplink.limits = limits

    async def close(self) -> None:
        await self.downloads.close()

    def fill(self, source: Source, publish: Publish) -> Fill:
        return self.downloads.fill(source, publish)

    def fetches(self) -> dict[str, list[dict[str, Any]]]:
        return self.downloads.fetches()

    def down(self, url: str) -> UpstreamDown:
        return self.uplink.down(url)

    def why_down(self, url: str) -> str:
        return self.uplink.why_down(url)

    def count(self, exc: MirrorError) -> None:
        self.uplink.count(exc)

    async def get_index(
        self, url: str, headers: Mapping[str, str], limit: int, lease: Lease | None = None
    ) -> Reply:
        """An index page, read whole, bounded as a file is: by silence (`read_timeout`)
        and by the rate a download must keep, and in all by PAGE_PATIENCE times what a
        client waits. A page that takes long over a slow uplink still lands for whoever
        asks next (a client waits `index_timeout` for it: Mirror.waited); cut at that,
        it crossed again for every retry and nobody got it. A page that waits its turn
        (`pages` at once) waits inside that bound, and its client no longer than it would
        for a slow page; so does one that waits for room in memory (`lease`, held as its
        bytes come: given, it goes on holding them after, for what is made of them; else
        they are counted until the page is read)."""
        bound = self.uplink.limits.index_timeout * PAGE_PATIENCE
        try:
            try:
                async with asyncio.timeout(bound):  # a trickle that keeps the rate ends too
                    async with self._pages:
                        if lease is not None:
                            return await self._get_index(url, headers, limit, lease)
                        async with self.working.lease() as own:
                            return await self._get_index(url, headers, limit, own)
            except aiohttp.ServerTimeoutError:  # silent mid-page, for read_timeout
                quiet = f"{self.uplink.limits.read_timeout:g} s"
                raise UpstreamTimeout(f"upstream went silent for {quiet} sending {url}") from None
            except TimeoutError:
                raise UpstreamTimeout(f"upstream took over {bound:g} s sending {url}") from None
            except aiohttp.ClientError as exc:
                raise UpstreamError(faults.words(exc, url)) from None
        except UpstreamError as exc:
            self.uplink.count(exc)
            raise

    async def _get_index(
        self, url: str, headers: Mapping[str, str], limit: int, lease: Lease
    ) -> Reply:
        # a page is read whole and kept decoded: it may cross compressed (a file may
        # not: its hash names the bytes as published)
        asked = {"Accept-Encoding": "gzip", **headers}
        await lease.hold(0)  # its turn, before it asks: pages wait in the order they came
        response = await self.uplink.open(url, asked, url)
        async with response:
            ok = response.status == 200
            body = await self._read_page(response, limit, url, lease) if ok else b""
            h = response.headers
            if ok and bodies.cut_unseen(response.content_length, response.headers, body):
                raise BadUpstreamData(f"{url}: page is truncated (no </html>)")
            return Reply(
                response.status, body, h.get("Content-Type", ""), h.get("ETag"),
                h.get("Last-Modified"),
            )  # fmt: skip

    async def _read_page(
        self, response: aiohttp.ClientResponse, limit: int, url: str, lease: Lease
    ) -> bytes:
        """A page's body as published (its content coding undone as it arrives), at most
        `limit` bytes, cut if it comes slower than a file may; `lease` holds as many
        bytes as it has, and waits for more while there is no room (Working)."""
        length = response.content_length
        if length is not None and length > limit:
            raise BadUpstreamData(bodies.INDEX_TOO_LARGE)
        decoder = bodies.Decoder(response.headers.get("Content-Encoding", ""), limit, url)
        await lease.hold(length or 0)
        floor = self.uplink.floor()
        pieces, crossed, size = [], 0, 0
        async for chunk in response.content.iter_chunked(CHUNK):
            crossed += len(chunk)
            self.uplink.stats.upstream_index_bytes += len(chunk)
            if crossed > limit:
                raise BadUpstreamData(bodies.INDEX_TOO_LARGE)
            piece = decoder.feed(chunk)
            size += len(piece)
            await lease.hold(size)
            pieces.append(piece)
            self.uplink.keep_up(floor, len(chunk), url)
        if length is not None and crossed != length:
            raise BadUpstreamData(bodies.INDEX_CUT)
        decoder.end()
        body = b"".join(pieces)
        del pieces  # one copy of the page, not two, from here on
        return body

    async def size_of(self, url: str) -> int | None:
        """What a file's Content-Length is upstream, by a HEAD: no body crosses the uplink.
        It waits for no turn: one at a time for a file, and over within `Uplink.open`'s bound."""
        try:
            response = await self.uplink.open(url, {"Accept-Encoding": "identity"}, url, "HEAD")
        except UpstreamError:
            return None
        async with response:
            ok = response.status == 200
            return response.content_length if ok else None
