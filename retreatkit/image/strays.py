"""passt processes left by a supervisor killed before its qemu connected, found and ended.

passt ends with its qemu (--one-off), but only once qemu has connected. Started as root
it becomes `nobody`, which clears the parent-death signal, so a supervisor killed in the
moment between the two leaves a passt that waits for ever and keeps the guest's
forwarded ports: the next start of that guest then fails on "Failed to bind any port".
Each passt's socket folder names who started it and which passt it is; a later start
ends the passt of any owner that is gone.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import tempfile
from pathlib import Path

PREFIX = "retreatkit-passt-"
MARK = "owner.json"
GONE_SECONDS = 2.0


def started_at(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot), or None when there is none:
    with the pid, it names one process, whatever reuses the number later."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    try:  # field 22 of proc(5); fields[0] here is field 3, the state
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (IndexError, ValueError):
        return None


def mark(folder: Path, passt_pid: int) -> None:
    """Note in passt's socket folder which process started it and which passt it is."""
    owner, passt = os.getpid(), passt_pid
    doc = {"owner": [owner, started_at(owner)], "passt": [passt, started_at(passt)]}
    (folder / MARK).write_text(json.dumps(doc))


def living(noted: object) -> tuple[int, int] | None:
    """The (pid, start) a mark noted, when that process still runs."""
    if not (isinstance(noted, list) and len(noted) == 2):
        return None
    pid, start = noted
    if isinstance(pid, int) and isinstance(start, int) and started_at(pid) == start:
        return pid, start
    return None


def sweep(tmp: Path | None = None) -> list[int]:
    """End the passt of every socket folder whose owner is gone, remove the folder, and
    return those passts' pids. A folder not marked yet (its owner starting passt now) is
    left alone."""
    ended = []
    for folder in Path(tmp or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            doc = json.loads((folder / MARK).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict) or living(doc.get("owner")):
            continue
        passt = living(doc.get("passt"))
        if passt is not None and end(*passt):
            ended.append(passt[0])
        shutil.rmtree(folder, ignore_errors=True)
    return ended


def end(pid: int, start: int) -> bool:
    """Kill process `pid` if it is still the one that started at `start`, and wait until
    it has ended (its ports are free then), at most GONE_SECONDS."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:  # checked after opening: from here the descriptor names that very process
        if started_at(pid) != start:
            return False
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        select.select([fd], [], [], GONE_SECONDS)  # readable once it has ended
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
