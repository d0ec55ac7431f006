"""`GET /logs`: the log ring's records as server-sent events, then live.

Apart from the ring itself so that a service can keep its records from the first line
on without loading the HTTP server's code first (a guest answers before that loads).
"""

from __future__ import annotations

import contextlib
import json

from aiohttp import web

from retreatkit.admin.logs import LogRing

KEEPALIVE = 15.0  # seconds between comment lines, so idle readers see a live stream
RING_KEY = web.AppKey("log_ring", LogRing)


async def close_streams(app: web.Application) -> None:
    """on_shutdown: a stream waiting for records would hold the shutdown up."""
    app[RING_KEY].close_streams()


async def stream(request: web.Request) -> web.StreamResponse:
    """`GET /logs?after=SEQ`: every record after SEQ (0: everything kept), then live."""
    ring = request.app[RING_KEY]
    try:
        seq = int(request.query.get("after", "0"))
    except ValueError:
        raise web.HTTPBadRequest(text="after is a record number, such as after=0\n") from None
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    await response.prepare(request)
    with contextlib.suppress(ConnectionResetError):  # the reader went away
        await _follow(ring, seq, response)
    return response


async def _follow(ring: LogRing, seq: int, response: web.StreamResponse) -> None:
    while not ring.closed:
        dropped, records = ring.after(seq)
        chunks = []
        if dropped:
            chunks.append(f"data: {json.dumps({'dropped': dropped})}\n\n")
        for record in records:
            chunks.append(f"data: {json.dumps(record)}\n\n")
            seq = record["seq"]
        if chunks:
            await response.write("".join(chunks).encode())  # waits while the reader is slow
            continue
        await ring.wait(seq, KEEPALIVE)
        if ring.next <= seq + 1 and not ring.closed:
            await response.write(b": keepalive\n\n")
