"""Who may read and act on the admin endpoint: the token, loopback, and no cross-site acts.

Reads (`GET`/`HEAD`) are open on a loopback endpoint; every action, the log stream and
a read of a secret (a path ending in `/token`: a VM guest's own admin token) need
`Authorization: Bearer TOKEN`. An endpoint bound beyond loopback refuses everything
without the token. A browser never attaches that header to a simple cross-site request
and only sends it cross-site after a CORS preflight, which is refused here, so a web page
on the organiser's machine cannot act (docs/admin-api.md).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from retreatkit.lanaddress import is_loopback

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_READS = ("GET", "HEAD")
NEEDS_TOKEN_TO_READ = ("/logs",)
SECRET = "/token"  # noqa: S105 - a path ending so hands out a secret: never an open read


def _host_of(header: str) -> str:
    """The host part of a Host header: `127.0.0.1:8080`, `[::1]:8080`, `localhost`."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _needs_token(path: str) -> bool:
    # any user of the machine can read loopback; a guest's token opens its endpoint
    return path in NEEDS_TOKEN_TO_READ or path.rstrip("/").endswith(SECRET)


def _refuse(status: type[web.HTTPException], text: str) -> web.HTTPException:
    return status(text=text + "\n")


Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def middleware(token: str, bound_host: str) -> Middleware:
    """The access rules for an endpoint bound to `bound_host`, over every route (the
    services' own routes included)."""
    public = not is_loopback(bound_host)
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS":
            # a CORS preflight: answered with no Access-Control-* header, so the browser
            # never sends the real cross-site request
            raise _refuse(web.HTTPForbidden, "no cross-origin requests")
        header = request.headers.get("Authorization")
        if header is not None:
            # aiohttp keeps bytes that are not UTF-8 as lone surrogates: encode them back,
            # so a stray byte is a wrong token, not a 500 and a traceback in the log
            if not hmac.compare_digest(header.encode(errors="surrogateescape"), expected):
                raise _refuse(web.HTTPUnauthorized, "wrong admin token")
            return await handler(request)
        if public:
            raise _refuse(
                web.HTTPUnauthorized,
                "this admin endpoint needs its token (Authorization: Bearer TOKEN)",
            )
        if request.method not in OPEN_READS or _needs_token(request.path):
            raise _refuse(web.HTTPUnauthorized, "this needs the admin token")
        # DNS rebinding: a page whose name now points at 127.0.0.1 still sends its own
        # name as Host; open reads answer only requests addressed to loopback
        if not is_loopback(_host_of(request.headers.get("Host", ""))):
            raise _refuse(web.HTTPForbidden, "open reads answer loopback names only")
        return await handler(request)

    return check
