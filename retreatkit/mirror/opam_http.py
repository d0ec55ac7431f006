"""opam's routes: the repository (`repo`, `index.tar.gz`) and its archive cache.

opam reads the index once and then asks only for archives, by checksum: an archive
request is what counts a package in /status.
"""

from __future__ import annotations

import hashlib
import math
import time

from aiohttp import web

from retreatkit.mirror import opam, respond
from retreatkit.mirror.blobs import valid_hex
from retreatkit.mirror.errors import NotFound, UpstreamError
from retreatkit.mirror.memory import Page
from retreatkit.mirror.records import Processed
from retreatkit.mirror.respond import mirror_of
from retreatkit.mirror.service import Mirror

MAX_KNOWN = 50_000  # archive names whose package is kept in memory


class Packages:
    """Which package an archive's name (`opam/sha256/<hex>`) belongs to, learned from
    the index's sources the first time each is asked: one SQLite lookup a name, then a
    dict, so a hit served from memory stays off SQLite. Only names an index gave are
    kept, at most MAX_KNOWN; beyond, a name is looked up each time."""

    def __init__(self) -> None:
        self._known: dict[str, str] = {}

    def of(self, mirror: Mirror, name: str) -> str | None:
        package = self._known.get(name)
        if package is not None:
            return package
        source = mirror.store.source(name)
        if source is None or not source.package:
            return None  # a name a client made up: not counted, not kept
        if len(self._known) < MAX_KNOWN:
            self._known[name] = source.package
        return source.package


PACKAGES = web.AppKey("opam_packages", Packages)
MAX_NAMES = 16  # names of the mirror the index is made for: each costs a whole index


class Names:
    """The names of the mirror clients used for the index, each made into an index of its
    own (seconds of work for opam-repository): the first MAX_NAMES only, so Host headers
    made up one after another cost nothing. A name beyond them gets the organiser's
    (`public_url`, else the LAN address); opam reaches the archive cache by the name it
    used all the same, and only its fallback to `src` would go to that one."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def base(self, mirror: Mirror, host: str | None) -> str:
        base = respond.client_base(mirror, host)
        if base not in self._seen and len(self._seen) >= MAX_NAMES:
            return respond.client_base(mirror, None)
        self._seen.add(base)
        return base


NAMES = web.AppKey("opam_names", Names)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/opam/repo", repo),
        web.get("/opam/index.tar.gz", index),
        web.get("/opam/cache/{algo}/{prefix}/{digest}", archive),
    ]


async def repo(request: web.Request) -> web.Response:
    return web.Response(body=opam.REPO_FILE, content_type="text/plain")


def _process(body: bytes, content_type: str) -> Processed:
    return opam.process(body)


async def index(request: web.Request) -> web.StreamResponse:
    mirror = mirror_of(request)
    if mirror.settings.opam is None:
        raise UpstreamError("no opam upstream configured (--opam URL)")
    url = mirror.settings.opam.rstrip("/") + "/index.tar.gz"
    answer = await mirror.index("opam/index.tar.gz", url, "*/*", _process, opam.MAX_INDEX)
    base = request.app[NAMES].base(mirror, request.headers.get("Host"))
    page = await mirror.render(
        ("opam", answer.obj.digest, base), _for_client, answer.body, base, cost=len(answer.body)
    )
    max_age = math.ceil(mirror.settings.index_ttl - (time.time() - answer.obj.fetched))
    return await respond.page(request, page, stale=answer.stale, offline=False, max_age=max_age)


def _for_client(body: bytes, base: str) -> Page:
    out = opam.for_client(body, base)
    return Page(out, f'"{hashlib.sha256(out).hexdigest()}"', "application/gzip")


async def archive(request: web.Request) -> web.StreamResponse:
    algo, prefix, digest = (request.match_info[k] for k in ("algo", "prefix", "digest"))
    if not valid_hex(algo, digest) or prefix != digest[:2]:
        raise NotFound("no such archive")
    name = opam.cache_name(algo, digest)
    mirror = mirror_of(request)
    package = request.app[PACKAGES].of(mirror, name)
    if package is not None:
        mirror.stats.asked(f"opam/{package}")
    return await respond.file(request, name)
