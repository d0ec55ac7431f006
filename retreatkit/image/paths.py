"""Where images keep their cache (packages, kernels) and their state (guests, consoles)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def cache_dir() -> Path:
    """Downloaded packages, unpacked trees and built kernels: safe to delete, slow to redo."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "retreatkit"


def state_dir() -> Path:
    """The user's state folder, where the admin token and the guests' consoles live."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "retreatkit"


def private_dir(path: Path) -> Path:
    """`path`, created if needed and readable by this user only."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def admin_token() -> str:
    """The user's admin token (docs/admin-api.md), created on first use, mode 0600: guests
    get it on their configuration disk, so the dashboard uses one token for all."""
    path = private_dir(state_dir()) / "admin-token"
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if not token:
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(token + "\n")
    return token
