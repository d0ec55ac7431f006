"""PyPI's routes: the simple index (PEP 503, 691, 700) and its files, over the mirror's policy."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from functools import partial

from aiohttp import web

from retreatkit.mirror import local, pypi, respond
from retreatkit.mirror.blobs import valid_hex
from retreatkit.mirror.errors import (
    MirrorError,
    NotFound,
    UpstreamDown,
    UpstreamError,
    UpstreamUnreachable,
)
from retreatkit.mirror.memory import Page
from retreatkit.mirror.records import Object, Processed
from retreatkit.mirror.respond import mirror_of
from retreatkit.mirror.service import IndexAnswer, Mirror
from retreatkit.mirror.store import Store

log = logging.getLogger("retreatkit.mirror")


def routes() -> list[web.RouteDef]:
    return [
        web.get("/pypi/simple/", root),
        web.get("/pypi/simple", to_root),
        web.get("/pypi/simple/{project}/", project),
        web.get("/pypi/simple/{project}", to_project),
        web.get("/pypi/files/{sha256}/{filename}", file),
    ]


async def to_root(request: web.Request) -> web.Response:
    raise web.HTTPMovedPermanently("/pypi/simple/")


def projects(store: Store) -> list[str]:
    """Every project the mirror has a page for: mirrored, or the organiser's own."""
    return sorted({*store.names(pypi.page_key("")), *local.projects(store)})


async def root(request: web.Request) -> web.Response:
    mirror = mirror_of(request)
    names = projects(mirror.store)
    as_json = pypi.wants_json(request.headers.get("Accept", ""))
    return web.Response(
        body=pypi.render_root(names, as_json),
        headers={
            "Content-Type": pypi.JSON_TYPE if as_json else "text/html",
            "Vary": "Accept",
            "Cache-Control": "max-age=60",
        },
    )


async def to_project(request: web.Request) -> web.Response:
    name = request.match_info["project"]
    if not pypi.valid_project(name):
        raise NotFound("not a project name")
    raise web.HTTPMovedPermanently(f"/pypi/simple/{pypi.normalize(name)}/")


async def project(request: web.Request) -> web.StreamResponse:
    mirror = mirror_of(request)
    asked = request.match_info["project"]
    if not pypi.valid_project(asked):
        raise NotFound("not a project name")
    name = pypi.normalize(asked)
    if name != asked:
        raise web.HTTPMovedPermanently(f"/pypi/simple/{name}/")
    record = mirror.store.get(local.record_key(name))
    if record is not None:
        mirror.stats.asked(f"pypi/{name}")
        return await _local(request, mirror, name, record)
    if mirror.settings.pypi is None:
        raise UpstreamError("no PyPI upstream configured (--pypi URL)")
    url = mirror.settings.pypi.rstrip("/") + f"/{name}/"
    mirror.stats.asked(f"pypi/{name}")
    process = partial(_process, name, url)
    answer = await mirror.index(
        pypi.page_key(name), url, pypi.ACCEPT_UPSTREAM, process, pypi.MAX_PAGE
    )
    offline = answer.stale or mirror.ecosystem_down("pypi", url)
    as_json = pypi.wants_json(request.headers.get("Accept", ""))
    page = await _render(mirror, answer, as_json, offline)
    if page.held_only:
        mirror.stats.offline_pages += 1
    # max-age 0: a client asks again each time (a 304 while it is the same page). uv keeps
    # a page for its max-age, and one kept from before the uplink went lists files the
    # mirror does not hold as if they could be had: uv picked them and failed on their 504,
    # where the page served offline lists them yanked and uv takes what is held.
    return await respond.page(request, page, stale=answer.stale, offline=page.held_only, max_age=0)


async def _local(
    request: web.Request, mirror: Mirror, name: str, record: Object
) -> web.StreamResponse:
    """A project with local files: those alone, or (if the organiser allowed it) with the
    upstream's beside them; upstream files never replace a local one of the same name."""
    upstream: IndexAnswer | None = None
    offline = False
    if name in mirror.settings.allow_upstream and mirror.settings.pypi is not None:
        url = mirror.settings.pypi.rstrip("/") + f"/{name}/"
        process = partial(_process, name, url)
        with contextlib.suppress(UpstreamError, NotFound):
            upstream = await mirror.index(
                pypi.page_key(name), url, pypi.ACCEPT_UPSTREAM, process, pypi.MAX_PAGE
            )
            offline = upstream.stale or mirror.ecosystem_down("pypi", url)
    as_json = pypi.wants_json(request.headers.get("Accept", ""))
    merged = upstream.obj.digest if upstream is not None else ""
    key = (record.digest, merged, "json" if as_json else "html", str(offline))
    body = upstream.body if upstream is not None else None
    cost = len(body) if body is not None else 0
    page = await mirror.render(key, _make_local, mirror, name, body, as_json, offline, cost=cost)
    # the upstream's files beside: asked again each time, as a mirrored page (project)
    max_age = 60 if upstream is None else 0
    stale = upstream is not None and upstream.stale
    return await respond.page(request, page, stale=stale, offline=offline, max_age=max_age)


def _make_local(
    mirror: Mirror, name: str, upstream: bytes | None, as_json: bool, offline: bool
) -> Page:
    project = local.as_project(name, local.load(mirror.store, name))
    if upstream is not None:
        theirs = pypi.load(upstream)
        held = mirror.store.held(theirs.keys())
        theirs = theirs.only(held, NOT_HELD) if offline else theirs.with_sizes(held)
        mine = {f.filename for f in project.files}
        extra = tuple(f for f in theirs.files if f.filename not in mine)
        project = pypi.Project(name, project.files + extra)
    return _page(project, as_json)


