"""A huge index page is parsed and stored off the event loop (item 6): another client is
answered while it is being processed; and pages being read and processed at once hold no
more than `max_pages_reading` of memory between them. The order is made by events, not by
sleeps."""

from __future__ import annotations

import asyncio
import gc
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from retreatkit.mirror import fakeupstream, pypi
from retreatkit.mirror.testing import mirror_client, settings

FILES = 10_000


def huge_page(root: Path, name: str = "huge") -> None:
    page = root / "simple" / name
    page.mkdir(parents=True)
    links = "\n".join(
        f'<a href="../../files/{name}-1.{i}-py3-none-any.whl#sha256={i:064x}">'
        f"{name}-1.{i}-py3-none-any.whl</a>"
        for i in range(FILES)
    )
    (page / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}\n</body></html>\n")


async def test_other_clients_are_answered_while_a_huge_page_is_processed(tmp_path: Path) -> None:
    huge_page(tmp_path / "upstream")
    working, release = threading.Event(), threading.Event()
    first = [True]

    async def gated(fn: Callable[..., Any], *args: Any) -> Any:
        """The mirror's offload, whose first job (the huge page) waits for the test."""
        if not first[0]:
            return await asyncio.to_thread(fn, *args)
        first[0] = False

        def held() -> Any:
            working.set()
            release.wait(30)
            return fn(*args)

        return await asyncio.to_thread(held)

    async with fakeupstream.serving(tmp_path / "upstream") as upstream:
        config = settings(tmp_path / "store", f"{upstream.url}simple/")
        async with mirror_client(config, offload=gated) as (client, _mirror):
            huge = asyncio.create_task(client.get("/pypi/simple/huge/"))
            await asyncio.to_thread(working.wait, 30)  # the page is being processed now
            other = await client.get("/pypi/simple/")
            assert other.status == 200  # answered while the page is still in the works
            assert not huge.done()
            release.set()
            r = await huge
            assert r.status == 200
            assert (await r.text()).count("<a href=") == FILES


async def test_pages_past_the_reading_budget_wait_for_the_one_being_processed(
    tmp_path: Path,
) -> None:
    """Parsed, a page takes several times its size (a packument of 88 MB took the mirror
    to 700 MB): two pages that together pass `max_pages_reading` are not processed at
    once; the second waits for the first to be done, then goes."""
    for name in ("huge", "huger"):
        huge_page(tmp_path / "upstream", name)
    started, release = threading.Event(), threading.Event()
    two, waited = asyncio.Event(), asyncio.Event()  # two pages processed at once; one waits
    running, most = [0], [0]

    async def counted(fn: Callable[..., Any], *args: Any) -> Any:
        """The mirror's offload, counting pages being processed; the first waits for the
        test, holding its share of the budget meanwhile."""
        if getattr(fn, "func", fn).__name__ != "_process":
            return await asyncio.to_thread(fn, *args)
        running[0] += 1
        most[0] = max(most[0], running[0])
        if running[0] == 2:
            two.set()
        started.set()

        def held() -> Any:
            release.wait(30)
            return fn(*args)

        try:
            return await asyncio.to_thread(held)
        finally:
            running[0] -= 1

    async with fakeupstream.serving(tmp_path / "upstream") as upstream:
        budget = len(await _page_of(upstream.url, "huge")) * 3 // 2  # one page, not two
        config = settings(tmp_path / "store", f"{upstream.url}simple/", max_pages_reading=budget)
        async with mirror_client(config, offload=counted) as (client, mirror):
            mirror.working.waited = waited.set
            pages = [
                asyncio.create_task(client.get(f"/pypi/simple/{n}/")) for n in ("huge", "huger")
            ]
            async with asyncio.timeout(30):  # a guard against a hang, not a measurement
                await asyncio.to_thread(started.wait, 30)
                await asyncio.wait(
                    [asyncio.create_task(e.wait()) for e in (two, waited)],
                    return_when=asyncio.FIRST_COMPLETED,
                )
            assert not two.is_set() and waited.is_set()
            assert running[0] == 1 and mirror.working.budget.used <= budget
            release.set()
            for page in pages:
                r = await page
                assert r.status == 200 and (await r.text()).count("<a href=") == FILES
            assert most[0] == 1
            assert mirror.working.budget.used == 0


async def _page_of(base: str, name: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.get(f"{base}simple/{name}/") as r:
        return await r.read()


@pytest.mark.parametrize("mode", ["nolength", "gzip"])
async def test_a_page_refused_as_too_large_keeps_nothing_it_read(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page that crosses its limit mid-body (no Content-Length to refuse it by, or a
    small gzip of a big page) is refused; what was read of it went on living in the
    error's traceback, in a cycle through the task that read it, until the cyclic
    collector ran: asked again and again, the mirror swung between 320 and 920 MB. With
    the collector off, the refusal alone frees it."""
    limit = 4 * 1024 * 1024
    monkeypatch.setattr(pypi, "MAX_PAGE", limit)
    huge_page(tmp_path / "upstream")  # a page within the limit, asked first
    page = tmp_path / "upstream" / "simple" / "toobig"
    page.mkdir()
    padding = "".join(f"<!-- {i:08d} -->\n" for i in range(2 * limit // 16))
    (page / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{padding}</body></html>\n")
    async with fakeupstream.serving(tmp_path / "upstream") as upstream:
        upstream.rules["/simple/toobig/"] = mode
        config = settings(tmp_path / "store", f"{upstream.url}simple/")
        async with mirror_client(config) as (client, mirror):
            assert (await client.get("/pypi/simple/huge/")).status == 200  # all warmed up
            gc.collect()
            gc.disable()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for _ in range(3):
                    r = await client.get("/pypi/simple/toobig/")
                    refused = "upstream index is larger than the mirror's limit\n"
                    assert (r.status, await r.text()) == (502, refused)
                await mirror.refreshed()
                kept = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
                gc.enable()
    assert kept < limit // 4, kept
