"""Where a redirect's connection goes, in process: the addresses the rule (redirects.py)
checks are the ones connected to, however the name answers from one lookup to the next.

127.0.0.2 and 127.0.0.3 stand for hosts on the internet here (`near` says so); 127.0.0.1
is this machine, where `Site`s record every request that reaches them."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer

from retreatkit.mirror import redirects, resolver
from retreatkit.mirror.errors import UpstreamError
from retreatkit.mirror.fetch import Reply
from retreatkit.mirror.testing import mirror_client, settings

FAR = ("127.0.0.2", "127.0.0.3")  # "public" upstreams and hosts
HERE = "127.0.0.1"
PUBLIC = "192.0.2.1"  # TEST-NET-1: what a rebinding name answers to a check
LIMIT = 1 << 20
_real_near = redirects.near


def near(address: str) -> bool:
    return address not in FAR and _real_near(address)


class Site:
    """A server on one address: 302 to `moves[path]`, else a small page; `asked` is every
    path that reached it. With `keep_alive` off it closes each connection after answering."""

    def __init__(self, host: str, moves: dict[str, str] | None = None, keep_alive: bool = True):
        self.host, self.moves, self.keep_alive = host, moves or {}, keep_alive
        self.asked: list[str] = []
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self.server = TestServer(app, host=host)

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.asked.append(request.path)
        if request.path in self.moves:
            response: web.StreamResponse = web.Response(
                status=302, headers={"Location": self.moves[request.path]}
            )
        else:
            response = web.Response(text=f"<html>{request.path}</html>", content_type="text/html")
        if not self.keep_alive:
            response.force_close()
        return response


class Names(AbstractResolver):
    """The connector's resolver: each name answers `answers[name]`, (address, port) pairs;
    `asked` counts its lookups. Any other lookup (a check made apart from the connect)
    answers `elsewhere`."""

    def __init__(self) -> None:
        self.answers: dict[str, list[tuple[str, int]]] = {}
        self.asked: dict[str, int] = {}
        self.elsewhere = PUBLIC

    def apart(self, host: str, port: int, family: int) -> list[ResolveResult]:
        return [_result(host, self.elsewhere, port)]

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked[host] = self.asked.get(host, 0) + 1
        if host not in self.answers:
            raise OSError(f"{host}: no such name")
        return [_result(host, address, at) for address, at in self.answers[host]]

    async def close(self) -> None:
        pass


def _result(host: str, address: str, port: int) -> ResolveResult:
    return ResolveResult(
        hostname=host, host=address, port=port, family=socket.AF_INET, proto=0,
        flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
    )  # fmt: skip


Get = Callable[[str], Awaitable[Reply]]


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> Names:
    scripted = Names()
    monkeypatch.setattr(redirects, "near", near)
    monkeypatch.setattr(resolver, "DaemonResolver", lambda: scripted)  # the session's
    monkeypatch.setattr(resolver, "_lookup", scripted.apart)  # the system's, for the rest
    return scripted


@pytest.fixture
async def get(tmp_path: Path, names: Names) -> AsyncIterator[Get]:
    """An index page through the mirror's fetcher and its own upstream session."""
    config = settings(tmp_path / "store", "http://127.0.0.2:9/simple/")
    async with mirror_client(config) as (_, mirror):

        async def fetch(url: str) -> Reply:
            return await mirror.fetcher.get_index(url, {}, LIMIT)

        yield fetch


async def serving(*sites: Site) -> None:
    for site in sites:
        await site.server.start_server()


async def closing(*sites: Site) -> None:
    for site in sites:
        await site.server.close()


def refused(url: str, host: str) -> str:
    return f"upstream redirected {url} to {host}, on the mirror's own machine or link: not followed"


async def test_a_name_that_answers_the_connect_with_this_machine_is_not_followed(
    get: Get, names: Names
) -> None:
    """The name answers a public address to one lookup and 127.0.0.1 to the connect's:
    the mirror looked it up to check it, then connected where the second lookup said."""
    here = Site(HERE)
    upstream = Site(FAR[0])
    await serving(here, upstream)
    try:
        names.answers["rebind.test"] = [(HERE, here.port)]
        upstream.moves["/simple/x/"] = here.url("/admin/", host="rebind.test")
        page = upstream.url("/simple/x/")
        with pytest.raises(UpstreamError) as caught:
            await get(page)
    finally:
        await closing(here, upstream)
    assert str(caught.value) == refused(page, "rebind.test")
    assert here.asked == []


