"""Where images keep their cache (packages, kernels) and their state (guests, consoles)."""

from __future__ import annotations

import os
from pathlib import Path

from retreatkit.admin import token as admin_token


def cache_dir() -> Path:
    """Downloaded packages, unpacked trees and built kernels: safe to delete, slow to redo."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "retreatkit"


def state_dir() -> Path:
    """The user's state folder, where the admin token and the guests' consoles live."""
    return admin_token.state_dir()


def private_dir(path: Path) -> Path:
    """`path`, created if needed and readable by this user only."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path
