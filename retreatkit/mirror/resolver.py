"""Upstream names through the system's resolver, each lookup on a daemon thread of its own.

The system's resolver is /etc/hosts, nsswitch and resolv.conf, as every client sees it.

getaddrinfo cannot be cancelled: when the resolver never answers, glibc holds the call
for its own timeouts (5 s, twice, by default). On a pool thread that holds a worker the
mirror needs for disk work, and the pool is joined at exit, so Ctrl-C would wait for the
dead resolver too. A daemon thread holds nothing anyone waits for; the mirror's own
bound (`connect_timeout`) ends the wait for an answer, and its upstream health keeps
lookups of a dead name to one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import socket
import threading
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from retreatkit.mirror import hops

MAX_LOOKUPS = 16  # at once; more wait (each is bounded by the caller's timeout)
_NUMERIC = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV


def _lookup(host: str, port: int, family: int) -> list[ResolveResult]:
    infos = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, family=family, flags=socket.AI_ADDRCONFIG
    )
    found: list[ResolveResult] = []
    for fam, _, proto, _, address in infos:
        if fam == socket.AF_INET6 and len(address) >= 4 and address[3]:
            # a link-local address needs its scope: getnameinfo writes it as `addr%scope`
            name, service = socket.getnameinfo(address, _NUMERIC)
            resolved, resolved_port = name, int(service)
        else:
            resolved, resolved_port = str(address[0]), int(address[1])
        found.append(
            ResolveResult(
                hostname=host,
                host=resolved,
                port=resolved_port,
                family=fam,
                proto=proto,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
        )
    return found


class DaemonResolver(AbstractResolver):
    def __init__(self) -> None:
        self._slots = asyncio.Semaphore(MAX_LOOKUPS)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        async with self._slots:
            loop = asyncio.get_running_loop()
            answer: asyncio.Future[list[ResolveResult]] = loop.create_future()

            def settle(result: Any, failed: bool) -> None:
                if not answer.done():  # the caller may have given up already
                    if failed:
                        answer.set_exception(result)
                    else:
                        answer.set_result(result)

            def work() -> None:
                try:
                    result: Any = _lookup(host, port, family)
                    failed = False
                except OSError as exc:
                    result, failed = exc, True
                with contextlib.suppress(RuntimeError):  # the loop closed while it waited
                    loop.call_soon_threadsafe(settle, result, failed)

            threading.Thread(target=work, name="mirror-resolve", daemon=True).start()
            return await answer

    async def close(self) -> None:
        pass


def session() -> aiohttp.ClientSession:
    """The mirror's client session: its own resolver, no environment proxies (the mirror
    talks to the upstreams it was given, only), bytes as the upstream sent them. It asks
    for no content coding by default: an index's hashes name a file as published, and a
    server that compresses what a client accepts compressed (Apache's mod_deflate, a CDN)
    would otherwise send bytes that match nothing. Index pages ask for gzip and are
    decoded whole (Fetcher.get_index): on a metered uplink they are most of the bytes.

    Its pool has no limit of its own: the fetcher bounds what it asks at once (downloads,
    pages), and waits its turn in its own queues. aiohttp's limit (100 connections) was a
    second queue inside the connect timeout: with 100 pages coming slowly, the next
    request waited there, timed out, and the upstream was marked down unasked.

    Its connector keeps each request to the addresses the fetcher allows it (hops.py):
    a redirect from an upstream elsewhere never connects to this machine or its link."""
    connector = hops.connector()(
        resolver=DaemonResolver(), limit=0, socket_factory=hops.open_socket
    )
    return aiohttp.ClientSession(
        connector=connector, auto_decompress=False, trust_env=False,
        headers={"Accept-Encoding": "identity"},
    )  # fmt: skip


class Sessions:
    """The mirror's one upstream session, made when first wanted, or ahead of that by
    `warm()`. Making it imports aiohttp's client, which a guest loads only now (its aiohttp
    imports names when first read: image/lazyinit.py): about a second on an emulated CPU
    that must not come before the mirror's first answer. Where aiohttp was imported whole
    (on a host) the import is already done."""

    def __init__(self, made: aiohttp.ClientSession | None = None) -> None:
        self._made = made
        self._making: asyncio.Future[aiohttp.ClientSession] | None = None

    def warm(self) -> None:
        """Start making it, in the background."""
        if self._made is None and self._making is None:
            self._making = asyncio.ensure_future(self._make())

    async def get(self) -> aiohttp.ClientSession:
        if self._made is None:
            self.warm()
            assert self._making is not None
            self._made = await asyncio.shield(self._making)  # one caller giving up: not it
        return self._made

    async def _make(self) -> aiohttp.ClientSession:
        await asyncio.to_thread(importlib.import_module, "aiohttp.client")
        return session()

    async def close(self) -> None:
        if self._made is None and self._making is not None:
            with contextlib.suppress(Exception):
                self._made = await self._making
        if self._made is not None:
            await self._made.close()
