"""Shared fixtures: real relay processes on loopback; VM image tests run last."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from retreatkit.testing import RelayProcess, start_relay


@pytest.fixture
def relay() -> Iterator[RelayProcess]:
    proc = start_relay()
    yield proc
    proc.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The `slow` tests (VM images under qemu) run last: the rest of the suite runs while
    a kernel build started beside it (.ci/run) finishes, and reports sooner."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)
