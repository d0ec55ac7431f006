"""Responses for files and pages, and what each one counts.

One ETag scheme, ranges, 304 and HEAD for every file, whether held, cold or on its way;
bytes are counted as they are sent, not as files are found.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import BinaryIO

import aiofiles.threadpool
from aiohttp import web

from retreatkit import units
from retreatkit.mirror import ranges
from retreatkit.mirror.errors import MirrorError, NotFound
from retreatkit.mirror.fill import Fill, follow, open_fill, sent
from retreatkit.mirror.memory import SMALL, Page
from retreatkit.mirror.records import Blob, Object, Source
from retreatkit.mirror.service import Mirror

log = logging.getLogger("retreatkit.mirror")
MIRROR_KEY = web.AppKey("mirror", Mirror)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

IMMUTABLE = "public, max-age=31536000, immutable"  # a file is named by its hash
STALE_WARNING = '110 - "Response is Stale"'
OFFLINE = "cached-only"  # the Mirror-Offline header: pages list only what the store holds
SENDFILE_CHUNK = 1 << 20
# characters of an error's line in its status line: room for a file name of a Debian
# length, two sha512s and when the mirror asks again (apt-get shows the reason alone)
REASON_MAX = 512
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253})(:\d{1,5})?$")
HOLD_SMALL = 5.0  # seconds a small file waits to go out whole: well inside pip's 15 s timeout
PAGE_PIECE = 64 * 1024  # bytes of a page handed to a connection at a time
RETRY_AFTER = 5  # seconds, for a page refused while too many bytes of pages are on their way


def _file_headers(etag: str | None, content_type: str, hit: bool) -> dict[str, str]:
    # X-Cache says whether the mirror held it, for `retreatkit mirror seed`'s count
    headers = {"Content-Type": content_type, "Accept-Ranges": "bytes", "Cache-Control": IMMUTABLE,
               "X-Cache": "HIT" if hit else "MISS"}  # fmt: skip
    if etag is not None:
        headers["ETag"] = etag
    return headers


def _bodiless(plan: ranges.Plan, headers: Mapping[str, str]) -> web.Response:
    if plan.status == 304:  # RFC 9110 15.4.5: the validators and caching headers only
        kept = {k: v for k, v in headers.items() if k in ("ETag", "Cache-Control")}
        return web.Response(status=304, headers=kept)
    assert plan.content_range is not None
    return web.Response(status=416, headers={**headers, "Content-Range": plan.content_range})


def mirror_of(request: web.Request) -> Mirror:
    return request.app[MIRROR_KEY]


def client_base(mirror: Mirror, host: str | None) -> str:
    """Where this client reaches the mirror, for URLs in a page made for it: the name it
    used (a loopback name included: the page is for this client only), else the
    organiser's setting."""
    if host and _HOST.match(host):
        return f"http://{host}"
    return (mirror.settings.public_url or mirror.lan_url).rstrip("/")


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A MirrorError as one line of text with the status its kind calls for, counted."""
    try:
        return await handler(request)
    except MirrorError as exc:
        stats = mirror_of(request).stats
        if isinstance(exc, NotFound):
            stats.not_found += 1
        else:
            stats.errors += 1
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        mirror = mirror_of(request)
        if exc.page is not None and mirror.failing.news(exc.page, mirror.fetcher.clock()):
            # the client's line, in the organiser's log too: once a while per page,
            # however many retry it
            log.warning("cannot serve %s: %s", exc.page, text)
        return web.Response(status=exc.status, reason=reason(text), text=text + "\n")
    except ConnectionError:
        # the client left (pip's timeout, curl -m, a closed laptop): nothing to answer, and
        # not the mirror's fault, so no traceback; aiohttp drops what is returned here
        log.debug("client %s left before %s was sent", request.remote, request.path)
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=499, reason="Client Closed Request")


def reason(text: str) -> str:
    """`text` as a reason phrase (RFC 9112 4): what pip, uv, npm and apt-get show of an
    error, none of them the body. Printable ASCII only, so a name an index chose cannot
    reach a terminal as an escape sequence, and bounded."""
    shown = "".join(c if " " <= c <= "~" else "?" for c in text)
    return shown if len(shown) <= REASON_MAX else shown[: REASON_MAX - 3] + "..."


async def file(request: web.Request, name: str) -> web.StreamResponse:
    """The file stored under `name`: held, or fetched once an index named it."""
    mirror = mirror_of(request)
    found = await mirror.blob(name)
    if found is not None:
        return await blob(request, mirror, found)
    return await cold(request, mirror, mirror.source(name))


async def blob(
    request: web.Request, mirror: Mirror, found: Blob, *, hit: bool = True
) -> web.StreamResponse:
    """A verified file from the store: from memory if small, else by sendfile. `hit`
    False: the file was not held when the request came (made for it just now)."""
    if found.body is not None:
        return await _send(request, mirror, found.obj, hit, found.body)
    try:
        f = found.path.open("rb")
    except FileNotFoundError:
        # evicted since it was looked up (the store over its --max-size): not held any
        # more, so fetched again like any file it lacks
        return await cold(request, mirror, mirror.source(found.obj.key))
    with f:  # open, it stays readable whatever evicts it meanwhile
        return await _send(request, mirror, found.obj, hit, f)


async def _send(
    request: web.Request, mirror: Mirror, obj: Object, hit: bool, content: bytes | BinaryIO
) -> web.StreamResponse:
    """A verified file's answer, from its bytes in memory or its open file."""
    stats = mirror.stats
    etag = ranges.etag_of(obj.digest)
    headers = _file_headers(etag, obj.content_type, hit=hit)
    plan = ranges.plan(request.method, request.headers, etag, obj.size)
    if hit:
        stats.hits += 1
    else:
        stats.misses += 1
    if plan.status in (304, 416):
        return _bodiless(plan, headers)
    if plan.content_range is not None:
        headers["Content-Range"] = plan.content_range
    if isinstance(content, bytes):
        body = content
        if plan.status == 206:
            body = body[plan.start : plan.start + plan.length]
        if request.method != "HEAD":
            stats.bytes_from_cache += len(body)
            stats.bytes_saved += len(body) if hit else 0
        return web.Response(status=plan.status, body=body, headers=headers)
    response = FileSlice(content, plan, headers)
    left = await response.send(request)
    stats.bytes_from_cache += left
    stats.bytes_saved += left if hit else 0  # not a range of a file fetched for it
    return response


