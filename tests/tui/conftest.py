"""Fixtures for the dashboard: a fake admin endpoint per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from retreatkit.tui.testing import FakeAdmin, serve


@pytest.fixture
def fake() -> Iterator[FakeAdmin]:
    with serve(FakeAdmin()) as admin:
        yield admin
