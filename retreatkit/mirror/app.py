"""The mirror's HTTP surface (aiohttp): PyPI simple API, opam repository, attendee page."""

from __future__ import annotations

import asyncio
import html
import json
import logging
from collections import OrderedDict
from typing import Any

from aiohttp import web

from retreatkit.mirror import opam, pypi
from retreatkit.mirror.fetch import Fill, UpstreamError, follow
from retreatkit.mirror.lists import list_key
from retreatkit.mirror.service import Hot, IndexAnswer, Mirror, NotFound
from retreatkit.mirror.store import Object, valid_hex

log = logging.getLogger("retreatkit.mirror")
MIRROR_KEY = web.AppKey("mirror", Mirror)
SMALL = 1024 * 1024  # blobs up to this size are answered from memory, larger by sendfile
STALE_WARNING = '110 - "Response is Stale"'


def make_app(mirror: Mirror) -> web.Application:
    app = web.Application()
    app[MIRROR_KEY] = mirror
    r = app.router
    r.add_get("/", home)
    r.add_get("/pypi/simple/", pypi_root)
    r.add_get("/pypi/simple/{project}/", pypi_project)
    r.add_get("/pypi/simple/{project}", pypi_redirect)
    r.add_get("/pypi/files/{sha256}/{filename}", pypi_file)
    r.add_get("/opam/repo", opam_repo)
    r.add_get("/opam/index.tar.gz", opam_index)
    r.add_get("/opam/cache/{algo}/{prefix}/{digest}", opam_archive)
    r.add_get("/lists/{key}", cached_list)
    return app


def _mirror(request: web.Request) -> Mirror:
    return request.app[MIRROR_KEY]


def _error(mirror: Mirror, status: int, text: str) -> web.Response:
    if status == 404:
        mirror.counters.not_found += 1
    else:
        mirror.counters.errors += 1
    return web.Response(status=status, text=text.rstrip("\n") + "\n")


# -- PyPI -----------------------------------------------------------------------------


async def pypi_root(request: web.Request) -> web.Response:
    mirror = _mirror(request)
    rows = mirror.store.db.execute(
        "select key from objects where key like 'pypi/simple/%' order by key"
    ).fetchall()
    names = [row[0].removeprefix("pypi/simple/") for row in rows]
    as_json = pypi.wants_json(request.headers.get("Accept", ""))
    return web.Response(
        body=pypi.render_root(names, as_json),
        content_type=pypi.JSON_TYPE if as_json else "text/html",
    )


async def pypi_redirect(request: web.Request) -> web.Response:
    project = request.match_info["project"]
    if not pypi.valid_project(project):
        return _error(_mirror(request), 404, "not a project name")
    raise web.HTTPMovedPermanently(f"/pypi/simple/{pypi.normalize(project)}/")


async def pypi_project(request: web.Request) -> web.Response:
    mirror = _mirror(request)
    project = request.match_info["project"]
    if not pypi.valid_project(project):
        return _error(mirror, 404, "not a project name")
    name = pypi.normalize(project)
    if name != project:
        raise web.HTTPMovedPermanently(f"/pypi/simple/{name}/")
    if mirror.settings.pypi is None:
        return _error(mirror, 502, "no PyPI upstream configured (--pypi URL)")
    url = mirror.settings.pypi.rstrip("/") + f"/{name}/"

    async def process(body: bytes, content_type: str) -> tuple[bytes, str]:
        files = pypi.parse(body, content_type, url)
        page, sources = pypi.rewrite(name, files)
        mirror.store.add_sources(sources)
        return pypi.render_json(page), pypi.JSON_TYPE

    answer = await _index(mirror, f"pypi/simple/{name}", url, pypi.ACCEPT_UPSTREAM, process)
    if isinstance(answer, web.Response):
        return answer
    if pypi.wants_json(request.headers.get("Accept", "")):
        body, content_type = mirror.store.read(answer.obj.digest), pypi.JSON_TYPE
    else:
        body, content_type = _html_page(mirror, answer.obj.digest), "text/html"
    return _index_response(answer, body, content_type)


_HTML_CACHE: OrderedDict[str, bytes] = OrderedDict()


def _html_page(mirror: Mirror, digest: str) -> bytes:
    """Pages are stored as PEP 691 JSON; the HTML form is rendered once and kept a while."""
    page = _HTML_CACHE.get(digest)
    if page is None:
        page = pypi.render_html(json.loads(mirror.store.read(digest)))
        _HTML_CACHE[digest] = page
        while len(_HTML_CACHE) > 512:
            _HTML_CACHE.popitem(last=False)
    return page


async def pypi_file(request: web.Request) -> web.StreamResponse:
    mirror = _mirror(request)
    sha, filename = request.match_info["sha256"], request.match_info["filename"]
    if not valid_hex("sha256", sha) or not pypi.valid_filename(filename):
        return _error(mirror, 404, "no such file")
    return await _file(request, mirror, pypi.source_name(sha, filename))


# -- opam -----------------------------------------------------------------------------


async def opam_repo(request: web.Request) -> web.Response:
    return web.Response(body=opam.REPO_FILE, content_type="text/plain")


async def opam_index(request: web.Request) -> web.Response:
    mirror = _mirror(request)
    if mirror.settings.opam is None:
        return _error(mirror, 502, "no opam upstream configured (--opam URL)")
    url = mirror.settings.opam.rstrip("/") + "/index.tar.gz"

    async def process(body: bytes, content_type: str) -> tuple[bytes, str]:
        index, found = await asyncio.to_thread(opam.read_index, body)
        mirror.store.add_sources(
            [
                (opam.cache_name(algo, digest), a.url, a.checksums)
                for a in found
                for algo, digest in a.checksums.items()
            ]
        )
        return index, "application/gzip"

    answer = await _index(mirror, "opam/index.tar.gz", url, "*/*", process)
    if isinstance(answer, web.Response):
        return answer
    return _index_response(answer, mirror.store.read(answer.obj.digest), "application/gzip")


