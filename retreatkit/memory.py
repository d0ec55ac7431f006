"""How much memory this process may use: the machine's, or its cgroup's limit if smaller.

A container or a systemd unit with `MemoryMax=` gets the host's memory from sysconf, not
its own: a cache sized at a quarter of a 64 GB host inside a 512 MB container is killed
by the OOM killer long before it is full. So the limits of the process's cgroup and of
every cgroup above it count too, whichever is smallest:

- cgroup v2: `memory.max` under /sys/fs/cgroup, at the path /proc/self/cgroup gives on
  its `0::` line, and each parent up to /sys/fs/cgroup itself; `max` is no limit.
- cgroup v1: `memory.limit_in_bytes` under /sys/fs/cgroup/memory, at the path of its
  `memory` line, and each parent; no limit reads as a number near 2**63, above any
  machine's memory, so it never wins.

Inside a container the path /proc/self/cgroup gives is often the host's, absent from the
container's view; its own limit is then the one at the root, which is read too.
Pure but for the shell at the bottom: the reader is passed in, so tests give file texts.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable

ROOT = "/sys/fs/cgroup"
V1_ROOT = ROOT + "/memory"
PROC_CGROUP = "/proc/self/cgroup"

Reader = Callable[[str], str | None]  # a file's text, or None if it cannot be read


def limit_files(proc_cgroup: str) -> list[str]:
    """The files that may cap this process's memory, from /proc/self/cgroup's text: the
    ones of its own cgroups first, then each parent's, the roots last."""
    files: list[str] = []
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2: `0::/path`
            files += _upwards(ROOT, path, "memory.max")
        elif "memory" in controllers.split(","):
            files += _upwards(V1_ROOT, path, "memory.limit_in_bytes")
    for root_file in (f"{ROOT}/memory.max", f"{V1_ROOT}/memory.limit_in_bytes"):
        if root_file not in files:
            files.append(root_file)
    return files


def _upwards(root: str, path: str, name: str) -> list[str]:
    """`name` in the cgroup at `path` and in each parent, down to `root` itself."""
    parts = [p for p in posixpath.normpath("/" + path.strip()).split("/") if p and p != ".."]
    return [posixpath.join(root, *parts[:depth], name) for depth in range(len(parts), -1, -1)]


def parse_limit(text: str | None) -> int | None:
    """A limit file's bytes, or None for no limit (`max`, absent, unreadable, nonsense)."""
    if text is None:
        return None
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()):
        return None  # `max`, or nothing a kernel writes (int() reads `1_000` and ` +1`)
    value = int(digits)
    return value if value > 0 else None


def usable_memory(physical: int | None, read: Reader) -> int | None:
    """The least of the machine's memory (None: unknown) and every cgroup limit on this
    process; None when none of them says."""
    found = [physical] if physical is not None and physical > 0 else []
    for path in limit_files(read(PROC_CGROUP) or ""):
        limit = parse_limit(read(path))
        if limit is not None:
            found.append(limit)
    return min(found) if found else None


# -- the shell ---------------------------------------------------------------------------


def read_text(path: str) -> str | None:
    """A small file's text (cgroup files are a line each), or None if it cannot be read."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(65536)
    except OSError:
        return None


def machine_memory() -> int | None:
    """This machine's memory in bytes (a VM guest's own), or None where it cannot say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def physical_memory() -> int | None:
    """The memory this process may use in bytes: the machine's, or its cgroup's limit
    where that is smaller; None where nothing says."""
    return usable_memory(machine_memory(), read_text)
