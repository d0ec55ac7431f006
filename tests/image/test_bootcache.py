"""An image's kernel and initramfs are unpacked once, kept by content, and pruned."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from retreatkit.image import bootcache


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return bootcache.folder()


def copy(calls: list[Path]) -> Callable[[Path, Path], bool]:
    def make(source: Path, into: Path) -> bool:
        calls.append(source)
        into.write_bytes(source.read_bytes().upper())
        return True

    return make


def test_unpacked_once_per_content_and_afresh_when_it_changes(tmp_path: Path, cache: Path) -> None:
    source = tmp_path / "initramfs"
    source.write_bytes(b"archive one")
    calls: list[Path] = []
    first = bootcache.unpacked(source, "cpio", copy(calls))
    assert first is not None and first.read_bytes() == b"ARCHIVE ONE"
    assert bootcache.unpacked(source, "cpio", copy(calls)) == first
    assert len(calls) == 1
    source.write_bytes(b"archive two")  # a rebuilt image: its own entry
    second = bootcache.unpacked(source, "cpio", copy(calls))
    assert second != first and second is not None and second.read_bytes() == b"ARCHIVE TWO"
    assert len(calls) == 2
    assert oct(cache.stat().st_mode & 0o777) == "0o700"
    bootcache.forget(source)  # as the bench does, to time an image's first boot
    assert not second.exists() and first.exists()
    assert bootcache.unpacked(source, "cpio", copy(calls)) == second
    assert len(calls) == 3


def test_nothing_to_unpack_or_a_failure_leaves_nothing(tmp_path: Path, cache: Path) -> None:
    source = tmp_path / "kernel"
    source.write_bytes(b"a bzImage qemu boots as it is")

    def nothing(_: Path, into: Path) -> bool:
        into.write_bytes(b"half")
        return False

    assert bootcache.unpacked(source, "vmlinux", nothing) is None

    def fails(_: Path, into: Path) -> bool:
        into.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        bootcache.unpacked(source, "vmlinux", fails)
    assert list(cache.iterdir()) == []


def test_pruned_to_the_most_recently_booted_but_never_what_was_just_booted(cache: Path) -> None:
    cache.mkdir(parents=True)
    now = 1_000_000.0
    for n in range(bootcache.KEEP + 3):
        path = cache / f"{n:032x}.cpio"
        path.write_bytes(b"x")
        age = bootcache.RECENT + 100 if n < 2 else 10  # two old ones, the rest just booted
        os.utime(path, (now - age - n, now - age - n))
    (cache / "0.vmlinux").write_bytes(b"k")  # another kind is pruned apart
    os.utime(cache / "0.vmlinux", (0, 0))
    (cache / f".{0:032x}.cpio.99.1").write_bytes(b"half")  # a start that died mid-unpack
    os.utime(cache / f".{0:032x}.cpio.99.1", (0, 0))
    bootcache.prune(cache, "cpio", now)
    left = sorted(p.name for p in cache.iterdir())
    # the two old ones are past KEEP and old: removed; the recent ones stay, even past KEEP
    assert left == ["0.vmlinux", *(f"{n:032x}.cpio" for n in range(2, bootcache.KEEP + 3))]


def test_an_image_rebuilt_mid_start_is_not_filed_under_the_old_ones_hash(
    tmp_path: Path, cache: Path
) -> None:
    """Hashed from one read and unpacked from another, a rebuild between the two filed
    the new archive under the old one's hash, and a later rebuild of the old (builds
    are reproducible) booted the new."""
    source = tmp_path / "initramfs"
    source.write_bytes(b"archive one")

    def rebuilt_meanwhile(given: Path, into: Path) -> bool:
        source.write_bytes(b"archive two")  # `image build` renames a new one in
        into.write_bytes(given.read_bytes().upper())
        return True

    first = bootcache.unpacked(source, "cpio", rebuilt_meanwhile)
    assert first is not None and first.read_bytes() == b"ARCHIVE ONE"
    source.write_bytes(b"archive one")
    assert bootcache.unpacked(source, "cpio", copy([])) == first
    assert sorted(p.name for p in cache.iterdir()) == [first.name]  # no copy left behind