async def opam_archive(request: web.Request) -> web.StreamResponse:
    mirror = _mirror(request)
    algo, prefix, digest = (request.match_info[k] for k in ("algo", "prefix", "digest"))
    if not valid_hex(algo, digest) or prefix != digest[:2]:
        return _error(mirror, 404, "no such archive")
    return await _file(request, mirror, opam.cache_name(algo, digest))


# -- other lists (blocklists), only those configured: not an open proxy -----------------


async def cached_list(request: web.Request) -> web.Response:
    mirror = _mirror(request)
    key = request.match_info["key"]
    urls = {list_key(url): url for url in mirror.settings.lists}
    if key not in urls:
        return _error(mirror, 404, "not a list this mirror keeps")

    async def process(body: bytes, content_type: str) -> tuple[bytes, str]:
        return body, content_type or "text/plain"

    answer = await _index(mirror, f"lists/{key}", urls[key], "*/*", process)
    if isinstance(answer, web.Response):
        return answer
    return _index_response(
        answer, mirror.store.read(answer.obj.digest), answer.obj.content_type.split(";")[0]
    )


# -- shared -----------------------------------------------------------------------------


async def _index(
    mirror: Mirror, key: str, url: str, accept: str, process: Any
) -> IndexAnswer | web.Response:
    try:
        answer = await mirror.index(key, url, accept, process)
    except NotFound as exc:
        return _error(mirror, 404, str(exc))
    except UpstreamError as exc:
        return _error(mirror, exc.status, str(exc))
    if answer.origin == "stale":
        mirror.counters.stale += 1
    elif answer.origin == "upstream":
        mirror.counters.misses += 1
    else:
        mirror.counters.hits += 1
    return answer


def _index_response(answer: IndexAnswer, body: bytes, content_type: str) -> web.Response:
    response = web.Response(body=body, content_type=content_type)
    if answer.stale:
        response.headers["Warning"] = STALE_WARNING
    return response


async def _file(request: web.Request, mirror: Mirror, name: str) -> web.StreamResponse:
    hot = mirror.hot.get(name)
    if hot is not None:  # the hot path: no disk, no SQLite
        counters = mirror.counters
        counters.hits += 1
        counters.bytes_from_cache += len(hot.body)
        return web.Response(body=hot.body, headers=_headers(hot.digest, hot.content_type))
    obj = mirror.cached(name)
    if obj is not None:
        return _blob(mirror, name, obj)
    fill = mirror.fetch(name)
    if fill is None:
        return _error(mirror, 404, "not in any index the mirror has read")
    mirror.counters.misses += 1
    return await _stream(request, mirror, fill)


def _headers(digest: str, content_type: str) -> dict[str, str]:
    return {
        "Content-Type": content_type,
        "ETag": f'"{digest}"',
        "Cache-Control": "public, max-age=31536000, immutable",  # named by its hash
    }


def _blob(mirror: Mirror, name: str, obj: Object) -> web.StreamResponse:
    mirror.counters.hits += 1
    mirror.counters.bytes_from_cache += obj.size
    headers = _headers(obj.digest, obj.content_type)
    path = mirror.store.blob_path(obj.digest)
    if obj.size <= SMALL:
        body = path.read_bytes()
        mirror.hot.put(name, Hot(body, obj.digest, obj.content_type))
        return web.Response(body=body, headers=headers)
    return web.FileResponse(path, headers=headers)


async def _stream(request: web.Request, mirror: Mirror, fill: Fill) -> web.StreamResponse:
    """Bytes as they arrive from upstream; a failed check aborts, so no short 200 exists."""
    await fill.headers.wait()
    if fill.error is not None and fill.written == 0:
        return _error(mirror, fill.error.status, str(fill.error))
    response = web.StreamResponse(headers={"Content-Type": fill.content_type})
    if fill.length is not None:
        response.content_length = fill.length
    else:
        response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        async for chunk in follow(fill, mirror.store):
            await response.write(chunk)
            mirror.counters.bytes_from_upstream += len(chunk)
    except UpstreamError as exc:
        mirror.counters.errors += 1
        log.warning("aborting a response for %s: %s", fill.name, exc)
        if request.transport is not None:
            request.transport.abort()  # the client sees a broken transfer, never a short 200
        return response
    await response.write_eof()
    return response


# -- the page for attendees ---------------------------------------------------------------


async def home(request: web.Request) -> web.Response:
    mirror = _mirror(request)
    base = f"http://{html.escape(request.host)}"
    status = mirror.status()
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Package mirror</title></head><body>
<h1>Package mirror</h1>
<p>Packages fetched once for everyone; keeps working when the uplink is gone.
Holding {status["store"]["blobs"]} files; {status["bytes_saved"]} bytes saved so far.</p>
<h2>pip</h2>
<pre>pip install --index-url {base}/pypi/simple/ PACKAGE
pip config set global.index-url {base}/pypi/simple/</pre>
<h2>uv</h2>
<pre>uv pip install --index-url {base}/pypi/simple/ PACKAGE
export UV_INDEX_URL={base}/pypi/simple/</pre>
<h2>opam</h2>
<pre>opam repository set-url default {base}/opam
opam init default {base}/opam</pre>
</body></html>
"""
    return web.Response(text=page, content_type="text/html")
