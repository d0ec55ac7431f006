"""Other files the mirror keeps for the LAN (blocklists): where they live on it."""

from __future__ import annotations

import hashlib


def list_key(url: str) -> str:
    """The name a configured list has on the mirror: /lists/<key>."""
    return hashlib.sha256(url.encode()).hexdigest()[:32]


def via_mirror(mirror: str, url: str) -> str:
    return f"{mirror.rstrip('/')}/lists/{list_key(url)}"
