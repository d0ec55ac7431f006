"""The mirror's state and policy: fresh, revalidated or stale indexes; verified files."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from retreatkit.mirror import opam, pypi
from retreatkit.mirror.fetch import Fetcher, Fill, Limits, UpstreamError
from retreatkit.mirror.store import Object, Store

log = logging.getLogger("retreatkit.mirror")


@dataclass
class Settings:
    store: Path
    pypi: str | None
    opam: str | None
    index_ttl: float = 600.0  # how long an index is served before asking upstream again
    hot_bytes: int = 128 * 1024 * 1024  # small files kept in memory
    lists: list[str] = field(default_factory=list)  # other URLs to cache (blocklists)
    limits: Limits = field(default_factory=Limits)


@dataclass
class Counters:
    hits: int = 0
    misses: int = 0
    stale: int = 0
    not_found: int = 0
    errors: int = 0
    bytes_from_cache: int = 0
    bytes_from_upstream: int = 0


@dataclass(frozen=True, slots=True)
class IndexAnswer:
    obj: Object
    origin: str  # "cache", "revalidated", "upstream" or "stale"

    @property
    def stale(self) -> bool:
        return self.origin == "stale"


Process = Callable[[bytes, str], Awaitable[tuple[bytes, str]]]


class Mirror:
    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.store = Store(settings.store)
        self.fetcher = Fetcher(self.store, session, settings.limits)
        self.counters = Counters()
        self.started = time.time()
        self._revalidating: dict[str, asyncio.Future[IndexAnswer]] = {}
        self.hot = HotCache(settings.hot_bytes)

    async def close(self) -> None:
        await self.fetcher.close()
        self.store.close()

    async def check_store(self) -> tuple[int, int]:
        kept, dropped = await asyncio.to_thread(self.store.verify)
        if dropped:
            log.warning("store check dropped %d corrupt blobs", dropped)
        return kept, dropped

    # -- indexes --------------------------------------------------------------------

    async def index(self, key: str, url: str, accept: str, process: Process) -> IndexAnswer:
        """The cached index if fresh; else ask upstream (once, however many ask); else stale."""
        cached = self.store.get(key)
        if cached is not None and time.time() - cached.fetched < self.settings.index_ttl:
            return IndexAnswer(cached, "cache")
        running = self._revalidating.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[IndexAnswer] = asyncio.get_running_loop().create_future()
        self._revalidating[key] = future
        try:
            answer = await self._revalidate(key, url, accept, process, cached)
            future.set_result(answer)
            return answer
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so no "never retrieved" warning
            raise
        finally:
            del self._revalidating[key]

    async def _revalidate(
        self, key: str, url: str, accept: str, process: Process, cached: Object | None
    ) -> IndexAnswer:
        headers = {"Accept": accept}
        if cached is not None and cached.etag:
            headers["If-None-Match"] = cached.etag
        if cached is not None and cached.last_modified:
            headers["If-Modified-Since"] = cached.last_modified
        try:
            response = await self.fetcher.get_small(url, headers)
            async with response:
                if response.status == 304 and cached is not None:
                    self.store.touch(key)
                    return IndexAnswer(cached, "revalidated")
                if response.status == 404:
                    raise NotFound(f"upstream has no {key}")
                if response.status != 200:
                    raise UpstreamError(f"upstream answered {response.status} for {key}")
                body = await _read_bounded(response, pypi.MAX_PAGE)
                content_type = response.headers.get("Content-Type", "")
                etag = response.headers.get("ETag")
                modified = response.headers.get("Last-Modified")
            data, stored_type = await process(body, content_type)
        except (UpstreamError, ValueError, aiohttp.ClientError, TimeoutError) as exc:
            if isinstance(exc, ValueError):
                self.fetcher.counters.verify_failures += 1
            if cached is None:
                if isinstance(exc, UpstreamError):
                    raise
                raise UpstreamError(f"upstream failed for {key}: {exc}") from None
            log.warning("serving stale %s: %s", key, exc)
            return IndexAnswer(cached, "stale")
        digest = self.store.put_bytes(data)
        obj = Object(key, digest, len(data), stored_type, time.time(), etag, modified)
        self.store.put(obj)
        return IndexAnswer(obj, "upstream")

    # -- files ----------------------------------------------------------------------

    def cached(self, name: str) -> Object | None:
        return self.store.get(name)

    def fetch(self, name: str) -> Fill | None:
        """Start or join the download of a file an index named; None if none did."""
        source = self.store.source(name)
        if source is None:
            return None
        url, expected = source

        async def publish(fill: Fill) -> None:
            assert fill.digest is not None
            for algo, digest in expected.items():
                key = opam.cache_name(algo, digest) if name.startswith("opam/") else name
                self.store.put(
                    Object(key, fill.digest, fill.written, fill.content_type, time.time())
                )

        return self.fetcher.fill(name, url, expected, publish)

    # -- reporting ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        c, f = self.counters, self.fetcher.counters
        return {
            "hits": c.hits,
            "misses": c.misses,
            "stale_served": c.stale,
            "not_found": c.not_found,
            "errors": c.errors,
            "bytes_from_cache": c.bytes_from_cache,
            "bytes_from_upstream": c.bytes_from_upstream,
            "bytes_saved": max(0, c.bytes_from_cache + c.bytes_from_upstream - f.upstream_bytes),
            "upstream_fetches": f.upstream_fetches,
            "upstream_bytes": f.upstream_bytes,
            "coalesced": f.coalesced,
            "verify_failures": f.verify_failures,
            "upstream_errors": f.upstream_errors,
            "downloads_in_progress": len(self.fetcher.inflight),
            "upstreams": {"pypi": self.settings.pypi, "opam": self.settings.opam},
            "store": self.store.counts(),
            "uptime": round(time.time() - self.started, 1),
        }

    def collector(self) -> Collector:
        return _MirrorCollector(self)


@dataclass(frozen=True, slots=True)
class Hot:
    body: bytes
    digest: str
    content_type: str


class HotCache:
    """Small files in memory, least recently used out first. Keys name content by its
    hash, so an entry never goes stale: nothing to invalidate."""

    SMALL = 1024 * 1024

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._items: OrderedDict[str, Hot] = OrderedDict()

    def get(self, name: str) -> Hot | None:
        item = self._items.get(name)
        if item is not None:
            self._items.move_to_end(name)
        return item

    def put(self, name: str, item: Hot) -> None:
        if len(item.body) > self.SMALL or name in self._items:
            return
        self._items[name] = item
        self.size += len(item.body)
        while self.size > self.limit and self._items:
            _, old = self._items.popitem(last=False)
            self.size -= len(old.body)


class NotFound(Exception):
    """Upstream says there is no such thing."""


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > limit:
            raise UpstreamError("upstream index is larger than the mirror's limit")
        chunks.append(chunk)
    if response.content_length is not None and size != response.content_length:
        raise UpstreamError("upstream cut the index short")
    return b"".join(chunks)


class _MirrorCollector(Collector):
    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self.mirror.status()
        for name, help_text in (
            ("hits", "Requests answered from the store"),
            ("misses", "Requests that needed upstream"),
            ("stale_served", "Indexes served stale because upstream failed"),
            ("not_found", "Requests for things upstream does not have"),
            ("errors", "Requests answered with an error"),
            ("bytes_from_cache", "Bytes served from the store"),
            ("bytes_from_upstream", "Bytes served while being fetched"),
            ("upstream_fetches", "Downloads started upstream"),
            ("upstream_bytes", "Bytes fetched from upstream"),
            ("coalesced", "Requests that joined a download already under way"),
            ("verify_failures", "Upstream bytes rejected by hash or format checks"),
            ("upstream_errors", "Upstream failures"),
        ):
            yield CounterMetricFamily(f"mirror_{name}", help_text, value=s[name])
        yield GaugeMetricFamily(
            "mirror_downloads_in_progress", "Downloads under way", value=s["downloads_in_progress"]
        )


def register(mirror: Mirror, registry: CollectorRegistry) -> None:
    registry.register(mirror.collector())
