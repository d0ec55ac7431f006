"""The mirror in process: a fake upstream on port 0 and the app behind aiohttp's test client."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from retreatkit.mirror import fakeupstream
from retreatkit.mirror.fakeupstream import Upstream
from retreatkit.mirror.memory import SMALL
from retreatkit.mirror.service import Mirror
from retreatkit.mirror.testing import make_wheel, mirror_client, settings, write_pypi

JSON = "application/vnd.pypi.simple.v1+json"
Wheel = tuple[str, bytes, bytes]


@dataclass
class Env:
    upstream: Upstream
    client: TestClient[Any, Any]
    mirror: Mirror
    wheels: dict[str, Wheel]
    root: Path

    async def page(self, project: str) -> dict[str, Any]:
        r = await self.client.get(f"/pypi/simple/{project}/", headers={"Accept": JSON})
        assert r.status == 200, await r.text()
        doc: dict[str, Any] = json.loads(await r.read())
        return doc

    async def file_url(self, project: str, index: int = 0) -> str:
        url: str = (await self.page(project))["files"][index]["url"]
        return url

    def fetched(self, filename: str) -> int:
        """How many times the upstream was asked for a file."""
        return self.upstream.counts[f"/files/{filename}"]


def wheel_set() -> dict[str, Wheel]:
    return {
        "demo-pkg": make_wheel("demo-pkg", "1.0", ("demo-dep",)),
        "demo-dep": make_wheel("demo-dep", "2.0", pad=200_000),
        "big-pkg": make_wheel("big-pkg", "1.0", pad=SMALL + 500_000),  # goes out by sendfile
    }


@pytest.fixture
async def env(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    """Options by marker-free parametrisation: `request.param` may set `as_json` and
    Settings fields."""
    # a copy: a test that changes its mirror's limits must not change the next test's
    options: dict[str, Any] = copy.deepcopy(dict(getattr(request, "param", {})))
    wheels = wheel_set()
    root = tmp_path / "upstream"
    as_json = options.pop("as_json", False)
    write_pypi(root, {name: [w] for name, w in wheels.items()}, as_json=as_json)
    async with fakeupstream.serving(root) as upstream:
        config = settings(tmp_path / "store", f"{upstream.url}simple/", **options)
        async with mirror_client(config) as (client, mirror):
            yield Env(upstream, client, mirror, wheels, root)
