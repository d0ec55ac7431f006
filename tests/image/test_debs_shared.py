"""Two builds on one machine share the package cache: CI runs `retreatkit image kernel`
(which unpacks the interpreter's packages for SQLite's build) beside tests that build
images. Each package is fetched and unpacked once, and whoever comes second waits for it
and finds it whole, never half-written or swept away under it."""

from __future__ import annotations

import concurrent.futures
import shutil
from pathlib import Path

import pytest

from retreatkit.image import debs
from retreatkit.image.paths import cache_dir

pytestmark = pytest.mark.skipif(shutil.which("apt-cache") is None, reason="needs apt")


def test_builds_at_once_unpack_a_package_once_and_each_finds_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = sorted((cache_dir() / "debs").glob("libpython3.11-stdlib_*.deb"))
    if not cached:
        pytest.skip("no libpython3.11-stdlib .deb cached here (an image build fetches it)")
    fresh = tmp_path / "cache"
    (fresh / "retreatkit" / "debs").mkdir(parents=True)
    shutil.copy2(cached[-1], fresh / "retreatkit" / "debs" / cached[-1].name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(fresh))

    def unpacked(_: int) -> list[str]:
        tree = debs.package("libpython3.11-stdlib").tree
        return sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        seen = list(pool.map(unpacked, range(8)))
    assert seen[0] and ".complete" in seen[0]
    assert all(files == seen[0] for files in seen)
    left = sorted(p.name for p in (fresh / "retreatkit" / "unpacked").iterdir())
    assert [n for n in left if not n.endswith(".lock")] == [cached[-1].stem]
