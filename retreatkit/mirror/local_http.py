"""The local index on the admin endpoint: the organiser's uploads, behind the admin token.

`PUT /mirror/files/FILENAME` with the file as the body (`curl -T course-1.0-py3-none-any.whl
-H "Authorization: Bearer $T" http://127.0.0.1:8080/mirror/files/`) publishes it; the admin
endpoint's access rules ask every action for the token. The body is streamed to disk,
never held in memory, and refused past `local.MAX_FILE`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable

from aiohttp import web

from retreatkit.mirror import local
from retreatkit.mirror.blobs import disk_error
from retreatkit.mirror.errors import MirrorError
from retreatkit.mirror.service import Mirror

CHUNK = 1 << 20


def admin_routes(mirror: Callable[[], Mirror | None]) -> list[web.RouteDef]:
    async def upload(request: web.Request) -> web.Response:
        running = mirror()
        if running is None:
            raise web.HTTPServiceUnavailable(text="the mirror is not running yet\n")
        filename = request.match_info["filename"]
        try:
            local.project_of(filename)
        except local.BadFile as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        length = request.content_length
        if length is not None and length > local.MAX_FILE:
            raise web.HTTPRequestEntityTooLarge(local.MAX_FILE, length)
        store = running.store
        tmp = store.tmp / f"upload-{secrets.token_hex(8)}.part"
        try:
            written = 0
            with tmp.open("wb") as f:
                async for chunk in request.content.iter_chunked(CHUNK):
                    written += len(chunk)
                    if written > local.MAX_FILE:
                        raise web.HTTPRequestEntityTooLarge(local.MAX_FILE, written)
                    await asyncio.to_thread(f.write, chunk)
            if length is not None and written != length:
                raise web.HTTPBadRequest(text="the upload was cut short\n")
            line = await store.run(lambda: local.add(store, tmp, filename))
        except MirrorError as exc:
            status = exc.status if exc.status in (400, 409) else 500
            return web.Response(status=status, text=f"{exc}\n")
        except OSError as exc:
            failed = disk_error(exc, f"storing {filename}")
            return web.Response(status=failed.status, text=f"{failed}\n")
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        return web.json_response({"published": line}, status=201)

    return [web.put("/mirror/files/{filename}", upload)]
