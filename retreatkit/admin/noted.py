"""Where this user's running admin endpoints note themselves, so that `retreatkit tui` with
no `--connect` finds each one on this machine, also on a port nobody chose: the supervisor
`retreatkit vm start` leaves in the background, a service started with `--admin
127.0.0.1:0`. One small file per process (`<state>/endpoints/PID`, the URL), readable by
this user only like the admin token beside it; removed when the process stops, and a note
left by a process that was killed is removed by the next reader."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from retreatkit.admin import token

MAX_NOTE = 256  # bytes: a URL; anything longer is not a note of ours


def folder() -> Path:
    return token.state_dir() / "endpoints"


def note(url: str) -> Path | None:
    """Note `url` as this process's admin endpoint; None where the state folder cannot be
    written (the endpoint works all the same, it is only not found without --connect)."""
    path = folder() / str(os.getpid())
    partial = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(url + "\n")
        partial.replace(path)
    except (OSError, UnicodeError):
        return None
    return path


def forget(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()


def noted() -> list[str]:
    """The URLs noted by processes still running, oldest process first."""
    try:
        entries = [p for p in folder().iterdir() if p.name.isdigit()]
    except OSError:
        return []
    urls: list[str] = []
    for path in sorted(entries, key=lambda p: int(p.name)):
        if not _running(int(path.name)):
            forget(path)
            continue
        try:
            with path.open("rb") as f:
                text = f.read(MAX_NOTE + 1).decode("ascii").strip()
        except (OSError, UnicodeError):
            continue
        if len(text) <= MAX_NOTE and text.startswith(("http://", "https://")) and text not in urls:
            urls.append(text)
    return urls


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process has this number now
        return False
    try:  # a killed process not yet reaped by its parent answers to kill(0) too
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True  # no /proc here: kill(0) is all there is
    state = stat.rfind(b")") + 2  # "PID (NAME) S ...": NAME may hold anything
    return stat[state : state + 1] != b"Z"
