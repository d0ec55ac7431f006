"""Upstream requests, each bounded in time and never sent to an upstream known to be down.

Index pages are read whole; a missing file is downloaded once however many ask, and
streamed to all of them as it arrives (fill.py); a download that breaks mid-body is
continued where it broke (continuation.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import socket
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp

from retreatkit import units
from retreatkit.mirror import continuation, faults, hops, redirects
from retreatkit.mirror.badfiles import BadFiles
from retreatkit.mirror.blobs import IntegrityError
from retreatkit.mirror.errors import (
    BadFile,
    BadUpstreamData,
    LargerThanStore,
    LocalError,
    MirrorError,
    StoreFull,
    UpstreamDown,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from retreatkit.mirror.fill import CHUNK, Fill, FillState
from retreatkit.mirror.health import Health, Verdict, origin
from retreatkit.mirror.memory import Lease, Working
from retreatkit.mirror.noroom import NoRoom
from retreatkit.mirror.records import Source
from retreatkit.mirror.resolver import Sessions
from retreatkit.mirror.stats import Stats
from retreatkit.mirror.store import Store

log = logging.getLogger("retreatkit.mirror")

RECENT = 100  # finished fetches kept for the organiser's list
T = TypeVar("T")


# a page fetch goes on after its client stopped waiting (index_timeout), for the next one,
# but not for ever: an upstream trickling at the least rate a download must keep would hold
# the page's one fetch, and its memory, for hours
PAGE_PATIENCE = 10
MAX_PAGES_READING = 64 * 1024 * 1024  # bytes of pages read and processed at once (Settings)


@dataclass
class Limits:
    connect_timeout: float = 5.0  # name resolution and TCP connect, in total
    headers_timeout: float = 10.0  # from the request sent to the answer's headers
    read_timeout: float = 30.0  # the longest silence mid-body
    index_timeout: float = 60.0  # how long a client waits for a page not held (it goes on)
    max_size: int = 8 * 1024**3
    downloads: int = 32  # upstream downloads at once; more wait their turn
    pages: int = 64  # upstream index pages at once; more wait their turn, in a page's bound
    min_rate: float = 1024.0  # bytes a second a download must bring, over each window; 0: any
    rate_window: float = 60.0


def _cut_unseen(response: aiohttp.ClientResponse, body: bytes) -> bool:
    """Whether an HTML page may have been cut without anyone seeing it: a body ended by
    the connection's close, with no length and no chunks to check it by (RFC 9112 6.3),
    that does not end as HTML does. A page with either is whole once read."""
    framed = response.content_length is not None or response.headers.get(
        "Transfer-Encoding", ""
    ).lower().endswith("chunked")
    html = "html" in response.headers.get("Content-Type", "").lower()
    return not framed and html and b"</html>" not in body[-4096:].lower()


@dataclass(frozen=True, slots=True)
class Reply:
    """An upstream's answer to an index request, read whole."""

    status: int
    body: bytes
    content_type: str
    etag: str | None
    last_modified: str | None


class Broke(Exception):
    """A download's body broke off (silence, a reset, a close before its length): its
    rest may be asked for. `error` is what its readers learn if it is not."""

    def __init__(self, error: MirrorError) -> None:
        super().__init__(str(error))
        self.error = error


Publish = Callable[[Fill], Awaitable[None]]
Room = Callable[[int, str], Awaitable[None]]  # evict so a file of this size fits (--max-size)


async def _no_room_made(size: int, name: str) -> None:
    return None


