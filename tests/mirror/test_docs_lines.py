"""README and the operations guide give the same client lines as the attendee page, which
tests/e2e/test_mirror_clients.py runs with real pip and uv."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from retreatkit.mirror import page

ROOT = Path(__file__).resolve().parents[2]
BASE = "http://mirror.retreat.lan:8000"


@pytest.mark.parametrize("doc", ["README.md", "docs/operations.md"])
def test_the_docs_give_the_pages_lines(doc: str) -> None:
    text = (ROOT / doc).read_text()
    lines = page.lines(BASE)
    for line in lines["pip"] + lines["uv"]:
        assert line in text, line
    # and no other pip or uv line that would be refused, or point elsewhere
    given = {
        found.strip()
        for found in re.findall(r"^\s*((?:pip|uv pip) install --index-url .*)$", text, re.M)
    }
    assert given <= set(lines["pip"] + lines["uv"]), given