async def cold(request: web.Request, mirror: Mirror, source: Source) -> web.StreamResponse:
    """A file an index named and the store does not hold yet. HEAD and a matching
    If-None-Match are answered from what the index promised (and a HEAD upstream for a
    size it did not give): they never start a download."""
    sha = source.hashes.get("sha256")
    etag = ranges.etag_of(sha) if sha else None
    inm = request.headers.get("If-None-Match")
    if etag is not None and inm is not None and ranges.matches(inm, etag):
        mirror.stats.hits += 1
        return web.Response(status=304, headers={"ETag": etag, "Cache-Control": IMMUTABLE})
    headers = _file_headers(etag, "application/octet-stream", hit=False)
    if request.method == "HEAD":
        response = web.StreamResponse(headers=headers)
        size = await mirror.size(source)
        if size is not None:
            response.content_length = size
        return response
    mirror.stats.misses += 1
    fill = mirror.fetch(source)
    if_range = request.headers.get("If-Range")
    if "Range" in request.headers and (if_range is None or if_range.strip() == etag):
        # a part of a file is served from the verified whole: the fill stores it once,
        # and a client that asks for ranges (uv reading a wheel's metadata) gets them.
        # Not so a range whose If-Range fails (apt resuming with a date: RFC 9110
        # 13.1.5): its answer is the whole file, which flows as it arrives
        return await ranged(request, mirror, fill)
    return await stream(request, mirror, fill, etag)


async def ranged(request: web.Request, mirror: Mirror, fill: Fill) -> web.StreamResponse:
    """A request with a range, answered from the verified whole once the fill ends, from
    the file it writes, opened while it does: the store over its --max-size may evict the
    file as soon as it is stored (another download making room), and this client still
    gets the bytes it waited for."""
    await fill.headers.wait()
    if fill.error is not None:
        raise fill.error
    try:
        fd = open_fill(fill, mirror.store)
    except MirrorError:
        # stored and evicted before this request could open it (it came as the fill
        # ended): once that fill is over, the file is held, or fetched again
        await fill.ended()
        if fill.error is not None:
            raise fill.error from None
        return await file(request, fill.name)
    with os.fdopen(fd, "rb") as f:
        await fill.ended()
        if fill.error is not None:
            raise fill.error
        assert fill.digest is not None  # set by a fill that passed its checks
        obj = Object(fill.name, fill.digest, fill.written, fill.content_type, time.time())
        return await _send(request, mirror, obj, False, f)


async def stream(
    request: web.Request, mirror: Mirror, fill: Fill, etag: str | None
) -> web.StreamResponse:
    """Bytes as they arrive from upstream. A failure known before the answer starts is
    said in a plain status line; one that comes later cuts the connection, so no short
    200 exists, and no reader is left waiting. A small file is answered once whole and
    checked: its failure is always said, never a cut that clients misreport (pip's
    hash of nothing, npm's ECONNRESET). Unless the uplink is too slow for that: after
    HOLD_SMALL it streams too, or pip, hearing nothing, times out and asks again."""
    await fill.headers.wait()
    size = fill.expected_size
    if size is not None and size <= SMALL:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HOLD_SMALL):
                await fill.ended()
    if fill.error is not None:
        raise fill.error
    response = web.StreamResponse(headers=_file_headers(etag, fill.content_type, hit=False))
    if fill.length is not None:
        response.content_length = fill.length
    else:
        response.enable_chunked_encoding()
    await response.prepare(request)
    offset = 0
    try:
        async for chunk in follow(fill, mirror.store):
            await response.write(chunk)
            mirror.stats.bytes_from_upstream += len(chunk)
            mirror.stats.bytes_saved += sent(fill, offset, offset + len(chunk))
            offset += len(chunk)
    except (MirrorError, OSError) as exc:
        if not isinstance(exc, ConnectionError):
            log.warning("cutting a response for %s: %s", fill.name, exc)
        if request.transport is not None:
            request.transport.abort()  # the client sees a broken transfer, never a short 200
        return response
    await response.write_eof()
    return response


