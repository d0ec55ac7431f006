"""What the mirror's end-to-end tests share: an attendee's machine and the page's lines."""

from __future__ import annotations

import html
import os
import re
import shutil
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from retreatkit.mirror.testing import Netns, netns

# the uv beside this Python when none is on PATH (uv run puts its own there)
UV = shutil.which("uv") or str(Path(sys.executable).parent / "uv")


def attendee(tag: str, prefix: str = "rkmir2") -> Callable[[], Iterator[Netns]]:
    """A fixture: a network namespace that reaches this machine at a non-loopback address
    (`PREFIX-...`, so it never collides with another suite's), removed after the test."""

    @pytest.fixture
    def lan() -> Iterator[Netns]:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            pytest.skip("an attendee's network namespace needs root and iproute2 (.ci/run)")
        with netns(tag, prefix=prefix) as ns:
            yield ns

    return lan


def page_block(mirror_url: str, client: str) -> list[str]:
    """One client's lines on the page at `/`, as a browser shows them."""
    with urllib.request.urlopen(mirror_url, timeout=30) as r:
        text = r.read().decode()
    block = re.search(rf"<h2>{client}</h2>\n<p>.*?</p>\n<pre>(.*?)</pre>", text, re.S)
    assert block is not None, text
    return html.unescape(block[1]).splitlines()
