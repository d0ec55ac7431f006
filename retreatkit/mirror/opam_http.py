"""opam's routes: the repository (`repo`, `index.tar.gz`) and its archive cache."""

from __future__ import annotations

import math
import time

from aiohttp import web

from retreatkit.mirror import opam, respond
from retreatkit.mirror.blobs import valid_hex
from retreatkit.mirror.errors import NotFound, UpstreamError
from retreatkit.mirror.memory import Page
from retreatkit.mirror.records import Processed
from retreatkit.mirror.respond import mirror_of


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


async def index(request: web.Request) -> web.Response:
    mirror = mirror_of(request)
    if mirror.settings.opam is None:
        raise UpstreamError("no opam upstream configured (--opam URL)")
    url = mirror.settings.opam.rstrip("/") + "/index.tar.gz"
    answer = await mirror.index("opam/index.tar.gz", url, "*/*", _process, opam.MAX_INDEX)
    page = Page(answer.body, f'"{answer.obj.digest}"', "application/gzip")
    max_age = math.ceil(mirror.settings.index_ttl - (time.time() - answer.obj.fetched))
    return respond.page(request, page, stale=answer.stale, offline=False, max_age=max_age)


async def archive(request: web.Request) -> web.StreamResponse:
    algo, prefix, digest = (request.match_info[k] for k in ("algo", "prefix", "digest"))
    if not valid_hex(algo, digest) or prefix != digest[:2]:
        raise NotFound("no such archive")
    return await respond.file(request, opam.cache_name(algo, digest))
