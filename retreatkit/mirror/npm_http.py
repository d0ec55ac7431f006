"""npm's routes: packuments (full and short) and tarballs under `/npm/`, over the mirror's policy.

`npm install --registry http://MIRROR:8000/npm/` asks `/npm/NAME` (`/npm/@scope%2fname`)
and the tarball URLs the packument gives. Some npm releases (11.3 to 11.6, npm/cli#8253)
drop the registry's path when they rewrite a lockfile's `resolved` URL, so tarballs
answer at `/NAME/-/FILE` too: no other route has a `-` segment there.
"""

from __future__ import annotations

import hashlib
from functools import partial
from urllib.parse import urlsplit

from aiohttp import web

from retreatkit.mirror import npm, respond
from retreatkit.mirror.errors import NotFound, UpstreamError
from retreatkit.mirror.memory import Page
from retreatkit.mirror.records import Processed
from retreatkit.mirror.respond import mirror_of
from retreatkit.mirror.service import IndexAnswer, Mirror

SCOPE = "{scope:@[^/]+}"


def routes() -> list[web.RouteDef]:
    return [
        web.get("/npm/-/{command:.*}", no_command),
        web.post("/npm/-/{command:.*}", no_command),
        web.get("/npm/{name}", packument),
        web.get(f"/npm/{SCOPE}/{{name}}", packument),
        web.get("/npm/{name}/-/{file}", tarball),
        web.get(f"/npm/{SCOPE}/{{name}}/-/{{file}}", tarball),
        web.get("/{name}/-/{file}", tarball),
        web.get(f"/{SCOPE}/{{name}}/-/{{file}}", tarball),
    ]


async def no_command(request: web.Request) -> web.Response:
    # a quick 404 keeps `npm install` quiet (its audit is best-effort) and makes
    # `npm audit` say the endpoint failed; an empty answer would claim "no advisories"
    raise NotFound("this mirror serves packages only, not npm's audit or other commands")


def _name(request: web.Request) -> str:
    info = request.match_info
    name = f"{info['scope']}/{info['name']}" if "scope" in info else info["name"]
    if not npm.valid_name(name):
        raise NotFound("not an npm package name")
    return name


def _upstream(mirror: Mirror) -> str:
    if mirror.settings.npm is None:
        raise UpstreamError("no npm upstream configured (--npm URL)")
    return mirror.settings.npm


async def read(mirror: Mirror, name: str, abbreviated: bool) -> IndexAnswer:
    """A packument through the mirror's policy; offline, the full form answers for a short
    one never fetched (the full one holds all of the short one)."""
    url = npm.upstream_url(_upstream(mirror), name)
    accept = npm.ACCEPT_ABBREVIATED if abbreviated else npm.FULL
    process = partial(_process, name, abbreviated)
    key = npm.packument_key(name, abbreviated)
    try:
        return await mirror.index(key, url, accept, process, npm.MAX_PACKUMENT)
    except UpstreamError:
        full = npm.packument_key(name, False)
        if not abbreviated or mirror.store.get(full) is None:
            raise
        return await mirror.index(
            full, url, npm.FULL, partial(_process, name, False), npm.MAX_PACKUMENT
        )


def _process(name: str, abbreviated: bool, body: bytes, content_type: str) -> Processed:
    return npm.process(name, body, abbreviated)


async def packument(request: web.Request) -> web.StreamResponse:
    mirror = mirror_of(request)
    name = _name(request)
    abbreviated = npm.wants_abbreviated(request.headers.get("Accept", ""))
    mirror.stats.asked(f"npm/{name}")
    answer = await read(mirror, name, abbreviated)
    url = npm.upstream_url(_upstream(mirror), name)
    why = _offline(mirror, answer, name, url)
    base = respond.client_base(mirror, request.headers.get("Host"))
    obj = answer.obj
    variant = (obj.digest, base, why, str(mirror.generation[name]))
    page = await mirror.render(
        variant, _make, mirror, answer.body, obj.content_type, base, why, cost=len(answer.body)
    )
    if page.held_only:
        mirror.stats.offline_pages += 1
    # max-age 0: npm asks again each time (a 304 while it is the same packument). npm keeps
    # a packument for its max-age: one kept from before the uplink went lists versions the
    # mirror does not hold, so npm picked the newest and failed on its tarball's 504 (after
    # a minute of retries), where the packument served offline restricts them; and one made
    # offline would go on refusing what is not held after the uplink is back
    return await respond.page(request, page, stale=answer.stale, offline=page.held_only, max_age=0)


def _offline(mirror: Mirror, answer: IndexAnswer, name: str, url: str) -> str:
    """Why the packument lists only what is held, in words npm prints; "" when online.
    No time in it ("next try in"): the page made with it is kept for whoever asks."""
    down = mirror.why_down("npm", url)
    if down is not None:
        return down
    if answer.stale:
        host = urlsplit(url).netloc
        return f"upstream {host} did not send {name}'s packument just now"
    return ""


def _make(mirror: Mirror, body: bytes, kind: str, base: str, why: str) -> Page:
    held_only = False
    if why:
        body, held_only = npm.only(body, mirror.store.held, why)
    out = npm.render(body, base)
    return Page(out, f'"{hashlib.sha256(out).hexdigest()}"', kind, held_only)


async def tarball(request: web.Request) -> web.StreamResponse:
    mirror = mirror_of(request)
    name, file = _name(request), request.match_info["file"]
    if not npm.valid_file(file):
        raise NotFound("no such tarball")
    key = npm.tarball_key(name, file)
    held = await mirror.blob(key)
    if held is not None:  # the hot path: one lookup
        return await respond.blob(request, mirror, held)
    if mirror.named(key) is None:
        # a lockfile names tarballs directly (`npm ci`): their hashes are in the packument
        await read(mirror, name, abbreviated=False)
    return await respond.file(request, key)
