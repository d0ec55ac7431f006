"""passt processes left by a supervisor killed before its qemu connected, found and ended.

passt ends with its qemu (--one-off), but only once qemu has connected. Started as root
it becomes `nobody`, which clears the parent-death signal, so a supervisor killed in the
moment between the two leaves a passt that waits for ever and keeps the guest's
forwarded ports: the next start of that guest then fails on "Failed to bind any port".
Each passt started is noted in this user's private state folder (never in the socket's
folder under /tmp, which anyone can make and `nobody` can write): who started it, which
passt it is, and its socket. A later start ends the passt of any owner that is gone.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
from pathlib import Path

from retreatkit.image.paths import private_dir, state_dir

PREFIX = "retreatkit-passt-"  # of the socket's folder, under the temporary folder
GONE_SECONDS = 2.0
MARK_MAX = 4096


def marks_dir() -> Path:
    return state_dir() / "vm" / "passt"


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


def mark(socket: Path, passt_pid: int, marks: Path | None = None) -> Path:
    """Note which process started passt `passt_pid`, listening on `socket`."""
    owner = os.getpid()
    doc = {
        "owner": [owner, started_at(owner)],
        "passt": [passt_pid, started_at(passt_pid)],
        "socket": str(socket),
    }
    path = private_dir(marks or marks_dir()) / f"{passt_pid}.json"
    try:
        path.write_text(json.dumps(doc))
    except OSError:  # a full disk: no empty mark left that no sweep would ever take away
        path.unlink(missing_ok=True)
        raise
    return path


def unmark(path: Path) -> None:
    """The passt noted at `path` ended with its guest, as it should."""
    path.unlink(missing_ok=True)


def living(noted: object) -> tuple[int, int] | None:
    """The (pid, start) a mark noted, when that process still runs."""
    if not (isinstance(noted, list) and len(noted) == 2):
        return None
    pid, start = noted
    if isinstance(pid, int) and isinstance(start, int) and started_at(pid) == start:
        return pid, start
    return None


def sweep(marks: Path | None = None) -> list[int]:
    """End the passt of every mark whose owner is gone, and return those passts' pids.
    Blocking (it waits for each to end): run it off the event loop."""
    ended: list[int] = []
    for path in (marks or marks_dir()).glob("*.json"):  # none when the folder is not there
        try:
            doc = json.loads(path.read_bytes()[:MARK_MAX])
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict) or living(doc.get("owner")):
            continue
        passt, socket = living(doc.get("passt")), str(doc.get("socket", ""))
        if passt is not None and is_passt(passt[0], socket) and end(*passt):
            ended.append(passt[0])
        path.unlink(missing_ok=True)
        if Path(socket).parent.name.startswith(PREFIX):
            shutil.rmtree(Path(socket).parent, ignore_errors=True)
    return ended


def is_passt(pid: int, socket: str) -> bool:
    """Whether process `pid` is a passt serving `socket`: a pid alone could be anything
    by now."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return "passt" in Path(os.fsdecode(argv[0])).name and os.fsencode(socket) in argv


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
