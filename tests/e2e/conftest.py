"""Fixtures the end-to-end tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from retreatkit.mirror.testrepos import Signer


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """Nothing a bob process writes lands in the real home folder."""
    folder = tmp_path / "home"
    folder.mkdir()
    return {
        "HOME": str(folder),
        "XDG_STATE_HOME": str(folder / "state"),
        "XDG_DATA_HOME": str(folder / "data"),
    }


@pytest.fixture
def signer(tmp_path: Path) -> Iterator[Signer]:
    """An apt archive's signing key, in a GnuPG home of the test's own."""
    made = Signer.make(tmp_path / "gnupg")
    try:
        yield made
    finally:
        made.close()
