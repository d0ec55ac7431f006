"""Status, lists, logs and actions of admin endpoints, over HTTP only (no Textual here).

Every failure a user can meet becomes a SourceError whose message is one line naming the
endpoint: unreachable, a refused token, an answer that is not what the contract says.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from retreatkit import units

TIMEOUT = 5.0
MAX_BODY = 8 << 20  # a list larger than this is an endpoint misbehaving
# a status is a few kB (its top lists have ten items): one past this is an endpoint
# misbehaving, and is never parsed (8 MB of `{}` took 300-700 MB to)
MAX_STATUS = 250_000
MAX_EVENT = 1 << 20
FOUND = "(found on the LAN)"
LOG_IDLE = 45.0  # the stream sends a keepalive every 15 s; silence past this is a dead peer


class SourceError(Exception):
    """One line for the organiser: what failed at which endpoint."""


@dataclass(frozen=True)
class Endpoint:
    url: str  # http://host:port
    token: str | None = None
    label: str | None = None  # how screens name it; host:port when not given
    # found by its announcement on the LAN, which anyone can make (a neighbour's fake
    # beside the organiser's): never sent the token, never sent an action, and named so
    # wherever it is listed
    found: bool = False

    @property
    def name(self) -> str:
        name = self.label or urlsplit(self.url).netloc
        return f"{name} {FOUND}" if self.found else name

    def read_only(self) -> str | None:
        """Why no action may go to this endpoint (one line), or None when they may."""
        if not self.found:
            return None
        return (
            f"{self.name}: nothing sent: anyone can announce an endpoint on the LAN, so one"
            f" found there is only read; to act on it, name it: --connect {self.url}"
        )


def endpoint_url(text: str) -> str:
    """`host:port`, `http://host:port/` or `.../status` as `http://host:port`."""
    text = text.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an admin endpoint URL: {text!r} (expected http://HOST:PORT)")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    return f"{parts.scheme}://{parts.netloc}"


class AdminClient:
    """One endpoint. Use `async with`, or call `close()`."""

    def __init__(self, endpoint: Endpoint, timeout: float = TIMEOUT) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _headers(self) -> dict[str, str]:
        token = self.endpoint.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # no proxies from the environment: the admin endpoint is on this LAN
            self._session = aiohttp.ClientSession(trust_env=False, headers=self._headers())
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def status(self) -> dict[str, Any]:
        doc = await self.request("GET", "/status", limit=MAX_STATUS)
        if not isinstance(doc, dict):
            raise SourceError(f"{self.endpoint.name}: /status is not a JSON object")
        return doc

    async def get_json(self, path: str) -> Any:
        return await self.request("GET", path)

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float | None = None,
        limit: int = MAX_BODY,
    ) -> Any:
        """JSON back (or the text, for an answer that is not JSON but 2xx); an answer past
        `limit` bytes is refused unread."""
        name = self.endpoint.name
        if method not in ("GET", "HEAD") and (why := self.endpoint.read_only()):
            raise SourceError(why)
        timeout = self.timeout if timeout is None else timeout
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            async with self.session.request(
                method,
                self.endpoint.url + path,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as response:
                raw = await _body(response, limit)
                kind = response.content_type
                code = response.status
        except TimeoutError:
            raise SourceError(f"{name}: no answer within {timeout:g} s") from None
        except aiohttp.ClientConnectorError as exc:
            raise SourceError(f"{name}: cannot connect ({_why(exc)})") from None
        except aiohttp.ClientResponseError:  # bytes that are no HTTP answer (a relay's port)
            raise SourceError(
                f"{name}: the answer is not HTTP: is {self.endpoint.url} an admin endpoint?"
            ) from None
        except aiohttp.ClientError as exc:
            raise SourceError(f"{name}: the connection broke ({type(exc).__name__})") from None
        if raw is None:
            raise SourceError(
                f"{name}: {path} answered more than {units.size(limit)}, far more than an"
                " admin endpoint sends"
            )
        text = raw.decode("utf-8", "replace")
        if code == 401:
            if self.endpoint.token:
                raise SourceError(
                    f"{name}: the admin token was refused (pass --token or set "
                    "RETREATKIT_TOKEN to this endpoint's token)"
                )
            if self.endpoint.found:
                raise SourceError(
                    f"{name}: not sent the admin token, as anyone can announce an endpoint on"
                    f" the LAN; to watch it, name it: --connect {self.endpoint.url}"
                )
            raise SourceError(f"{name}: needs the admin token (--token or RETREATKIT_TOKEN)")
        if not 200 <= code < 300:
            first = text.strip().splitlines()[0][:200] if text.strip() else ""
            if 400 <= code < 500 and first and not first.startswith(f"{code}:"):
                # refused, in the endpoint's own words ("no local record named x"): the
                # request's method, path and code add nothing the organiser can act on.
                # aiohttp's own "404: Not Found" (a route this version lacks) keeps them.
                raise SourceError(f"{name}: {first}")
            raise SourceError(
                f"{name}: {method} {path} answered HTTP {code}" + (f": {first}" if first else "")
            )
        if code == 204:
            return None
        if kind != "application/json":
            if method == "GET":
                raise SourceError(f"{name}: {path} answered {kind or 'no type'}, not JSON")
            return text.strip()
        try:
            return json.loads(text)
        except ValueError:
            raise SourceError(f"{name}: {path} answered something that is not JSON") from None
        except RecursionError:  # [[[[... : the parser's depth is Python's recursion limit
            raise SourceError(f"{name}: {path} answered JSON nested too deeply to read") from None

    async def logs(self, after: int = 0) -> AsyncIterator[list[dict[str, Any]]]:
        """Batches of log records from `GET /logs` (SSE), as they arrive."""
        name = self.endpoint.name
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_read=LOG_IDLE)
        try:
            async with self.session.get(
                f"{self.endpoint.url}/logs",
                params={"after": str(after)},
                timeout=timeout,
                allow_redirects=False,  # as request(): a redirect would choose where the token goes
            ) as response:
                if response.status == 401:
                    raise SourceError(f"{name}: the log stream needs the admin token")
                if response.status != 200:
                    raise SourceError(f"{name}: /logs answered HTTP {response.status}")
                pending = b""
                async for chunk in response.content.iter_any():
                    pending += chunk
                    events = pending.split(b"\n\n")
                    pending = events.pop()
                    if len(pending) > MAX_EVENT:
                        raise SourceError(f"{name}: /logs sent an event over 1 MiB")
                    batch = _events(events)
                    if batch:
                        yield batch
        except TimeoutError:
            raise SourceError(f"{name}: the log stream went silent") from None
        except aiohttp.ClientConnectorError as exc:
            raise SourceError(f"{name}: cannot connect ({_why(exc)})") from None
        except aiohttp.ClientError as exc:
            raise SourceError(f"{name}: the log stream broke ({type(exc).__name__})") from None
        raise SourceError(f"{name}: the log stream ended")


async def _body(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, however many pieces it comes in (a slow link splits a status over
    many TCP segments), or None past `limit` bytes, read no further."""
    if response.content_length is not None and response.content_length > limit:
        return None
    chunks: list[bytes] = []
    held = 0
    async for chunk in response.content.iter_any():
        held += len(chunk)
        if held > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _why(exc: aiohttp.ClientConnectorError) -> str:
    """`connection refused`, `no route to host`: the OS's words, not aiohttp's repr."""
    error = exc.os_error
    if error.errno:
        return os.strerror(error.errno).lower()
    return (error.strerror or str(error) or type(error).__name__).lower()


def _events(raw: list[bytes]) -> list[dict[str, Any]]:
    """The `data:` of SSE events as dicts; comments and junk are skipped. Under a flood
    these are hundreds at a time: one JSON array parsed is cheaper than one parse each."""
    datas = [_data(event) for event in raw]
    datas = [d for d in datas if d]
    if not datas:
        return []
    try:
        docs = json.loads(b"[" + b",".join(datas) + b"]")
    except (ValueError, RecursionError):  # one bad event: take the others one by one
        docs = []
        for data in datas:
            try:
                docs.append(json.loads(data))
            except (ValueError, RecursionError):  # not JSON, or [[[[... past any depth
                continue
    return [doc for doc in docs if isinstance(doc, dict)]


def _data(event: bytes) -> bytes:
    if event.startswith(b"data: ") and b"\n" not in event:  # what /logs sends: one line
        return event[6:]
    return b"".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))
