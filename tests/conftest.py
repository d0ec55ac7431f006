"""Shared fixtures: real relay processes on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from retreatkit.testing import RelayProcess, start_relay


@pytest.fixture
def relay() -> Iterator[RelayProcess]:
    proc = start_relay()
    yield proc
    proc.stop()