class Fetcher:
    def __init__(
        self,
        store: Store,
        session: aiohttp.ClientSession | Sessions,
        limits: Limits,
        stats: Stats,
        health: Health,
        clock: Callable[[], float] = time.monotonic,
        make_room: Room = _no_room_made,
        store_limit: int = 0,
        working: Working | None = None,
    ) -> None:
        self.store = store
        self.make_room = make_room
        self.store_limit = store_limit  # bytes the whole store may hold (max_size_bytes); 0: any
        # a session given made (tests) or made when first wanted (resolver.Sessions)
        self.sessions = session if isinstance(session, Sessions) else Sessions(session)
        self.limits = limits
        self.stats = stats
        self.health = health
        self.clock = clock
        self.inflight: dict[str, Fill] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self.bad = BadFiles()  # files whose bytes failed their hash: not asked again at once
        self.no_room = NoRoom(store, clock)  # refusals for want of room, in the log
        # clients choose how many different files they ask for: the uplink is not theirs
        self._slots = asyncio.Semaphore(limits.downloads)
        # pages apart: slow ones never hold a download back, nor downloads a page
        self._pages = asyncio.Semaphore(limits.pages)
        # and the bytes of those read at once, with what is made of them (Mirror.working)
        self.working = working if working is not None else Working(MAX_PAGES_READING)

    async def close(self) -> None:
        """End every download now: their clients are cut at once (a short answer never
        completes), their partial files go; a download asked for after this fails."""
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- one bounded request --------------------------------------------------------------

    async def _open(
        self, url: str, headers: Mapping[str, str], what: str, method: str = "GET"
    ) -> aiohttp.ClientResponse:
        """The upstream's answer, headers read; the caller reads the body and releases it.
        `what` names the request in errors (a file's name, an index's URL). A failure is
        charged to the host that failed (a redirect's target, perhaps), as health.py says."""
        limits = self.limits
        # `connect` covers name resolution too; sock_connect would not, and a resolver
        # that never answers then holds every request for the resolver's own timeouts.
        # It would cover a wait for a free pooled connection too, which says nothing of
        # the upstream: the session's pool has no limit (resolver.session), the waits
        # for a turn are the fetcher's own (`downloads`, `pages`), before this
        timeout = aiohttp.ClientTimeout(
            connect=limits.connect_timeout, sock_read=limits.read_timeout
        )
        bound = limits.connect_timeout + limits.headers_timeout
        trip = hops.Trip(url)
        try:
            async with asyncio.timeout(bound):
                session = await self.sessions.get()
                return await self._follow(session, method, trip, headers, timeout, what)
        except TimeoutError as exc:
            if isinstance(exc, aiohttp.ConnectionTimeoutError):  # the name, or the handshake
                why, connected = f"no connection within {limits.connect_timeout:g} s", False
            elif isinstance(exc, aiohttp.ServerTimeoutError):  # sock_read: silent once connected
                why, connected = f"no answer within {limits.read_timeout:g} s", True
            else:  # the whole bound: connected by then, or not
                why, connected = f"no answer within {bound:g} s", trip.hop.peer is not None
            if connected:
                self._silent(trip, why)
            else:
                self._unreachable(trip, why)
            raise UpstreamTimeout(trip.line(what, why)) from None
        except aiohttp.ClientConnectorDNSError as exc:
            why = f"its name does not resolve ({_why(exc.os_error)})"
            self._unreachable(trip, why)
            raise UpstreamUnreachable(trip.line(what, why)) from None
        except (aiohttp.ClientError, OSError) as exc:
            fault = faults.of(exc)
            if fault is faults.Fault.UNREACHABLE:
                why = _why(exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc)
                self._unreachable(trip, why)
                raise UpstreamUnreachable(trip.line(what, why)) from None
            # it answered, badly, or hung up: this request fails, the upstream is not down
            if fault is faults.Fault.ANSWERED:
                self._answered(trip)
            else:
                self._abandoned(trip)
            raise UpstreamError(faults.words(exc, what)) from None
        except BaseException:  # a redirect not followed, a host known down, a cancel
            self._abandoned(trip)
            raise

    async def _follow(
        self,
        session: aiohttp.ClientSession,
        method: str,
        trip: hops.Trip,
        headers: Mapping[str, str],
        timeout: aiohttp.ClientTimeout,
        what: str,
    ) -> aiohttp.ClientResponse:
        """The answer at the end of the upstream's redirects, those the mirror follows
        (redirects.py): the same headers each time, the same method (only GET and HEAD
        are asked, which a 303 keeps too). Whether the upstream asked is near is where
        its first request connected; if it is not, the session's connector keeps each
        later one off near addresses (hops.py, resolver.session): the addresses checked
        are those connected to, where a name checked by a lookup of its own may answer
        the connect's with another. `trip` is where it is, for the caller's accounting."""
        here = None  # whether the upstream asked is on this machine or its link
        for _ in range(redirects.MOST + 1):
            response = await self._hop(session, method, trip, headers, timeout, what)
            location = response.headers.get("Location")
            if response.status not in redirects.STATUSES or location is None:
                return response
            response.release()
            at = redirects.target(trip.url, location, what)
            if here is None:
                here = trip.hop.peer is not None and redirects.near(trip.hop.peer)
            trip.to(at, hops.Hop(refuse=None if here else redirects.near))
        raise redirects.too_many(what)

    async def _hop(
        self,
        session: aiohttp.ClientSession,
        method: str,
        trip: hops.Trip,
        headers: Mapping[str, str],
        timeout: aiohttp.ClientTimeout,
        what: str,
    ) -> aiohttp.ClientResponse:
        """One request of a trip, to its host unless that host is known down, or silent
        for this very request a moment ago (then the answer at once, as for the upstream
        asked). Its answer, whatever it is, says the host is up."""
        verdict = self.health.ask(trip.origin, self.clock(), trip.url)
        if verdict is Verdict.WAIT:
            self.stats.upstream_skipped += 1
            raise self.down(trip.url, trip.via, what)
        if verdict is Verdict.QUIET:
            self.stats.upstream_skipped += 1
            raise self._quiet(trip, what)
        trip.verdict, trip.sent = verdict, self.clock()
        told = hops.HOP.set(trip.hop)
        try:
            response = await session.request(
                method, trip.url, headers=headers, timeout=timeout, allow_redirects=False
            )
        except aiohttp.ClientConnectorError:
            if trip.hop.refused:
                raise redirects.refused(what, trip.url) from None
            raise
        finally:
            hops.HOP.reset(told)
        self._answered(trip)
        return response

    def down(self, url: str, via: str | None = None, what: str = "") -> UpstreamDown:
        """The answer to a request for `url` while its upstream is known down: at once,
        saying when the mirror asks it again (a request that comes then is the probe).
        `via`: the host whose redirect for `what` led to `url`."""
        where = origin(url)
        upstream = self.health.get(where)
        wait = self.health.retry_in(where, self.clock())
        when = f"next try in {math.ceil(wait)} s"  # under a second is 1 s, never 0
        if upstream.probing or wait <= 0:  # this request, or one before it, is the probe
            when = "trying it again now"
        if via is None:
            return UpstreamDown(f"{self.why_down(url)}; {when}")
        why = upstream.last_error or "unreachable"
        host = urlsplit(url).netloc
        return UpstreamDown(
            f"upstream {via} redirected {what} to {host}, which is down ({why}); {when}"
        )

    def _quiet(self, trip: hops.Trip, what: str) -> UpstreamTimeout:
        """The answer to a request its host was silent for a moment ago (a client's
        retry): what it was told then, and when the mirror asks again."""
        quiet = self.health.quiet(trip.origin, trip.url)
        why = quiet.why if quiet is not None else "no answer"
        wait = quiet.retry_at - self.clock() if quiet is not None else 0.0
        return UpstreamTimeout(f"{trip.line(what, why)}; next try in {math.ceil(wait)} s")

    def why_down(self, url: str) -> str:
        """`upstream HOST is down (WHY)`, for `url` (or an origin) known down."""
        why = self.health.get(origin(url)).last_error or "unreachable"
        return f"upstream {urlsplit(url).netloc} is down ({why})"

    def _answered(self, trip: hops.Trip) -> None:
        """Its host answered: up, and said so if it was down (the line that ends "is
        down")."""
        where = trip.origin
        since = self.health.get(where).down_since if self.health.is_down(where) else None
        self.health.answered(where, self.clock(), trip.url)
        trip.verdict = None
        if since is not None:
            log.info("upstream %s is back up (down for %.0f s)", where, self.clock() - since)

    def _unreachable(self, trip: hops.Trip, why: str) -> None:
        """Its host could not be reached: down."""
        if trip.verdict is None:  # no request under way (the session, still being made)
            return
        where = trip.origin
        was_down = self.health.is_down(where)
        self.health.failed(where, self.clock(), why, trip.verdict)
        trip.verdict = None
        if not was_down:
            log.warning("upstream %s is down: %s", where, why)

    def _silent(self, trip: hops.Trip, why: str) -> None:
        """Its host took the request and did not answer in time: down only if it is
        silent for others too (health.py); else this request alone fails."""
        if trip.verdict is None:
            return
        where = trip.origin
        was_down = self.health.is_down(where)
        now = self.clock()
        down = self.health.silent(where, trip.url, trip.sent, now, why, trip.verdict)
        trip.verdict = None
        if down and not was_down:
            many = self.health.silent_paths
            log.warning("upstream %s is down: %s, to %d different requests", where, why, many)

    def _abandoned(self, trip: hops.Trip) -> None:
        """The hop under way ended with no word on its host (a hang-up, a cancel)."""
        if trip.verdict is not None:
            self.health.abandoned(trip.origin, trip.verdict)
            trip.verdict = None

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
        bound = self.limits.index_timeout * PAGE_PATIENCE
        try:
            try:
                async with asyncio.timeout(bound):  # a trickle that keeps the rate ends too
                    async with self._pages:
                        if lease is not None:
                            return await self._get_index(url, headers, limit, lease)
                        async with self.working.lease() as own:
                            return await self._get_index(url, headers, limit, own)
            except aiohttp.ServerTimeoutError:  # silent mid-page, for read_timeout
                quiet = f"{self.limits.read_timeout:g} s"
                raise UpstreamTimeout(f"upstream went silent for {quiet} sending {url}") from None
            except TimeoutError:
                raise UpstreamTimeout(f"upstream took over {bound:g} s sending {url}") from None
            except aiohttp.ClientError as exc:
                raise UpstreamError(faults.words(exc, url)) from None
        except UpstreamError as exc:
            self.count(exc)
            raise

    async def _get_index(
        self, url: str, headers: Mapping[str, str], limit: int, lease: Lease
    ) -> Reply:
        # a page is read whole and kept decoded: it may cross compressed (a file may
        # not: its hash names the bytes as published)
        asked = {"Accept-Encoding": "gzip", **headers}
        await lease.hold(0)  # its turn, before it asks: pages wait in the order they came
        response = await self._open(url, asked, url)
        async with response:
            ok = response.status == 200
            body = await self._read_page(response, limit, url, lease) if ok else b""
            h = response.headers
            if ok and _cut_unseen(response, body):
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
            raise BadUpstreamData(INDEX_TOO_LARGE)
        decoder = _Decoder(response.headers.get("Content-Encoding", ""), limit, url)
        await lease.hold(length or 0)
        floor = self._floor()
        pieces, crossed, size = [], 0, 0
        async for chunk in response.content.iter_chunked(CHUNK):
            crossed += len(chunk)
            self.stats.upstream_index_bytes += len(chunk)
            if crossed > limit:
                raise BadUpstreamData(INDEX_TOO_LARGE)
            piece = decoder.feed(chunk)
            size += len(piece)
            await lease.hold(size)
            pieces.append(piece)
            self._keep_up(floor, len(chunk), url)
        if length is not None and crossed != length:
            raise BadUpstreamData(INDEX_CUT)
        decoder.end()
        body = b"".join(pieces)
        del pieces  # one copy of the page, not two, from here on
        return body

    async def size_of(self, url: str) -> int | None:
        """What a file's Content-Length is upstream, by a HEAD: no body crosses the uplink.
        It waits for no turn: one at a time for a file, and over within `_open`'s bound."""
        try:
            response = await self._open(url, {"Accept-Encoding": "identity"}, url, "HEAD")
        except UpstreamError:
            return None
        async with response:
            ok = response.status == 200
            return response.content_length if ok else None

    # -- files ------------------------------------------------------------------------------

    def fill(self, source: Source, publish: Publish) -> Fill:
        """Start a download of `source`, or join the one under way."""
        running = self.inflight.get(source.name)
        if running is not None:
            self.stats.coalesced += 1
            running.readers += 1
            return running
        fill = Fill(source, time.time(), readers=1)
        if self.closed:
            fill.fail(LocalError("the mirror is shutting down"))
            fill.headers.set()
            return fill
        bad = self.bad.answer(source.name, self.clock())
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
        self.stats.upstream_fetches += 1
        started = time.monotonic()
        space = self.store.space
        ended = "stored"
        try:
            async with self._slots:
                await self._download(fill)
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
            fill.fail(LocalError(f"the mirror failed fetching {fill.name}: {_why(exc)}"))
            ended = "mirror error"
        finally:
            if fill.writer is not None and fill.state is not FillState.DONE:
                fill.writer.discard()
            space.release(fill.reserved, fill.landed)
            del self.inflight[fill.name]
            fill.headers.set()
            fill.notify()
            self.recent.appendleft(fill.record(ended))

    def count(self, exc: MirrorError) -> None:
        """One home for counting an upstream's failure, whatever request met it."""
        if isinstance(exc, BadUpstreamData):
            self.stats.verify_failures += 1
        elif isinstance(exc, UpstreamError) and not isinstance(exc, UpstreamDown):
            self.stats.upstream_errors += 1

    def _failed(self, fill: Fill, exc: MirrorError) -> str:
        said = f"fetch of {fill.label} failed: {exc}"
        self.count(exc)
        if isinstance(exc, StoreFull) and not isinstance(exc, LargerThanStore):
            if fill.writer is not None:  # a write found the disk full
                self.store.space.outgrew(self._outgrew(fill))
            elif fill.expected_size is not None:  # refused before a byte: too big for the room
                self.store.space.did_not_fit(fill.expected_size)
            self.no_room.said(fill.name, said)  # once a while, however many retry
            return "disk full"
        log.warning("%s", said)
        if isinstance(exc, LargerThanStore):
            return "too large"
        if isinstance(exc, BadFile):
            self.bad.remember(fill.source.keys, str(exc), self.clock())
        if isinstance(exc, BadUpstreamData):
            return "verify failed"
        if isinstance(exc, UpstreamDown):
            return "upstream down"
        return "upstream error" if isinstance(exc, UpstreamError) else "mirror error"

    def _outgrew(self, fill: Fill) -> int:
        """A file that filled the disk needs more than the room it had:
        what it took, what was left, and a margin for the filesystem's own blocks."""
        taken = 0
        if fill.writer is not None:
            with contextlib.suppress(OSError):
                taken = fill.writer.path.stat().st_blocks * 512
        return taken + self.store.free_bytes() + (1 << 20)

    async def _download(self, fill: Fill) -> None:
        store = self.store
        known = fill.source.size
        if known is not None:
            self._bound(fill.file, known)
            await self.make_room(known, fill.file)
        free = store.free_bytes()
        if known is not None and not store.space.room_for(known, free):
            raise StoreFull(store.space.no_room(fill.file, known, free))
        response = await self._open(fill.source.url, {}, fill.file)
        try:
            first = await self._begin(fill, response)
        except BaseException:
            response.release()
            raise
        floor = self._floor()  # one for the whole download, however many answers it takes
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
                self.stats.upstream_bytes += len(chunk)
                self._bound(fill.file, fill.written)
                fill.notify()
                self._keep_up(floor, len(chunk), fill.file)
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
        response = await self._open(fill.source.url, continuation.ask(at, first), fill.file)
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

    def _floor(self) -> faults.Floor:
        return faults.Floor(self.limits.min_rate, self.limits.rate_window, self.clock())

    def _keep_up(self, floor: faults.Floor, size: int, what: str) -> None:
        """Another `size` bytes of `what` came: cut it if it comes slower than the floor."""
        if not floor.keeps_up(size, self.clock()):
            rate, window = units.size(int(floor.rate)), floor.window
            raise UpstreamTimeout(f"upstream sent {what} at under {rate}/s for {window:g} s")

    def _bound(self, file: str, size: int) -> None:
        """Refuse a file larger than one download may be, or than the whole store may hold:
        kept, that one would evict every other file, then itself, and cross the uplink
        again for the next client."""
        if size > self.limits.max_size:
            raise UpstreamError(f"{file} is larger than the mirror's limit")
        if self.store_limit and size > self.store_limit:
            raise LargerThanStore(
                f"{file} ({units.size(size)}) is larger than all the mirror keeps:"
                f" {units.size(self.store_limit)} (max_size_bytes)"
            )

    # -- the organiser's list -----------------------------------------------------------------

    def fetches(self) -> dict[str, list[dict[str, Any]]]:
        running = sorted(self.inflight.values(), key=lambda f: f.started, reverse=True)
        return {"in_progress": [f.record(None) for f in running], "recent": list(self.recent)}


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


