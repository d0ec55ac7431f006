"""Shared fixtures: real relay processes on loopback, an apt archive's signing key; VM
image tests run last."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from retreatkit.mirror.testrepos import Signer
from retreatkit.testing import RelayProcess, start_relay


@pytest.fixture
def relay() -> Iterator[RelayProcess]:
    proc = start_relay()
    yield proc
    proc.stop()


@pytest.fixture
def signer(tmp_path: Path) -> Iterator[Signer]:
    """An apt archive's signing key, in a GnuPG home of the test's own."""
    made = Signer.make(tmp_path / "gnupg")
    try:
        yield made
    finally:
        made.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The `slow` tests (VM images under qemu) run last: the rest of the suite runs while
    a kernel build started beside it (.ci/run) finishes, and reports sooner."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)