class FileSlice(web.StreamResponse):
    """Part or all of an open file, sent by the kernel (sendfile)."""

    def __init__(self, file: BinaryIO, plan: ranges.Plan, headers: Mapping[str, str]) -> None:
        super().__init__(status=plan.status, headers=headers)
        self.file, self.plan = file, plan
        self.content_length = plan.length

    async def send(self, request: web.Request) -> int:
        """Prepare and send; returns the body bytes that left."""
        f = self.file
        await self.prepare(request)
        if request.method == "HEAD" or not self.plan.length:
            await self.write_eof()
            return 0
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client left")  # loop.sendfile: RuntimeError
        loop = asyncio.get_running_loop()
        start, length = self.plan.start, self.plan.length
        try:
            sent = await loop.sendfile(transport, f, start, length)
        except NotImplementedError:  # no socket to send from (TLS, a test transport)
            sent = await self._copy(f, start, length)
        await self.write_eof()
        return sent

    async def _copy(self, f: BinaryIO, start: int, length: int) -> int:
        """The same bytes through Python, read on aiofiles' threads from the file already
        open, which its opener closes whatever cancels this: a second open, cancelled
        half way, left its file to the garbage collector."""
        sent = 0
        reader = aiofiles.threadpool.wrap(f)
        await reader.seek(start)
        while sent < length:
            chunk = await reader.read(min(SENDFILE_CHUNK, length - sent))
            if not chunk:
                break
            await self.write(chunk)
            sent += len(chunk)
        return sent


async def page(
    request: web.Request,
    page: Page,
    *,
    stale: bool,
    offline: bool,
    max_age: int,
    modified: str | None = None,
) -> web.StreamResponse:
    """An index page: its own ETag, `Vary: Accept` (one URL, HTML or JSON by what the client
    accepts, so a shared cache must not mix them), and a lifetime no longer than the
    mirror's own. Stale and offline pages say so. A page served as the upstream sent it
    carries the upstream's `Last-Modified` (`modified`), and answers `If-Modified-Since`
    as the upstream would: apt asks for a Release with the date alone.

    The page goes out a piece at a time, as the client takes it: handed over whole, it
    was copied for each connection (with its headers) and the copy held until the client
    read it all. Past `max_pages_sending` bytes of pages on their way to clients (the same page to
    any number of them counts once), another page is refused with a 503 and Retry-After;
    a client that takes none of a piece for `page_stall` seconds is cut, so two that stop
    reading two of npm's largest pages cannot keep every other page refused."""
    headers = {
        "ETag": page.etag,
        "Vary": "Accept",
        "Cache-Control": "no-cache" if stale or offline else f"max-age={max(0, max_age)}",
    }
    if stale:
        headers["Warning"] = STALE_WARNING
    if offline:
        headers["Mirror-Offline"] = OFFLINE
    if modified is not None:
        headers["Last-Modified"] = modified
    inm = request.headers.get("If-None-Match")
    if inm is not None and ranges.matches(inm, page.etag):
        return web.Response(status=304, headers=headers)
    if inm is None and ranges.not_modified_since(
        request.headers.get("If-Modified-Since"), modified
    ):
        return web.Response(status=304, headers=headers)
    mirror = mirror_of(request)
    sending, body = mirror.sending, page.body
    if not sending.take(body):
        mirror.stats.pages_refused += 1
        text = (
            f"the mirror is sending {units.size(sending.bytes)} of index pages to clients"
            f" still reading them (max_pages_sending_bytes); try again in {RETRY_AFTER} s"
        )
        return web.Response(
            status=503, reason=reason(text), text=text + "\n",
            headers={"Retry-After": str(RETRY_AFTER)},
        )  # fmt: skip
    try:
        response = web.StreamResponse(headers={**headers, "Content-Type": page.content_type})
        response.content_length = len(body)
        await response.prepare(request)
        if request.method != "HEAD":
            view = memoryview(body)
            for at in range(0, len(view), PAGE_PIECE):
                try:
                    async with asyncio.timeout(mirror.settings.page_stall):
                        await response.write(view[at : at + PAGE_PIECE])  # waits for the client
                except TimeoutError:
                    mirror.stats.pages_stalled += 1
                    if request.transport is not None:
                        request.transport.abort()  # a broken transfer, never a short 200
                    return response
        await response.write_eof()
        return response
    finally:
        sending.done(body)