def _why(exc: BaseException | None) -> str:
    """One short line: the system's words for an OSError, else the exception's first line."""
    if (tls := faults.tls_words(exc)) is not None:
        return tls
    if isinstance(exc, socket.gaierror) and exc.strerror:
        # the resolver's own words: its codes are not errnos (strerror(-3) is "Unknown
        # error -3" where the resolver says "Temporary failure in name resolution")
        return exc.strerror.lower()
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


INDEX_TOO_LARGE = "upstream index is larger than the mirror's limit"
INDEX_CUT = "upstream cut the index short"


class _Decoder:
    """An index page's bytes as published, from the content coding it crosses in, undone
    as it arrives (the page is never held twice, coded and not); as bounded as the page
    itself (a small gzip can hold gigabytes of zeros)."""

    def __init__(self, coding: str, limit: int, url: str) -> None:
        coding = coding.strip().lower()
        if coding not in ("", "identity", "gzip"):
            raise BadUpstreamData(f"{url}: upstream sent the page as {coding!r}, not asked for")
        # gzip's header and trailer, checked
        self._unpack = zlib.decompressobj(wbits=31) if coding == "gzip" else None
        self.limit, self.url, self.size = limit, url, 0

    def feed(self, data: bytes) -> bytes:
        if self._unpack is None:
            return data
        try:
            out = self._unpack.decompress(data, self.limit + 1 - self.size)
        except zlib.error as exc:
            raise BadUpstreamData(f"{self.url}: upstream sent a broken gzip page ({exc})") from None
        self.size += len(out)
        if self.size > self.limit:
            raise BadUpstreamData(INDEX_TOO_LARGE)
        return out

    def end(self) -> None:
        if self._unpack is not None and not self._unpack.eof:
            raise BadUpstreamData(INDEX_CUT)


def _decoded(coding: str, body: bytes, limit: int, url: str) -> bytes:
    """A whole page's bytes as published, from the content coding it crossed in."""
    decoder = _Decoder(coding, limit, url)
    out = decoder.feed(body)
    decoder.end()
    return out
