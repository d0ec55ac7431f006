"""A huge index page is parsed and stored off the event loop (item 6): another client is
answered while it is being processed. The order is made by events, not by sleeps."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from retreatkit.mirror import fakeupstream
from retreatkit.mirror.testing import mirror_client, settings

FILES = 10_000


def huge_page(root: Path) -> None:
    page = root / "simple" / "huge"
    page.mkdir(parents=True)
    links = "\n".join(
        f'<a href="../../files/huge-1.{i}-py3-none-any.whl#sha256={i:064x}">'
        f"huge-1.{i}-py3-none-any.whl</a>"
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