def _page(project: pypi.Project, as_json: bool, held_only: bool = False) -> Page:
    if as_json:
        out, kind = pypi.render_json(project), pypi.JSON_TYPE
    else:
        out, kind = pypi.render_html(project), "text/html"
    return Page(out, f'"{hashlib.sha256(out).hexdigest()}"', kind, held_only)


def _process(name: str, url: str, body: bytes, content_type: str) -> Processed:
    return pypi.process(name, body, content_type, url)


async def _render(mirror: Mirror, answer: IndexAnswer, as_json: bool, offline: bool) -> Page:
    """The page in the client's format: sizes the store learned filled in, or (offline)
    only what the store holds. Made off the loop, once per page, format and change."""
    obj = answer.obj
    name = obj.key.removeprefix(pypi.page_key(""))
    variant = ("json" if as_json else "html") + ("-offline" if offline else "")
    key = (obj.digest, variant, str(mirror.generation[name]))
    cost = len(answer.body)
    return await mirror.render(key, _make, mirror, answer.body, as_json, offline, cost=cost)


def _make(mirror: Mirror, body: bytes, as_json: bool, offline: bool) -> Page:
    """Offline, the files held, so the client picks one it can install, and the rest
    yanked (pypi.Project.only); but with none of them held, every file as it is: an
    empty page is what pip says of a name that does not exist (`from versions: none`),
    and it shows nothing of a page's error. Listed, the file the client picks is
    answered with why it cannot be had (the upstream is down, uplink.Uplink.down),
    which pip and uv print."""
    project = pypi.load(body)
    held = mirror.store.held(project.keys())
    if offline:
        only = project.only(held)
        if only.files or not project.files:
            return _page(project.only(held, NOT_HELD), as_json, held_only=True)
    return _page(project.with_sizes(held), as_json)


# why an offline page lists a file as yanked: pip prints it as "Reason for being yanked"
NOT_HELD = "not held by this mirror, whose upstream is down"


async def file(request: web.Request) -> web.StreamResponse:
    sha, filename = request.match_info["sha256"], request.match_info["filename"]
    if not valid_hex("sha256", sha) or not pypi.valid_filename(filename):
        raise NotFound("no such file")
    name = pypi.source_name(sha, filename)
    if filename.endswith(".whl.metadata"):
        return await _metadata(request, mirror_of(request), name, filename)
    return await respond.file(request, name)


async def _metadata(
    request: web.Request, mirror: Mirror, name: str, filename: str
) -> web.StreamResponse:
    """A wheel's core metadata file (PEP 658): held, made from the wheel held, or fetched.
    An upstream that lists the file but cannot give it (a 404, bytes that fail the
    index's hash) while the wheel is fine would fail pip and uv, which take no wheel whose
    metadata file failed them: the mirror fetches the wheel (the client's next request)
    and makes the file from it, checked against the index's hash all the same."""
    made = await _made(request, mirror, name, filename)
    if made is not None:
        return made
    try:
        return await respond.file(request, name)
    except UpstreamError as exc:
        wheel = mirror.named(name.removesuffix(".metadata"))
        if isinstance(exc, UpstreamUnreachable | UpstreamDown) or wheel is None:
            raise
        log.warning("%s: %s; making it from the wheel", filename, exc)
        try:
            await mirror.fetched(mirror.fetch(wheel))
        except MirrorError:
            raise exc from None
        made = await _made(request, mirror, name, filename)
        if made is None:  # the wheel's own metadata is not what the index promised either
            raise exc from None
        return made


async def _made(
    request: web.Request, mirror: Mirror, name: str, filename: str
) -> web.StreamResponse | None:
    """The metadata file made from the wheel held, if the store lacked it and could make
    it: a miss (it crossed no uplink, but was not held), as the seed counts it."""
    made = await _metadata_from_wheel(mirror, name, filename)
    if made is None:
        return None
    found = await mirror.blob(name)
    if found is None:  # made, but the disk could not keep it
        return web.Response(body=made, content_type="application/octet-stream")
    return await respond.blob(request, mirror, found, hit=False)


async def _metadata_from_wheel(mirror: Mirror, name: str, filename: str) -> bytes | None:
    """A wheel's core metadata (PEP 658) the store lacks, taken from the wheel it holds:
    the file is that wheel's METADATA byte for byte, so it is checked against the hash
    the index gave and stored as if fetched. pip asks for it before the wheel, and a wheel
    held without it (fetched by uv, or by a client that reads no metadata) would
    otherwise fail pip's install while the upstream is out of reach, and cost a request
    upstream while it is not. Returns the file when it made it (kept, or not when the
    disk is full), None when it did not."""
    if await mirror.blob(name) is not None:
        return None
    wheel = await mirror.blob(name.removesuffix(".metadata"))
    source = mirror.named(name)
    if wheel is None or source is None or "sha256" not in source.hashes:
        return None
    wheel_file = filename.removesuffix(".metadata")
    try:
        data: bytes | None = await mirror.offload(local.core_metadata, wheel.path, wheel_file)
    except local.BadFile:
        return None
    if data is None or hashlib.sha256(data).hexdigest() != source.hashes["sha256"]:
        return None  # not what the index promised: the upstream's copy is fetched instead
    store = mirror.store

    def keep() -> None:
        digest = store.put_bytes(data, {"sha256": source.hashes["sha256"]})
        store.put(Object(name, digest, len(data), "application/octet-stream", time.time()))

    with contextlib.suppress(MirrorError):  # a full disk: served, and made again next time
        await store.run(keep)
    return data
