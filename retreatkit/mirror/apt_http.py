"""apt's routes: each origin under `/NAME/`, and the same as an HTTP proxy for those origins.

`deb http://MIRROR:8000/debian bookworm main` asks `/debian/dists/...` and
`/debian/pool/...`. With `Acquire::http::Proxy "http://MIRROR:8000";` apt asks
`GET http://deb.example.org/debian/...` instead (RFC 9112 3.2.2, absolute form): a
request under a configured origin is served the same way; any other is refused, so the
mirror is no open proxy, and `CONNECT` (https through a proxy) is refused too.
"""

from __future__ import annotations

import math
import time
from typing import NoReturn
from urllib.parse import urlsplit

from aiohttp import web

from retreatkit.mirror import apt, respond
from retreatkit.mirror.apt_suites import Suites
from retreatkit.mirror.errors import NotFound, StoreFull
from retreatkit.mirror.memory import Page
from retreatkit.mirror.respond import Handler, mirror_of
from retreatkit.mirror.service import Mirror

SUITES_KEY = web.AppKey("apt_suites", Suites)
# apt shows a refusal's status line, not its body: the words go in both. apt sends its
# https sources through Acquire::http::Proxy too (CONNECT) unless told to go direct
CONNECT_REFUSED = 'this mirror is not an https proxy: set Acquire::https::Proxy "DIRECT"'
NOTHING = "nothing here: see / for what this mirror serves"


def install(app: web.Application) -> None:
    """apt's routes (last: `/NAME/...` would match anything) and its proxy middleware."""
    app[SUITES_KEY] = Suites(app[respond.MIRROR_KEY])
    app.middlewares.append(proxy)
    app.router.add_route("GET", "/{origin}/{path:.+}", by_path)


async def by_path(request: web.Request) -> web.StreamResponse:
    return await serve(request, request.match_info["origin"], request.match_info["path"])


@web.middleware
async def proxy(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "CONNECT":
        return _refused(405, CONNECT_REFUSED, {"Allow": "GET, HEAD"})
    if not request.raw_path.startswith(("http://", "https://")):
        return await handler(request)
    origins = mirror_of(request).settings.apt
    found = apt.proxied(origins, request.raw_path)
    if found is None:
        names = ", ".join(sorted(origins)) or "none"
        host = urlsplit(request.raw_path).hostname or "HOST"
        text = (
            f"not an open proxy: this mirror serves only its apt origins ({names});"
            f' set Acquire::http::Proxy::{host} "DIRECT"'
        )
        return _refused(403, text)
    return await serve(request, *found)


def _refused(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, reason=respond.reason(text), text=text + "\n", headers=headers
    )


async def serve(request: web.Request, origin: str, path: str) -> web.StreamResponse:
    mirror = mirror_of(request)
    if origin not in mirror.settings.apt:
        raise NotFound(NOTHING)
    asked = apt.classify(path)
    if asked is None:
        raise NotFound("not a path in an apt archive")
    suites = request.app[SUITES_KEY]
    if asked.kind == "release":
        mirror.stats.asked(f"apt/{origin}/{asked.suite}")
        return await _release(request, suites, origin, asked)
    if asked.kind == "pool":
        key = apt.pool_key(origin, asked.path)
        held = await mirror.blob(key)
        if held is not None:  # the hot path: one lookup
            return await respond.blob(request, mirror, held)
        if mirror.store.source(key) is None:
            await suites.catch_up(origin)  # an index just fetched, not yet read
            if mirror.store.source(key) is None:
                _not_listed(mirror, suites, origin, asked.path)
        return await respond.file(request, key)
    if asked.kind == "index":
        if ".diff/" in asked.path:  # pdiffs: apt then takes the whole index, shared by all
            raise NotFound("this mirror serves whole indexes, not diffs")
        found = await suites.served(origin, asked.suite)
        f = found.release.files.get(asked.path)
        if f is None:
            raise NotFound(f"{asked.path} is not in the Release of {origin}/{asked.suite}")
        key = apt.index_key(origin, *f.strongest)
    else:
        key = apt.index_key(origin, asked.algo, asked.digest)
    response = await respond.file(request, key)
    suites.after_index(key)
    return response


def _not_listed(mirror: Mirror, suites: Suites, origin: str, path: str) -> NoReturn:
    """A pool file no index the mirror noted names: one it read but had no room to note
    may (the disk's fault, said so: `apt update first` would send apt round again)."""
    unread = suites.unrecorded(origin)
    space, free = mirror.store.space, mirror.store.free_bytes()
    if unread is not None and space.full(free):  # with room again, an update mends it
        raise StoreFull(
            f"the mirror's disk is {space.fullness(free)}, so it could not note the files"
            f" {origin}/{unread} lists; {path} may be one"
        )
    raise NotFound(
        f"{path} is in no Packages or Sources index this mirror holds (apt update first)"
    )


async def _release(
    request: web.Request, suites: Suites, origin: str, asked: apt.Asked
) -> web.StreamResponse:
    mirror = mirror_of(request)
    found, stale = await suites.current(origin, asked.suite)
    obj = found.objects.get(asked.path)
    if obj is None:
        raise NotFound(f"{origin}/{asked.suite} has no {asked.path} upstream")
    page = mirror.renders.get(("raw", obj.digest))
    if page is None:
        body = await mirror.offload(mirror.store.read, obj.digest)
        page = Page(body, f'"{obj.digest}"', "text/plain")
        mirror.renders.put(("raw", obj.digest), page)
    max_age = math.ceil(mirror.settings.index_ttl - (time.time() - found.fetched))
    return await respond.page(
        request, page, stale=stale, offline=False, max_age=max_age, modified=obj.last_modified
    )
