"""After a restart the mirror serves at once and checks its store in the background; a blob
asked for before the check reached it is verified first, and never served if it rotted
(item 9). The check is held by the test, so "before" is certain, not a matter of speed."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path

from retreatkit.mirror import fakeupstream
from retreatkit.mirror.status import section
from retreatkit.mirror.testing import mirror_client, settings, write_pypi
from tests.mirror.conftest import JSON, wheel_set


async def test_serving_starts_before_the_check_and_rot_is_never_served(tmp_path: Path) -> None:
    wheels = wheel_set()
    write_pypi(tmp_path / "upstream", {name: [w] for name, w in wheels.items()})
    async with fakeupstream.serving(tmp_path / "upstream") as upstream:
        config = settings(tmp_path / "store", f"{upstream.url}simple/")
        urls = {}
        async with mirror_client(config) as (client, _):
            for name in ("demo-dep", "big-pkg"):
                r = await client.get(f"/pypi/simple/{name}/", headers={"Accept": JSON})
                urls[name] = (await r.json(content_type=None))["files"][0]["url"]
                assert (await (await client.get(urls[name])).read()) == wheels[name][1]
        rotten = hashlib.sha256(wheels["big-pkg"][1]).hexdigest()
        (tmp_path / "store" / "blobs" / "sha256" / rotten[:2] / rotten).write_bytes(b"bit rot")

        listed, go = threading.Event(), threading.Event()

        def pace() -> None:  # called before each blob, once the check has listed them all
            listed.set()
            go.wait(30)

        async with mirror_client(config, pace=pace) as (client, mirror):
            # every blob is listed before any is served: the check has them all to do
            assert await asyncio.to_thread(listed.wait, 30)
            assert mirror.store.check.state == "running"  # held by the test
            r = await client.get(urls["big-pkg"])
            assert await r.read() == wheels["big-pkg"][1]  # verified, found rotten, fetched
            assert upstream.counts["/files/" + wheels["big-pkg"][0]] == 2
            r = await client.get(urls["demo-dep"])
            assert await r.read() == wheels["demo-dep"][1]
            assert mirror.store.check.checked == 0  # all of it happened before the check
            go.set()
            await asyncio.wait_for(mirror.checked(), 30)
            check = section(mirror, True, 0)["store"]["check"]
            assert check == {"state": "done", "checked": 4, "dropped": 1}
