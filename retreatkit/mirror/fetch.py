"""Upstream downloads: one per missing file however many ask, streamed to all as it arrives."""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from retreatkit.mirror.store import BlobWriter, IntegrityError, Store

log = logging.getLogger("retreatkit.mirror")

CHUNK = 256 * 1024


class UpstreamError(Exception):
    """The upstream could not give us the file; `status` is what we answer (502 or 504)."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Limits:
    connect_timeout: float = 5.0
    read_timeout: float = 30.0  # longest silence from upstream mid-body
    max_size: int = 8 * 1024**3
    downloads: int = 32  # upstream downloads at once; more wait their turn


class FillState(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass
class Fill:
    """One download in progress. Readers follow `written`; `state` says how it ended."""

    name: str
    url: str
    expected: dict[str, str]
    writer: BlobWriter | None = None
    written: int = 0
    length: int | None = None
    content_type: str = "application/octet-stream"
    state: FillState = FillState.RUNNING
    digest: str | None = None
    error: UpstreamError | None = None
    readers: int = 0
    headers: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def current(self) -> FillState:
        return self.state

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        await self._changed.wait()


Publish = Callable[[Fill], Awaitable[None]]


@dataclass
class Counters:
    upstream_fetches: int = 0
    upstream_bytes: int = 0
    coalesced: int = 0
    verify_failures: int = 0
    upstream_errors: int = 0


class Fetcher:
    def __init__(self, store: Store, session: aiohttp.ClientSession, limits: Limits) -> None:
        self.store = store
        self.session = session
        self.limits = limits
        self.inflight: dict[str, Fill] = {}
        self.counters = Counters()
        self._tasks: set[asyncio.Task[None]] = set()
        # clients choose how many different files they ask for: the uplink is not theirs
        self._slots = asyncio.Semaphore(limits.downloads)

    def fill(self, name: str, url: str, expected: dict[str, str], publish: Publish) -> Fill:
        """Start a download of `url` for `name`, or join the one under way."""
        running = self.inflight.get(name)
        if running is not None:
            self.counters.coalesced += 1
            running.readers += 1
            return running
        fill = Fill(name, url, expected, readers=1)
        self.inflight[name] = fill
        task = asyncio.create_task(self._run(fill, publish))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fill

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def get_small(self, url: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """A revalidation or index request; the caller reads and releases it."""
        timeout = aiohttp.ClientTimeout(
            sock_connect=self.limits.connect_timeout, sock_read=self.limits.read_timeout
        )
        try:
            return await self.session.get(url, headers=headers, timeout=timeout)
        except TimeoutError:
            self.counters.upstream_errors += 1
            raise UpstreamError(f"upstream timed out: {url}", 504) from None
        except aiohttp.ClientError as exc:
            self.counters.upstream_errors += 1
            raise UpstreamError(f"upstream unreachable: {_why(exc)}") from None

    async def _run(self, fill: Fill, publish: Publish) -> None:
        self.counters.upstream_fetches += 1
        started = time.monotonic()
        try:
            async with self._slots:
                await self._download(fill)
            await publish(fill)
            fill.state = FillState.DONE
            log.info(
                "fetched %s (%d bytes, %.2fs)", fill.name, fill.written, time.monotonic() - started
            )
        except UpstreamError as exc:
            fill.error = exc
            fill.state = FillState.FAILED
            self.counters.upstream_errors += 1
            log.warning("fetch of %s failed: %s", fill.name, exc)
        except IntegrityError as exc:
            fill.error = UpstreamError(f"upstream sent bad bytes for {fill.name}: {exc}")
            fill.state = FillState.FAILED
            self.counters.verify_failures += 1
            log.warning("rejected %s: %s", fill.name, exc)
        except asyncio.CancelledError:
            fill.error = UpstreamError("mirror shutting down", 503)
            fill.state = FillState.FAILED
            raise
        finally:
            if fill.writer is not None and fill.state is not FillState.DONE:
                fill.writer.discard()
            del self.inflight[fill.name]
            fill.headers.set()
            fill.notify()

    async def _download(self, fill: Fill) -> None:
        limits = self.limits
        timeout = aiohttp.ClientTimeout(
            sock_connect=limits.connect_timeout, sock_read=limits.read_timeout
        )
        try:
            async with self.session.get(fill.url, timeout=timeout) as response:
                if response.status != 200:
                    raise UpstreamError(f"upstream answered {response.status} for {fill.name}")
                fill.length = response.content_length
                if fill.length is not None and fill.length > limits.max_size:
                    raise UpstreamError(f"{fill.name} is larger than the mirror's limit")
                fill.content_type = response.headers.get("Content-Type", fill.content_type)
                fill.writer = self.store.writer(tuple(fill.expected))
                fill.headers.set()
                async for chunk in response.content.iter_chunked(CHUNK):
                    fill.writer.write(chunk)
                    fill.written += len(chunk)
                    self.counters.upstream_bytes += len(chunk)
                    if fill.written > limits.max_size:
                        raise UpstreamError(f"{fill.name} is larger than the mirror's limit")
                    fill.notify()
        except TimeoutError:
            raise UpstreamError(f"upstream timed out fetching {fill.name}", 504) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream failed fetching {fill.name}: {_why(exc)}") from None
        if fill.length is not None and fill.written != fill.length:
            raise UpstreamError(f"upstream cut {fill.name} short")
        assert fill.writer is not None
        # a body cut short without a Content-Length is caught here, by its hash
        fill.digest = fill.writer.check(fill.expected)
        await asyncio.to_thread(fill.writer.publish, fill.digest)


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


async def follow(fill: Fill, store: Store) -> AsyncIterator[bytes]:
    """The fill's bytes as they arrive; raises UpstreamError if it fails, even mid-way."""
    await fill.headers.wait()
    if fill.state is FillState.FAILED:
        assert fill.error is not None
        raise fill.error
    fd = _open_fill(fill, store)
    offset = 0
    try:
        while True:
            state = fill.current()  # a call, not an attribute: it changes across awaits
            if state is FillState.FAILED:
                assert fill.error is not None
                raise fill.error
            # the last byte waits for the hash check: until then no reader holds a
            # complete body, so a file that fails verification is never a whole 200
            limit = fill.written if state is FillState.DONE else fill.written - 1
            if offset < limit:
                chunk = os.pread(fd, min(CHUNK, limit - offset), offset)
                if not chunk:
                    raise UpstreamError(f"lost track of {fill.name}")
                offset += len(chunk)
                yield chunk
                continue
            if state is FillState.DONE:
                return
            await fill.changed()
    finally:
        os.close(fd)


def _open_fill(fill: Fill, store: Store) -> int:
    # the temp file may have been published (renamed) or dropped since: try both
    for path in (fill.writer.path if fill.writer else None, _published(fill, store)):
        if path is None:
            continue
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
    raise fill.error or UpstreamError(f"lost track of {fill.name}")


def _published(fill: Fill, store: Store) -> os.PathLike[str] | None:
    return store.blob_path(fill.digest) if fill.digest else None