async def test_a_name_with_this_machine_among_its_addresses_is_followed_to_the_others(
    get: Get, names: Names
) -> None:
    here, cdn = Site(HERE), Site(FAR[1])
    upstream = Site(FAR[0])
    await serving(here, cdn, upstream)
    try:
        names.answers["both.test"] = [(HERE, here.port), (FAR[1], cdn.port)]
        upstream.moves["/simple/x/"] = f"http://both.test:{cdn.port}/simple/x/"
        reply = await get(upstream.url("/simple/x/"))
    finally:
        await closing(here, cdn, upstream)
    assert (reply.status, reply.body) == (200, b"<html>/simple/x/</html>")
    assert (here.asked, cdn.asked) == ([], ["/simple/x/"])


async def test_an_upstream_whose_name_answers_this_machine_apart_is_not_taken_for_near(
    get: Get, names: Names
) -> None:
    """Whether the upstream asked is near is where it was connected to: its name may
    answer 127.0.0.1 to a lookup after, and the rule would no longer hold for it."""
    here, upstream = Site(HERE), Site(FAR[0])
    await serving(here, upstream)
    try:
        names.answers["up.test"] = [(FAR[0], upstream.port)]
        names.elsewhere = HERE
        upstream.moves["/simple/x/"] = here.url("/admin/")
        page = upstream.url("/simple/x/", host="up.test")
        with pytest.raises(UpstreamError) as caught:
            await get(page)
    finally:
        await closing(here, upstream)
    assert str(caught.value) == refused(page, HERE)
    assert (upstream.asked, here.asked) == (["/simple/x/"], [])


@pytest.mark.parametrize("keep_alive", [True, False], ids=["pooled", "cached"])
async def test_a_connection_or_answer_kept_from_a_near_upstream_is_not_reused(
    get: Get, names: Names, keep_alive: bool
) -> None:
    """The mirror asked a name of this machine for itself (a local upstream): its
    connection, kept alive, or its answer, cached by the connector (10 s), is no way in
    for a redirect from an upstream elsewhere, whatever the name answers a check."""
    here = Site(HERE, keep_alive=keep_alive)
    upstream = Site(FAR[0])
    await serving(here, upstream)
    try:
        names.answers["near.test"] = [(HERE, here.port)]
        assert (await get(here.url("/simple/own/", host="near.test"))).status == 200
        upstream.moves["/simple/x/"] = here.url("/simple/x/", host="near.test")
        page = upstream.url("/simple/x/")
        with pytest.raises(UpstreamError) as caught:
            await get(page)
    finally:
        await closing(here, upstream)
    assert str(caught.value) == refused(page, "near.test")
    assert here.asked == ["/simple/own/"]
    assert names.asked["near.test"] == 1  # the second came from the pool or the cache


async def test_an_address_of_this_machine_written_out_is_not_followed(get: Get) -> None:
    here, upstream = Site(HERE), Site(FAR[0])
    await serving(here, upstream)
    try:
        upstream.moves["/simple/x/"] = here.url("/simple/x/")
        page = upstream.url("/simple/x/")
        with pytest.raises(UpstreamError) as caught:
            await get(page)
    finally:
        await closing(here, upstream)
    assert str(caught.value) == refused(page, HERE)
    assert here.asked == []


async def test_an_upstream_elsewhere_redirects_to_another_host_elsewhere(
    get: Get, names: Names
) -> None:
    cdn, upstream = Site(FAR[1]), Site(FAR[0])
    await serving(cdn, upstream)
    try:
        names.answers["cdn.test"] = [(FAR[1], cdn.port)]
        upstream.moves["/simple/x/"] = cdn.url("/files/x/", host="cdn.test")
        reply = await get(upstream.url("/simple/x/"))
    finally:
        await closing(cdn, upstream)
    assert (reply.status, reply.body) == (200, b"<html>/files/x/</html>")
    assert upstream.asked == ["/simple/x/"] and cdn.asked == ["/files/x/"]


@pytest.mark.parametrize("by_name", [False, True], ids=["address", "name"])
async def test_an_upstream_on_this_machine_redirects_within_it(
    get: Get, names: Names, by_name: bool
) -> None:
    """An upstream the organiser runs here (a test's, a local devpi) may: it is asked
    by the address or by a name that answers one of this machine's."""
    here = Site(HERE)
    await serving(here)
    try:
        names.answers["local.test"] = [(HERE, here.port)]
        host = "local.test" if by_name else HERE
        here.moves["/simple/x/"] = "/real/x/"
        here.moves["/real/x/"] = here.url("/last/x/", host="local.test")
        reply = await get(here.url("/simple/x/", host=host))
    finally:
        await closing(here)
    assert (reply.status, reply.body) == (200, b"<html>/last/x/</html>")
    assert here.asked == ["/simple/x/", "/real/x/", "/last/x/"]
