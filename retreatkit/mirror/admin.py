"""The mirror's lists on the admin endpoint (docs/admin-api.md): downloads, under way and done."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from retreatkit.mirror.service import Mirror

MAX_ITEMS = 100  # each list; the recent ones are bounded by the fetcher too


def routes(mirror: Callable[[], Mirror | None]) -> list[web.RouteDef]:
    """`mirror` gives the running mirror, or None before it starts."""

    async def fetches(request: web.Request) -> web.Response:
        running = mirror()
        if running is None:
            return web.json_response({"in_progress": [], "recent": []})
        lists = running.fetcher.fetches()
        return web.json_response({name: items[:MAX_ITEMS] for name, items in lists.items()})

    return [web.get("/mirror/fetches", fetches)]
