"""The mirror's HTTP routes: each ecosystem's, the attendee page and the kept lists.

Responses, and what they count, are respond.py's; where answers come from, service.py's.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from aiohttp import web

from retreatkit.mirror import apt, apt_http, npm_http, opam_http, page, pypi_http, respond
from retreatkit.mirror.errors import NotFound
from retreatkit.mirror.lists import list_key
from retreatkit.mirror.memory import Page
from retreatkit.mirror.records import Processed
from retreatkit.mirror.respond import MIRROR_KEY, mirror_of
from retreatkit.mirror.service import Mirror
from retreatkit.mirror.wheels import summary as wheel_summary

log = logging.getLogger("retreatkit.mirror")
MAX_LIST = 128 * 1024 * 1024
SUMMARY_KEY = web.AppKey("summary", list)  # [(what it was made from), page.Summary]


def make_app(mirror: Mirror) -> web.Application:
    # clients send no bodies: GET and HEAD only
    app = web.Application(middlewares=[respond.errors], client_max_size=4096)
    app[MIRROR_KEY] = mirror
    app[SUMMARY_KEY] = []
    app.router.add_get("/", home)
    app.router.add_routes(pypi_http.routes())
    app.router.add_routes(opam_http.routes())
    app[opam_http.PACKAGES] = opam_http.Packages()
    app[opam_http.NAMES] = opam_http.Names()
    app.router.add_routes(npm_http.routes())
    app.router.add_get("/lists/{key}", cached_list)
    apt_http.install(app)  # last but one: its `/NAME/...` would match any path
    app.router.add_get("/{path:.*}", nothing)  # what no route matches: the store's own files
    return app


async def nothing(request: web.Request) -> web.Response:
    raise NotFound(apt_http.NOTHING)


# -- the page for attendees ---------------------------------------------------------------


async def home(request: web.Request) -> web.Response:
    mirror = mirror_of(request)
    base = page.base_url(mirror.settings.public_url, request.headers.get("Host"), mirror.lan_url)
    made_from = (mirror.stats.misses, mirror.store.check.files, mirror.store.check.dropped)
    cached = request.app[SUMMARY_KEY]
    if not cached or cached[0] != made_from:
        cached[:] = [made_from, await mirror.offload(_summary, mirror)]
    offline = mirror.uplink_down()
    kit = await mirror.kit.verdict()
    now = replace(
        cached[1], bytes_saved=mirror.stats.bytes_saved, offline=offline, kit=kit.offered,
        kit_waiting=kit.served,
    )  # fmt: skip
    return web.Response(text=page.render(base, now), content_type="text/html")


def _summary(mirror: Mirror) -> page.Summary:
    """What the store holds, for the page (a scan of the catalog: run off the loop)."""
    files = [
        (key.rsplit("/", 1)[-1], size)
        for key, _, size in mirror.store.catalog("pypi/")
        if not key.startswith("pypi/simple/") and not key.endswith(".metadata")
    ]
    platforms, pythons, sources = wheel_summary(name for name, _ in files)
    opam_digests = {digest for _, digest, _ in mirror.store.catalog("opam/")}
    npm_tarballs = sum("/-/" in key for key, _, _ in mirror.store.catalog("npm/"))
    debs, suites = 0, list[tuple[str, str, str]]()
    for key, digest, _ in mirror.store.catalog("apt/"):
        debs += key.endswith(".deb")
        parts = key.split("/")
        if len(parts) == 5 and parts[2] == "dists" and parts[4] in ("InRelease", "Release"):
            if suites and suites[-1][:2] == (parts[1], parts[3]):
                continue  # InRelease and Release of one suite: one line
            try:
                release = apt.parse_release(mirror.store.read(digest))
            except (OSError, apt.AptError):
                continue
            suites.append((parts[1], parts[3], " ".join(release.components) or "main"))
    return page.Summary(
        projects=len(pypi_http.projects(mirror.store)),  # the organiser's own count too
        files=len(files),
        size_bytes=sum(size for _, size in files),
        platforms=platforms,
        pythons=pythons,
        sources=sources,
        opam_archives=len(opam_digests),
        bytes_saved=0,
        offline=False,
        npm_tarballs=npm_tarballs,
        debs=debs,
        apt_origins=tuple(mirror.settings.apt),
        apt_suites=tuple(s for s in suites if s[0] in mirror.settings.apt),
    )


# -- other lists (blocklists), only those configured: not an open proxy -----------------


def _keep(body: bytes, content_type: str) -> Processed:
    return Processed(body, content_type or "text/plain")


async def cached_list(request: web.Request) -> web.StreamResponse:
    mirror = mirror_of(request)
    key = request.match_info["key"]
    urls = {list_key(url): url for url in mirror.settings.lists}
    if key not in urls:
        raise NotFound("not a list this mirror keeps")
    answer = await mirror.index(f"lists/{key}", urls[key], "*/*", _keep, MAX_LIST)
    kind = answer.obj.content_type.split(";")[0]
    body = Page(answer.body, f'"{answer.obj.digest}"', kind)
    return await respond.page(request, body, stale=answer.stale, offline=False, max_age=0)
