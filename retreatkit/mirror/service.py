"""The mirror's policy: fresh, revalidated, stale or offline indexes; verified files.

Ecosystems (pypi, opam, ...) bring the format; this module decides where an answer comes
from. An index is served from the store while fresh, then revalidated (once, however
many ask, as a task of its own); when the upstream fails, or is slow to, it is served
stale, and while the upstream is down it is served stale at once, the probe going on
without the request, and the ecosystem's pages list only what the store holds. A file
is served only once verified, and only while it is the file the index read last names (an
upstream may rebuild a file under the same name); a missing one is fetched once and
streamed to everyone who asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from retreatkit import lognews
from retreatkit.mirror import eviction, storecheck
from retreatkit.mirror.errors import (
    BadUpstreamData,
    LocalError,
    NotFound,
    StoreFull,
    UpstreamDown,
    UpstreamError,
    UpstreamTimeout,
)
from retreatkit.mirror.fetch import Fetcher
from retreatkit.mirror.fill import Fill
from retreatkit.mirror.health import Health, origin
from retreatkit.mirror.kitready import Kit
from retreatkit.mirror.memory import SMALL, HotCache, Lease, Page, Renders, Sending, Working
from retreatkit.mirror.once import Once
from retreatkit.mirror.records import Blob, Object, Processed, Source, agrees
from retreatkit.mirror.resolver import Sessions
from retreatkit.mirror.stats import Stats
from retreatkit.mirror.store import Store
from retreatkit.mirror.uplink import Limits

log = logging.getLogger("retreatkit.mirror")
Offload = Callable[..., Awaitable[Any]]
Process = Callable[[bytes, str], Processed]
MAX_ORIGINS = 64  # upstream hosts remembered per ecosystem
T = TypeVar("T")
MAX_UNSAVED = 64  # index pages kept in memory only, while the disk cannot take them


@dataclass
class ServerLimits:
    per_address: int = 256  # connections from one address (uv opens up to 50 at once)
    idle_timeout: float = 15.0  # a connection with no complete request, first or next


@dataclass
class Settings:
    store: Path
    pypi: str | None
    opam: str | None
    npm: str | None = None  # an npm registry
    apt: dict[str, str] = field(default_factory=dict)  # origin name -> archive URL
    # keyrings (files) whose keys a new Release must verify by, when the held one did
    apt_keyrings: list[str] = field(default_factory=list)
    index_ttl: float = 600.0  # how long an index is served before asking upstream again
    stale_after: float = 3.0  # how long a request holding a stale index waits to revalidate
    hot_bytes: int = 128 * 1024 * 1024  # small files kept in memory
    page_bytes: int = 64 * 1024 * 1024  # index pages kept in memory, as clients get them
    max_pages_sending: int = 256 * 1024 * 1024  # bytes of index pages on their way, each once
    # seconds a client may take none of an index page before it is cut: one that stops
    # reading holds the page's bytes against max_pages_sending (npm's reach 128 MB)
    page_stall: float = 60.0
    # bytes of index pages being read from upstream and processed at once (parsed, a page
    # takes several times its size): more wait for room; one larger than this goes alone
    max_pages_reading: int = 64 * 1024 * 1024
    lists: list[str] = field(default_factory=list)  # other URLs to cache (blocklists)
    limits: Limits = field(default_factory=Limits)
    server: ServerLimits = field(default_factory=ServerLimits)
    keep_free: int = 512 * 1024 * 1024  # disk space the store leaves to the machine
    public_url: str = ""  # what the attendee page tells people; empty: from the request
    max_size: int = 0  # bytes of blobs the store keeps; 0: no limit but the disk
    allow_upstream: list[str] = field(default_factory=list)  # local names upstream may add to


@dataclass(frozen=True, slots=True)
class IndexAnswer:
    obj: Object
    page: Page  # as the mirror keeps it: one for every request that holds it
    origin: str  # "cache", "revalidated", "upstream" or "stale"

    @property
    def body(self) -> bytes:
        return self.page.body

    @property
    def stale(self) -> bool:
        return self.origin == "stale"


class Mirror:
    def __init__(
        self,
        settings: Settings,
        session: aiohttp.ClientSession | Sessions,
        *,
        offload: Offload = asyncio.to_thread,
        pace: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.store = Store(settings.store, settings.keep_free)
        self.stats = Stats()
        self.health = Health()
        self.working = Working(settings.max_pages_reading, self._waited)
        self.fetcher = Fetcher(
            self.store, session, settings.limits, self.stats, self.health,
            make_room=self.make_room, store_limit=settings.max_size, working=self.working,
        )  # fmt: skip
        self.hot = HotCache(settings.hot_bytes)
        self.renders = Renders(settings.page_bytes)
        self.sending = Sending(settings.max_pages_sending)
        self.started = time.time()
        self.lan_url = "http://localhost"  # where the LAN reaches it; the service sets it
        self.local_url = "http://localhost"  # where this machine reaches it; the service too
        self.offload = offload  # CPU or disk work that must not stall the loop
        self.generation: Counter[str] = Counter()  # per package: bumps as files land
        self.origins: dict[str, set[str]] = {}  # ecosystem -> upstream hosts its files use
        self.warners: list[Callable[[], list[str]]] = []  # ecosystems' lines for /status
        self.kit = Kit(self)  # whether attendees can install bob from here (the page)
        self.warners.append(self.kit.warnings)
        self._pace = pace
        self._pages: dict[str, tuple[Object, Page]] = {}  # pages the disk could not take
        self._unsaved: dict[str, dict[str, Source]] = {}  # and the files each names, by name
        self._refreshing: Once[str, IndexAnswer] = Once(self.spawn)
        self._sizing: Once[str, int | None] = Once(self.spawn)  # one HEAD for many asking
        self._rendering: Once[tuple[str, ...], Page] = Once(self.spawn)
        # pages that failed with nothing held, as logged: a few hundred lines a while at most
        self.failing = lognews.News(most=256)
        self._replaced = lognews.News(most=256)  # files held that a newer index contradicts
        self._hot_sources = 0  # the store's sources_changed the files in `hot` were checked at
        self._check: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._evicting: asyncio.Task[None] | None = None

    def start(self, done: Callable[[str], None] = lambda line: None) -> None:
        """Check the store in the background: the mirror serves meanwhile, verifying on
        first serve any blob the check has not reached yet."""

        async def check() -> None:
            result = await self.offload(storecheck.check_all, self.store, self._pace)
            dropped = f"{result.dropped} corrupt dropped" if result.dropped else "none corrupt"
            done(f"Mirror store check done: {result.files} kept, {dropped}")

        async def flush() -> None:
            while True:
                await asyncio.sleep(eviction.FLUSH_EVERY)
                with contextlib.suppress(LocalError):
                    await self.store.run(self.store.flush_access)

        self._check = asyncio.create_task(check())
        self.spawn(flush())
        self.evict_if_over()

    async def render(
        self, key: tuple[str, ...], make: Callable[..., Page], *args: Any, cost: int = 0
    ) -> Page:
        """A page as clients get it, from `renders`, else made off the loop by `make(*args)`
        once for everyone asking meanwhile (a whole opam index takes seconds to make).
        `cost`: the bytes of the page it is made from, held of `max_pages_reading` while
        it is made. One made while a page is held (its revalidation's answer) costs
        nothing: held twice, it could wait for room it holds itself."""
        page = self.renders.get(key)
        if page is not None:
            return page

        async def work() -> Page:
            if not cost:  # nothing to hold (a page read back as it is): nothing to wait for
                made: Page = await self.offload(make, *args)
            else:
                async with self.working.lease() as lease:
                    await lease.hold(cost)
                    made = await self.offload(make, *args)
            self.renders.put(key, made)
            return made

        return await asyncio.shield(self._rendering.start(key, work))

    def _waited(self) -> None:
        self.stats.pages_waited += 1

    def spawn(self, work: Awaitable[Any]) -> asyncio.Task[Any]:
        """Background work the mirror owns: cancelled when it closes."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def evict_if_over(self) -> None:
        """Start an eviction pass if the store is over its limit and none is running."""
        limit = self.settings.max_size
        if not limit or self.store.used <= limit:
            return
        if self._evicting is None or self._evicting.done():
            self._evicting = self.spawn(self._evict(limit))

    async def _evict(self, limit: int) -> None:
        try:
            done = await self.store.run(lambda: eviction.evict(self.store, limit))
        except LocalError as exc:
            log.warning("cannot evict: %s", exc)
            return
        if self._evicted(done):
            log.info("evicted %d files (%d bytes) to stay under %d", done.blobs, done.bytes, limit)

    async def make_room(self, size: int, name: str) -> None:
        """Before a download of known size: evict what it needs, under --max-size and on
        the disk, so it is not refused for room the store's coldest files hold."""
        limit = self.settings.max_size
        if not eviction.short(self.store, limit, size):
            return
        try:
            done = await self.store.run(lambda: eviction.make_room(self.store, limit, size))
        except LocalError as exc:
            log.warning("cannot evict: %s", exc)
            return
        if self._evicted(done):
            log.info(
                "evicted %d files (%d bytes) to make room for %s (%d bytes)",
                done.blobs, done.bytes, name, size,
            )  # fmt: skip

    def _evicted(self, done: eviction.Evicted) -> int:
        for key in done.keys:
            self.hot.drop(key)
        self.stats.evicted += done.blobs
        self.stats.evicted_bytes += done.bytes
        return done.blobs

    async def checked(self) -> None:
        """Wait for the background store check to end."""
        if self._check is not None:
            await asyncio.shield(self._check)

    async def stop_work(self) -> None:
        """Cancel what waits on upstreams (downloads, revalidations) and the background
        work: their clients are answered or cut at once, partial files dropped."""
        await self.fetcher.close()
        if self._check is not None:
            self._check.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        await self.stop_work()
        await asyncio.to_thread(self.store.close)

    # -- indexes --------------------------------------------------------------------

    def ecosystem_down(self, ecosystem: str, index_url: str) -> bool:
        """Is an upstream this ecosystem needs unreachable? Then pages list only what the
        store holds, so clients pick versions they can install."""
        return self.why_down(ecosystem, index_url) is not None

    def why_down(self, ecosystem: str, index_url: str) -> str | None:
        """`upstream HOST is down (WHY)` for the first upstream this ecosystem needs that
        is unreachable, its index's first; None while none is known down."""
        if self.health.is_down(origin(index_url)):
            return self.fetcher.why_down(index_url)
        for where in self.origins.get(ecosystem, ()):
            if self.health.is_down(where):
                return self.fetcher.why_down(where)
        return None

    def uplink_down(self) -> bool:
        """Whether an upstream the mirror asks itself is down: one configured, or a host
        its indexes name files at. A host it was only redirected to is not the uplink:
        one far mirror an apt redirector picked, down, leaves the rest to be had."""
        s = self.settings
        asked = {origin(url) for url in (s.pypi, s.opam, s.npm, *s.apt.values()) if url}
        asked.update(*self.origins.values())
        return any(self.health.is_down(where) for where in asked)

    async def index(
        self, key: str, url: str, accept: str, process: Process, limit: int
    ) -> IndexAnswer:
        """The cached index if fresh; else ask upstream (once, however many ask); else stale.
        `process` turns the upstream's bytes (at most `limit`) into what the mirror keeps."""
        answer = await self._index(key, url, (accept, limit), process)
        stats = self.stats
        if answer.origin == "upstream":
            stats.misses += 1
        else:
            stats.hits += 1
            stats.stale_served += answer.stale
        return answer

    async def _index(
        self, key: str, url: str, ask: tuple[str, int], process: Process
    ) -> IndexAnswer:
        cached = self._cached_page(key)
        where = origin(url)
        down = self.health.is_down(where)

        def revalidate() -> asyncio.Task[IndexAnswer]:
            return self._refreshing.start(
                key, lambda: self._revalidate(key, url, ask, process, cached)
            )

        if cached is not None and time.time() - cached.fetched < self.settings.index_ttl:
            # a fresh page asks nothing upstream, yet while it is down lists only what is
            # held: it lets the probe through, or the uplink's return goes unseen (and
            # unfetched packages uninstallable) until a page expires
            if down and self.health.retry_in(where, self.fetcher.clock()) <= 0:
                revalidate()
            return await self._answer(cached, "cache")
        task = revalidate()
        answer = await self.waited(task, url, held=cached is not None, down=down)
        if answer is None:
            assert cached is not None  # waited() gives None only to a request that holds one
            return await self._answer(cached, "stale")
        return answer

    async def waited(
        self, task: asyncio.Task[T], url: str, *, held: bool, down: bool,
        patience: float = math.inf,
    ) -> T | None:  # fmt: skip
        """What a request gets of a revalidation `task` (which goes on without it, as the
        mirror's own): None means serve the copy held, stale. While the upstream is known
        down nobody waits: stale at once, or with nothing held a 504 at once (the probe,
        if this request started one, goes on in the background). A request that holds a
        copy waits `stale_after` at most, so a slow or newly silent upstream costs it a
        moment, not the fetcher's whole bound (pip's own timeout is about as long); with
        nothing to serve it waits `index_timeout` at most (or the client's `patience`, if
        shorter: it should hear why before it gives up), and a page still coming then
        lands for the client's retry."""
        if down:
            if held:
                return None
            raise self.fetcher.down(url)
        limit = min(self.settings.limits.index_timeout, patience)
        bound = self.settings.stale_after if held else limit
        done, _ = await asyncio.wait({task}, timeout=bound)
        if done:
            return task.result()
        if held:
            return None
        raise UpstreamTimeout(
            f"upstream took over {bound:g} s sending {url}; the mirror goes on fetching it"
            " for the next try"
        )

    async def refreshed(self) -> None:
        """Wait for the index revalidations under way to end (those nobody waits on)."""
        await self._refreshing.settled()

    def _cached_page(self, key: str) -> Object | None:
        unsaved = self._pages.get(key)
        return unsaved[0] if unsaved is not None else self.store.get(key)

    async def _answer(self, obj: Object, how: str) -> IndexAnswer:
        self.store.accessed[obj.digest] = time.time()
        unsaved = self._pages.get(obj.key)
        if unsaved is not None and unsaved[0].digest == obj.digest:
            return IndexAnswer(obj, unsaved[1], how)
        raw = await self.render(("raw", obj.digest), self._read_page, obj)
        return IndexAnswer(obj, raw, how)

    def _read_page(self, obj: Object) -> Page:
        return Page(self.store.read(obj.digest), f'"{obj.digest}"', obj.content_type)

    async def _revalidate(
        self, key: str, url: str, ask: tuple[str, int], process: Process, cached: Object | None
    ) -> IndexAnswer:
        accept, limit = ask
        headers = {"Accept": accept}
        if cached is not None and cached.etag:
            headers["If-None-Match"] = cached.etag
        if cached is not None and cached.last_modified:
            headers["If-Modified-Since"] = cached.last_modified
        # the page's bytes are held of max_pages_reading from its first byte read until
        # what is made of it is kept: parsed, a page takes several times its size
        async with self.working.lease() as lease:
            return await self._revalidated(key, url, headers, limit, process, cached, lease)

    async def _revalidated(
        self,
        key: str,
        url: str,
        headers: dict[str, str],
        limit: int,
        process: Process,
        cached: Object | None,
        lease: Lease,
    ) -> IndexAnswer:
        try:
            reply = await self.fetcher.get_index(url, headers, limit, lease)
            if reply.status == 304 and cached is not None:
                await self._touch(cached)
                return await self._answer(cached, "revalidated")
            if reply.status == 404:
                raise NotFound(f"the upstream has no {url}")
            if reply.status != 200:
                raise UpstreamError(f"the upstream answered {reply.status} for {url}")
            try:
                processed: Processed = await self.offload(process, reply.body, reply.content_type)
            except BadUpstreamData as exc:
                self.fetcher.count(exc)
                raise
        except (UpstreamError, NotFound) as exc:
            # a page held is served stale whatever the upstream says, a 404 too: with the
            # uplink cut, what answers may be the venue's proxy or portal, whose 404 for
            # everything would otherwise take every page (and opam's index) from clients
            if cached is None:
                # for the log, if it reaches a client: a 404 is an answer, and an upstream
                # down was said when it went down
                if not isinstance(exc, NotFound | UpstreamDown) and not self.health.is_down(
                    origin(url)
                ):
                    exc.page = key
                raise
            if not isinstance(exc, UpstreamDown):
                log.warning("serving %s stale: %s", key, exc)
            return await self._answer(cached, "stale")
        etag, modified = reply.etag, reply.last_modified
        del reply  # the page as it came: only what was made of it is kept
        for source in processed.sources:
            seen = self.origins.setdefault(source.ecosystem, set())
            if len(seen) >= MAX_ORIGINS:
                break
            seen.add(origin(source.url))
        obj, page = await self._save(key, processed, etag, modified)
        return IndexAnswer(obj, page, "upstream")

    async def _save(
        self, key: str, page: Processed, etag: str | None, modified: str | None
    ) -> tuple[Object, Page]:
        store = self.store
        try:
            obj = await store.run(
                lambda: store.save(key, page.body, page.content_type, page.sources, etag, modified)
            )
        except LocalError as exc:
            # serve it anyway, and keep it in memory for its freshness: a full disk must
            # not turn every index into a 500 (or an upstream request per client); and
            # the files it names with it, which the catalog could not take: a client
            # asking for one is told the disk is full, not that no index names it
            self._not_kept(key, exc)
            digest = hashlib.sha256(page.body).hexdigest()
            obj = Object(
                key, digest, len(page.body), page.content_type, time.time(), etag, modified
            )
            kept = Page(page.body, f'"{digest}"', page.content_type)
            self._pages[key] = (obj, kept)
            self._unsaved[key] = {name: s for s in page.sources for name in s.keys}
            while len(self._pages) > MAX_UNSAVED:  # the oldest go: refetched if asked again
                oldest = next(iter(self._pages))
                del self._pages[oldest]
                self._unsaved.pop(oldest, None)
            return obj, kept
        self._pages.pop(key, None)
        self._unsaved.pop(key, None)
        self.evict_if_over()
        kept = Page(page.body, f'"{obj.digest}"', obj.content_type)
        self.renders.put(("raw", obj.digest), kept)
        return obj, kept

    def _not_kept(self, key: str, exc: LocalError) -> None:
        if isinstance(exc, StoreFull):  # said once a while, with every other refusal
            self.fetcher.no_room.said(key, f"cannot keep {key}: {exc}")
        else:
            log.warning("cannot keep %s: %s", key, exc)

    async def _touch(self, cached: Object) -> None:
        unsaved = self._pages.get(cached.key)
        if unsaved is not None:
            obj = replace(unsaved[0], fetched=time.time())
            self._pages[cached.key] = (obj, unsaved[1])
            return
        try:
            await self.store.run(lambda: self.store.touch(cached.key, time.time()))
        except LocalError as exc:
            log.warning("cannot note %s as fresh: %s", cached.key, exc)

    # -- files ----------------------------------------------------------------------

    async def blob(self, name: str) -> Blob | None:
        """The verified file the store holds under `name`, if any, and if it is the file
        the index read last names: one an upstream rebuilt under the same name since is
        not held, and is fetched again (its clients would refuse the old one)."""
        store = self.store
        checked_at = store.sources_changed
        if checked_at != self._hot_sources:  # an index changed a promise: check again
            self.hot.clear()
            self._hot_sources = checked_at
        hot = self.hot.get(name)
        if hot is not None:  # the hot path: no disk, no SQLite
            store.accessed[hot.obj.digest] = time.time()
            return hot
        obj = store.get(name)
        if obj is None:
            return None
        store.accessed[obj.digest] = time.time()
        if obj.digest not in store.verified and not await self.offload(store.verify, obj.digest):
            return None  # it rotted: dropped, and fetched again like any missing file
        if not await self._as_promised(obj):
            return None
        path = store.blob_path(obj.digest)
        if obj.size > SMALL:
            # a stat, not a hash: a file changed since it was checked is re-hashed first
            try:
                changed = not store.intact(obj.digest, path.stat())
            except FileNotFoundError:
                return None
            if changed and not await self.offload(store.recheck, obj.digest):
                return None
            return Blob(obj, path)
        body = await self.offload(store.read_checked, obj.digest)
        if body is None:
            return None
        found = Blob(obj, path, body)
        if store.sources_changed == checked_at:  # else checked against a promise now old
            self.hot.put(name, found)
        return found

    async def _as_promised(self, obj: Object) -> bool:
        """Whether a blob held is the file its index (the one read last) names: by its
        sha256, else by the hashes it was checked against, else hashed for them now."""
        store = self.store
        source = store.source(obj.key)
        if source is None:  # no index names it (the organiser's own files)
            return True
        verdict = agrees(source.hashes, {"sha256": obj.digest})
        if verdict is None:
            verdict = agrees(source.hashes, store.hashes_of(obj.digest))
        if verdict is None:
            found = await self.offload(store.hash_blob, obj.digest, tuple(source.hashes))
            if found is None:
                return False  # gone or rotted: fetched again like any missing file
            with contextlib.suppress(LocalError):
                await store.run(lambda: store.note_hashes(obj.digest, found))
            verdict = agrees(source.hashes, found)
        if not verdict and self._replaced.news(f"{obj.key} {obj.digest}", self.fetcher.clock()):
            log.warning(
                "%s changed upstream: the copy held is not the one its index now names;"
                " fetching it again", source.file,
            )  # fmt: skip
        return bool(verdict)

    def source(self, name: str) -> Source:
        source = self.named(name)
        if source is None:
            raise NotFound("not in any index the mirror has read")
        return source

    def named(self, name: str) -> Source | None:
        """The file an index names under `name`: from the catalog, else from a page
        served while the catalog could not take the files it names."""
        source = self.store.source(name)
        if source is not None:
            return source
        for named in self._unsaved.values():
            if name in named:
                return named[name]
        return None

    async def size(self, source: Source) -> int | None:
        """A file's size, from its index or else from a HEAD upstream (kept for next time):
        a client that reads a file by ranges (uv) needs its length before any range."""
        if source.size is not None:
            return source.size
        # clients asking at once share one HEAD, which goes on if one of them leaves
        return await asyncio.shield(self._sizing.start(source.name, lambda: self._head(source)))

    async def _head(self, source: Source) -> int | None:
        size = await self.fetcher.size_of(source.url)
        if size is not None:
            known = replace(source, size=size)
            with contextlib.suppress(LocalError):
                await self.store.run(lambda: self.store.add_sources([known]))
        return size

    def fetch(self, source: Source) -> Fill:
        """Start or join the download of a file an index named. While its upstream is
        known down the download (the probe, perhaps) goes on without the request, which
        gets a 504 at once: nobody waits on a down upstream."""
        down = self.health.is_down(origin(source.url))
        fill = self.fetcher.fill(source, self._publish)
        if down and not fill.headers.is_set():
            error = self.fetcher.down(source.url)
            if self.store.get(source.name) is not None:
                # held, but not what its index now names (blob): said, not served
                error = UpstreamDown(
                    f"{source.file} changed upstream and the mirror holds only its old copy;"
                    f" {error}"
                )
            raise error
        return fill

    async def _publish(self, fill: Fill) -> None:
        assert fill.digest is not None  # set by a fill that passed its checks
        source, digest = fill.source, fill.digest
        now = time.time()
        objs = [Object(key, digest, fill.written, fill.content_type, now) for key in source.keys]
        self.generation[source.package] += 1
        try:
            await self.store.run(lambda: self.store.put(*objs, hashes=source.hashes))
        except LocalError as exc:  # the bytes are good: its readers get them all the same
            if isinstance(exc, StoreFull):
                self.fetcher.no_room.said(fill.name, f"cannot index {fill.name}: {exc}")
            else:
                log.warning("cannot index %s: %s", fill.name, exc)
        self.evict_if_over()

    async def fetched(self, fill: Fill) -> Blob:
        """Wait for a fill to end; the file it stored, or its error."""
        await fill.ended()
        if fill.error is not None:
            raise fill.error
        blob = await self.blob(fill.name)
        if blob is None:
            raise LocalError(f"the mirror could not keep {fill.file}")
        return blob
