"""Each apt suite's release files, fetched together and served together, flipped when whole.

A suite's set is its `InRelease`, `Release` and `Release.gpg` from one revalidation. A
new set is served only once every index file of the old one that the store holds (what
clients asked for) is fetched and verified under the new hashes, and its Packages files
read: a client that gets the new InRelease then finds every index it names, online or
not. Until then, and whenever the upstream fails, the old set is served whole.
Packages and Sources files are read off the loop into the pool files they promise.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from retreatkit.mirror import apt, apt_keys
from retreatkit.mirror.errors import LocalError, NotFound, StoreFull, UpstreamDown, UpstreamError
from retreatkit.mirror.fetch import Reply
from retreatkit.mirror.health import origin as origin_of
from retreatkit.mirror.once import Once
from retreatkit.mirror.records import Object, Source
from retreatkit.mirror.service import Mirror
from retreatkit.mirror.stats import iso

log = logging.getLogger("retreatkit.mirror")
MAX_SUITES = 256  # sets kept parsed in memory
MAX_PACKAGES_FILES = 65536  # Packages and Sources files known by key, to read once fetched
EXPIRY_WARNING = 2 * 86400.0  # warn this long before a Release's Valid-Until
# apt gives up on an answer after 30 s of silence (Acquire::http::Timeout), asks once more
# on a new connection, and after another 30 s says only `Connection failed`: a Release
# not held is waited for less than that, so apt prints the mirror's line instead (its
# fetch goes on, for apt's own retries and the next update)
APT_PATIENCE = 20.0
Unread = tuple[str, str, apt.Release, apt.IndexFile]  # origin, suite: a Packages file not read


@dataclass(frozen=True, slots=True)
class ReleaseSet:
    release: apt.Release
    objects: dict[str, Object]  # file name (InRelease, ...) -> what the store holds
    fetched: float


class Suites:
    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror
        self._sets: dict[tuple[str, str], ReleaseSet] = {}
        self._running: Once[tuple[str, str], ReleaseSet] = Once(mirror.spawn)
        self._parsed: set[str] = set()  # Packages and Sources digests whose files are recorded
        self._catching_up: dict[str, asyncio.Task[None]] = {}
        # store key of a Packages or Sources -> its origin, and which it is (suite/path)
        self._packages: dict[str, tuple[str, str]] = {}
        self._held_back: dict[tuple[str, str], str] = {}  # a newer Release not served: why
        # Packages and Sources files whose files the catalog had no room for: origin,
        # store key -> which (suite/path), so their files are said refused for the disk
        self._unrecorded: dict[tuple[str, str], str] = {}
        self.keys = apt_keys.Keys([Path(p) for p in mirror.settings.apt_keyrings])
        mirror.warners.append(self.warnings)

    def base(self, origin: str) -> str:
        base = self.mirror.settings.apt.get(origin)
        if base is None:
            raise NotFound(f"no apt origin named {origin} on this mirror")
        return base.rstrip("/")

    # -- the set served now ---------------------------------------------------------------

    async def current(self, origin: str, suite: str) -> tuple[ReleaseSet, bool]:
        """The set to serve and whether it is stale: fresh, else revalidated (once, however
        many ask), else the last good one."""
        key = (origin, suite)
        cur = self._sets.get(key) or await self._from_store(origin, suite)
        ttl = self.mirror.settings.index_ttl
        if cur is not None and time.time() - cur.fetched < ttl:
            self.mirror.stats.hits += 1
            return cur, False
        url = self.base(origin)
        down = self.mirror.health.is_down(origin_of(url))
        running = self._running.start(key, lambda: self._revalidate(origin, suite, cur))
        release = f"{url}/dists/{suite}/InRelease"  # what a wait's words name: not the origin
        try:
            fresh = await self.mirror.waited(
                running, release, held=cur is not None, down=down, patience=APT_PATIENCE
            )
        # a 404 too: a portal's, perhaps (Mirror._revalidate); and a new set the disk has
        # no room for (_save): the one held is as good to apt as it was
        except (UpstreamError, NotFound, LocalError):
            if cur is None:
                raise
            fresh = None
        if fresh is not None:
            return fresh, False
        assert cur is not None  # waited() gives None only to a request holding a set
        # stale: at once while the upstream is down, the probe going on without us
        self.mirror.stats.stale_served += 1
        self.mirror.stats.hits += 1
        return cur, True

    async def served(self, origin: str, suite: str) -> ReleaseSet:
        """The set served now, not revalidated: what an index asked for by its name is
        read from. apt asks for it just after the Release, and a new set fetched in
        between would give it an index of another Release (a hash mismatch)."""
        cur = self._sets.get((origin, suite)) or await self._from_store(origin, suite)
        return cur if cur is not None else (await self.current(origin, suite))[0]

    async def _from_store(self, origin: str, suite: str) -> ReleaseSet | None:
        store = self.mirror.store
        objs = {}
        for name in apt.RELEASE_FILES:
            obj = store.get(apt.release_key(origin, suite, name))
            if obj is not None:
                objs[name] = obj
        main = objs.get("InRelease") or objs.get("Release")
        if main is None:
            return None
        try:
            body = await self.mirror.offload(store.read, main.digest)
            release = await self.mirror.offload(apt.parse_release, body)
        except (OSError, apt.AptError) as exc:
            log.warning("cannot read the stored release of %s/%s: %s", origin, suite, exc)
            return None
        found = ReleaseSet(release, objs, main.fetched)
        self._keep((origin, suite), found)
        # its index files' sources, said again: a Packages read by an older mirror could
        # name a .deb after one of them, and so replace where and what it is fetched as
        base = self.base(origin)
        sources = [
            apt.index_source(origin, base, suite, release, f) for f in release.files.values()
        ]
        with contextlib.suppress(LocalError):
            await store.run(lambda: store.add_sources(sources))
        return found

    def _keep(self, key: tuple[str, str], found: ReleaseSet) -> None:
        self._sets[key] = found
        while len(self._sets) > MAX_SUITES:
            del self._sets[next(iter(self._sets))]
        for path, f in found.release.files.items():
            if apt.is_listing(path) and len(self._packages) < MAX_PACKAGES_FILES:
                self._packages[apt.index_key(key[0], *f.strongest)] = (key[0], f"{key[1]}/{path}")

    async def _revalidate(self, origin: str, suite: str, cur: ReleaseSet | None) -> ReleaseSet:
        try:
            return await self._ask(origin, suite, cur)
        except (UpstreamError, NotFound, LocalError) as exc:
            # whoever asked gets the set held, stale: said once, here, as a page's is
            # (service.py); a down upstream is said as such, a full disk with the rest
            if cur is not None and not isinstance(exc, UpstreamDown | StoreFull):
                why = exc.__cause__ or exc
                log.warning("apt %s/%s: serving its last Release stale: %s", origin, suite, why)
            raise

    async def _ask(self, origin: str, suite: str, cur: ReleaseSet | None) -> ReleaseSet:
        fetcher, stats = self.mirror.fetcher, self.mirror.stats
        url = f"{self.base(origin)}/dists/{suite}/"
        headers = {}
        held = cur.objects.get("InRelease") if cur is not None else None
        if held is not None and held.etag:
            headers["If-None-Match"] = held.etag
        if held is not None and held.last_modified:
            headers["If-Modified-Since"] = held.last_modified
        first = await fetcher.get_index(url + "InRelease", headers, apt.MAX_RELEASE)
        if first.status == 304 and cur is not None:
            stats.hits += 1
            return await self._confirm(origin, suite, cur)
        replies: dict[str, Reply] = {}
        for name, reply in [("InRelease", first)] + [
            (n, await fetcher.get_index(url + n, {}, apt.MAX_RELEASE))
            for n in ("Release", "Release.gpg")
        ]:
            if reply.status == 200:
                replies[name] = reply
            elif reply.status != 404:
                raise UpstreamError(f"the upstream answered {reply.status} for {url}{name}")
        main = replies.get("InRelease") or replies.get("Release")
        if main is None:
            raise NotFound(f"the upstream has no {url}InRelease or Release")
        for name, reply in replies.items():
            if not apt.looks_like(name, reply.body):
                fake = apt.AptError(
                    f"upstream sent a page that is not {origin}/{suite}'s {name}"
                    " (a login portal's?)"
                )
                fetcher.count(fake)
                raise fake
        stats.misses += 1
        digest = hashlib.sha256(main.body).hexdigest()
        if cur is not None and digest in {o.digest for o in cur.objects.values()}:
            return await self._confirm(origin, suite, cur)
        try:
            await self._signed_as_held(origin, suite, cur, replies)
            try:
                release = await self.mirror.offload(apt.parse_release, main.body)
            except apt.AptError as exc:
                self.mirror.fetcher.count(exc)
                raise
            await self._complete(origin, suite, release, cur)
        except UpstreamError as exc:
            # the last set goes on being served: the organiser is told, as nothing else
            # shows that the suite stopped moving (a down upstream is said as such)
            if cur is not None and not isinstance(exc, UpstreamDown):
                self._held_back[(origin, suite)] = str(exc.__cause__ or exc)
            raise
        return await self._save(origin, suite, release, replies, held=cur is not None)

    async def _signed_as_held(
        self, origin: str, suite: str, cur: ReleaseSet | None, replies: dict[str, Reply]
    ) -> None:
        """Refuse a new set apt would refuse where it took the one held (apt_keys.py): a
        first one is apt's to judge, as there is nothing to keep serving instead."""
        if cur is None:
            return
        new = {name: reply.body for name, reply in replies.items()}
        verdict = await self.mirror.offload(self.keys.verdict, new)
        if verdict is None or verdict.good:
            return
        store = self.mirror.store

        def held() -> dict[str, bytes]:
            return {name: store.read(obj.digest) for name, obj in cur.objects.items()}

        try:
            before = await self.mirror.offload(self.keys.verdict, await self.mirror.offload(held))
        except OSError:
            return
        if before is None or not before.good:  # never verified here: nothing to hold to
            return
        name = next(iter(apt_keys.signed_files(new)))
        refused = apt.AptError(f"the upstream's {name} {verdict.words}")
        self.mirror.fetcher.count(refused)
        raise refused

    async def _confirm(self, origin: str, suite: str, cur: ReleaseSet) -> ReleaseSet:
        now = time.time()
        store = self.mirror.store
        keys = [o.key for o in cur.objects.values()]

        def touch() -> None:
            for key in keys:
                store.touch(key, now)

        with contextlib.suppress(LocalError):
            await store.run(touch)
        found = ReleaseSet(cur.release, cur.objects, now)
        self._keep((origin, suite), found)
        self._held_back.pop((origin, suite), None)  # the upstream's is the one served
        return found

    async def _complete(
        self, origin: str, suite: str, new: apt.Release, cur: ReleaseSet | None
    ) -> None:
        """Fetch, under the new set's hashes, every index of the old set the store holds."""
        if cur is None:
            return
        store, base = self.mirror.store, self.base(origin)

        def held_before() -> list[Source]:
            """A Release lists a thousand files: looked up off the loop."""
            wanted = []
            for path, old in cur.release.files.items():
                f = new.files.get(path)
                if (
                    f is None
                    or f == old
                    or store.get(apt.index_key(origin, *old.strongest)) is None
                ):
                    continue
                if store.get(apt.index_key(origin, *f.strongest)) is None:
                    wanted.append(apt.index_source(origin, base, suite, new, f))
            return wanted

        wanted: list[Source] = await self.mirror.offload(held_before)
        fills = [self.mirror.fetch(source) for source in wanted]
        results = await asyncio.gather(
            *(self.mirror.fetched(f) for f in fills), return_exceptions=True
        )
        for source, result in zip(wanted, results, strict=True):
            if isinstance(result, BaseException):
                why = result if isinstance(result, UpstreamError) else UpstreamError(str(result))
                raise type(why)(f"kept the last release of {origin}/{suite}: {why}") from why
            log.info("apt %s/%s: %s fetched for the new release", origin, suite, source.file)
        for path, f in new.files.items():
            if apt.is_listing(path):
                await self._read_packages(origin, suite, new, f)

    async def _save(
        self,
        origin: str,
        suite: str,
        release: apt.Release,
        replies: dict[str, Reply],
        *,
        held: bool,
    ) -> ReleaseSet:
        store, base, now = self.mirror.store, self.base(origin), time.time()
        sources = [
            apt.index_source(origin, base, suite, release, f) for f in release.files.values()
        ]
        main = replies.get("InRelease") or replies["Release"]

        def save() -> dict[str, Object]:
            store.add_sources(sources)
            objs = {}
            for name, reply in replies.items():
                digest = store.put_bytes(reply.body)
                etag, modified = (main.etag, main.last_modified) if reply is main else (None, None)
                key = apt.release_key(origin, suite, name)
                objs[name] = Object(key, digest, len(reply.body), "text/plain", now, etag, modified)
            store.put(*objs.values())
            gone = [
                (apt.release_key(origin, suite, n),) for n in apt.RELEASE_FILES if n not in objs
            ]
            store.transaction(lambda db: db.executemany("delete from objects where key = ?", gone))
            return objs

        try:
            objs = await store.run(save)
        except StoreFull as exc:
            raise self._no_room(origin, suite, held, exc) from None
        found = ReleaseSet(release, objs, now)
        self._keep((origin, suite), found)
        self._held_back.pop((origin, suite), None)
        self.mirror.evict_if_over()
        return found

    def _no_room(self, origin: str, suite: str, held: bool, exc: StoreFull) -> StoreFull:
        """A Release set the disk has no room for. With one held, that one goes on being
        served (the organiser is told). With none, apt is answered 507 in words that
        say why, as apt follows any failed InRelease but a 404 with `The repository ...
        is not signed` (acquire-item.cc, pkgAcqMetaClearSig::Failed): a signing problem
        to whoever reads its last line."""
        store = self.mirror.store
        store.outgrown()  # a write found the disk full: it is, until there is more room
        self.mirror.fetcher.no_room.said(f"apt/{origin}/{suite}", f"apt {origin}/{suite}: {exc}")
        free = store.free_bytes()
        if held:
            self._held_back[(origin, suite)] = f"the mirror's disk is {store.space.fullness(free)}"
        return StoreFull(
            f"the mirror's disk is {store.space.fullness(free)}, so it cannot keep the"
            f" Release of {origin}/{suite}; apt's 'not signed' that follows means only this"
        )

    def unrecorded(self, origin: str) -> str | None:
        """A Packages or Sources file of `origin` whose files the disk had no room to note
        (suite/path), or None: a pool file none names may be one of them."""
        return next((shown for (o, _), shown in self._unrecorded.items() if o == origin), None)

    # -- Packages and Sources: the pool files they promise --------------------------------

    async def _read_packages(
        self, origin: str, suite: str, release: apt.Release, f: apt.IndexFile
    ) -> None:
        store = self.mirror.store
        key = apt.index_key(origin, *f.strongest)
        obj = store.get(key)
        if obj is None or obj.digest in self._parsed:
            return
        if (origin, key) in self._unrecorded and store.space.full(store.free_bytes()):
            return  # read whole again for each pool file asked, to fail the same way
        base = self.base(origin)

        def read() -> int:
            text = apt.decompress(f.path, store.read(obj.digest)).decode("utf-8", "replace")
            sources = apt.listed(origin, base, f.path, text)
            store.add_sources(sources)
            return len(sources)

        try:
            # read whole and parsed, a Packages file takes several times its size: held
            # of max_pages_reading like a page, at its size unpacked where the Release says
            async with self.mirror.working.lease() as lease:
                await lease.hold(apt.unpacked_size(release, f))
                count = await self.mirror.offload(read)
        except StoreFull as exc:
            shown = f"{suite}/{f.path}"
            if len(self._unrecorded) < MAX_PACKAGES_FILES:
                self._unrecorded[(origin, key)] = shown
            said = f"cannot note the files {origin}/{shown} lists: {exc}"
            self.mirror.fetcher.no_room.said(key, said)
            return
        except (apt.AptError, LocalError, OSError) as exc:
            log.warning("cannot read %s of %s/%s: %s", f.path, origin, suite, exc)
            if isinstance(exc, apt.AptError):  # the same bytes never read better: said once
                self._parsed.add(obj.digest)
            return
        self._unrecorded.pop((origin, key), None)
        self._parsed.add(obj.digest)
        files = f"{count} file" + ("" if count == 1 else "s")
        log.info("apt %s/%s: %s lists %s", origin, suite, f.path, files)

    async def catch_up(self, origin: str) -> None:
        """Read every Packages and Sources file of this origin's current sets the store
        holds and this process has not read yet; joins a reading under way, then looks
        again, each file once (one that fails to be read is not tried again at once)."""
        tried: set[str] = set()
        while True:
            running = self._catching_up.get(origin)
            # one that ended but whose owner has not yet run on takes no waiting: awaited,
            # a done task returns at once, and this loop would never let the owner run
            if running is not None and not running.done():
                await asyncio.shield(running)
                continue
            todo = [
                (o, suite, release, f)
                for o, suite, release, f in await self._unread(origin)
                if apt.index_key(o, *f.strongest) not in tried
            ]
            if not todo:
                return
            tried.update(apt.index_key(o, *f.strongest) for o, _, _, f in todo)
            task = asyncio.ensure_future(self._read_all(todo))
            self._catching_up[origin] = task
            try:
                await asyncio.shield(task)
            finally:
                if self._catching_up.get(origin) is task:
                    del self._catching_up[origin]

    def after_index(self, key: str) -> None:
        """An index file was served: read it soon if it is a Packages file not read yet.
        One served but not held, on a full disk, is one the catalog had no room for:
        the files it lists cannot be noted either."""
        listing = self._packages.get(key)
        if listing is None:
            return
        origin, shown = listing
        store = self.mirror.store
        held = store.get(key)
        if held is None and store.space.full(store.free_bytes()):
            if len(self._unrecorded) < MAX_PACKAGES_FILES:
                self._unrecorded[(origin, key)] = shown
        elif held is not None and held.digest not in self._parsed:
            self.mirror.spawn(self.catch_up(origin))

    async def _unread(self, origin: str) -> list[Unread]:
        store = self.mirror.store
        suites = {k.split("/")[3] for k, _, _ in store.catalog(f"apt/{origin}/dists/")}
        todo = []
        for suite in sorted(suites):
            cur = self._sets.get((origin, suite)) or await self._from_store(origin, suite)
            if cur is None:
                continue
            for path, f in cur.release.files.items():
                if not apt.is_listing(path):
                    continue
                obj = store.get(apt.index_key(origin, *f.strongest))
                if obj is not None and obj.digest not in self._parsed:
                    todo.append((origin, suite, cur.release, f))
        return todo

    async def _read_all(self, todo: list[Unread]) -> None:
        for origin, suite, release, f in todo:
            await self._read_packages(origin, suite, release, f)

    # -- for the organiser ----------------------------------------------------------------

    def warnings(self) -> list[str]:
        """Releases that expire soon: apt refuses an expired one (a replay defence), so
        offline clients then need `[check-valid-until=no]` in their sources line."""
        out = []
        now = time.time()
        for (origin, suite), found in sorted(self._sets.items()):
            until = found.release.valid_until
            if until is not None and until - now < EXPIRY_WARNING:
                verb = "expired" if until <= now else "expires"
                out.append(
                    f"apt {origin}/{suite}: its Release {verb} at {iso(until)}; offline,"
                    " apt then needs [check-valid-until=no] in its sources line"
                )
        for (origin, suite), why in sorted(self._held_back.items()):
            out.append(
                f"apt {origin}/{suite}: still serving its last complete Release; the"
                f" upstream's newer one is held back: {why}"
            )
        return out
