"""What the benchmarks share: CPU accounting from /proc, waiting for a quiet machine, RESULTS.md."""

from __future__ import annotations

import compileall
import contextlib
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"
RESULTS = ROOT / "bench" / "RESULTS.md"
PROF_VENV = WORK / "prof-venv"


class BenchError(RuntimeError):
    pass


def with_bytecode(*trees: Path) -> None:
    """Python children start as a user's second run does: from compiled bytecode. Where
    PYTHONDONTWRITEBYTECODE is set (some machines' environments set it) every start
    compiles every module it imports again, 0.1-0.3 CPU-s a process on a 2-core machine,
    counted in each tool's CPU per GiB; the trees are compiled once here instead."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    for tree in trees:
        if tree.is_dir():
            compileall.compile_dir(tree, quiet=2, workers=0)


def site_packages(venv: Path) -> list[Path]:
    return sorted(venv.glob("lib/python3*/site-packages"))


def proc_cpu(pid: int) -> tuple[float, float]:
    """(user, system) seconds a live process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


def tree_cpu(pid: int) -> tuple[float, float]:
    """(user, system) seconds of a process and its live children."""
    user, system = proc_cpu(pid)
    for child in children(pid):
        with contextlib.suppress(OSError):
            u, s = proc_cpu(child)
            user, system = user + u, system + s
    return user, system


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB."""
    found = {"VmRSS": 0.0, "VmHWM": 0.0}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in found:
            found[key] = int(value.split()[0]) / 1024
    return found["VmRSS"], found["VmHWM"]


def process_cpu_table() -> dict[int, tuple[str, float]]:
    """Every live process: pid -> (name, CPU seconds so far)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = (entry / "stat").read_text()
            name = text[text.index("(") + 1 : text.rindex(")")]
            fields = text.rsplit(")", 1)[1].split()
            out[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def busy_cpu() -> float:
    """Seconds all CPUs of the machine spent busy so far."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    """CPU seconds of this process so far, every thread."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu() -> float:
    """CPU seconds of this process's reaped children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_quiet(max_wait: float, busy_below: float = 0.15) -> float:
    """Wait (at most max_wait s) for the machine to be idle; returns the last busy fraction."""
    deadline = time.monotonic() + max_wait
    cores = os.cpu_count() or 1
    while True:
        before, t = busy_cpu(), time.monotonic()
        time.sleep(0.5)
        busy = (busy_cpu() - before) / (time.monotonic() - t) / cores
        if busy < busy_below or time.monotonic() > deadline:
            if busy >= busy_below:
                print(f"  (machine still {busy:.0%} busy after {max_wait:g} s)", flush=True)
            return busy


def time_until(
    check: Callable[[], bool], timeout: float, since: float | None = None, every: float = 0.02
) -> float | None:
    """Seconds from `since` (time.monotonic(); default now) until `check()` is true, or
    None if it is not within `timeout`."""
    start = time.monotonic() if since is None else since
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(every)
    return None


def stop_popen(popen: subprocess.Popen[bytes]) -> None:
    if popen.poll() is None:
        popen.terminate()
        try:
            popen.wait(10)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
    for stream in (popen.stdout, popen.stderr):
        if stream is not None:
            stream.close()


def version_of(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else "?"


def ensure_py_spy() -> Path | None:
    found = shutil.which("py-spy")
    if found:
        return Path(found)
    exe = PROF_VENV / "bin" / "py-spy"
    if exe.exists():
        return exe
    print(f"Installing py-spy into {PROF_VENV} ...", flush=True)
    uv = shutil.which("uv")
    try:
        if uv:
            subprocess.run(
                [uv, "venv", "-q", "--python", sys.executable, str(PROF_VENV)], check=True
            )
            pip = [uv, "pip", "install", "-q", "--python", str(PROF_VENV), "py-spy"]
            subprocess.run(pip, check=True)
        else:
            subprocess.run([sys.executable, "-m", "venv", str(PROF_VENV)], check=True)
            subprocess.run([str(PROF_VENV / "bin" / "pip"), "install", "-q", "py-spy"], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"  no py-spy ({exc}); skipping the profile", flush=True)
        return None
    return exe if exe.exists() else None


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def write_section(section: str, text: str) -> None:
    """Replace our section of RESULTS.md (or add it); every other section stays as it is."""
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(section)}[ \t]*\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(current):
        updated = pattern.sub(lambda _: text + "\n", current, count=1)
    else:
        updated = current.rstrip("\n") + "\n\n" + text
    updated = updated.rstrip("\n") + "\n"
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text(updated)
    tmp.replace(RESULTS)
    print(f"wrote {RESULTS.relative_to(ROOT)}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (for a server that takes its port as a flag)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def git_commit() -> str:
    """The short commit, marked when retreatkit/ has changes not committed."""
    git = ["git", "-C", str(ROOT)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "retreatkit"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (head or "?") + (" + uncommitted changes under retreatkit/" if dirty else "")


def stamp() -> str:
    """Which code ran, and when: "commit abc1234, 2026-12-04 23:27 UTC"."""
    return f"commit {git_commit()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"


def py_spy_top(raw: Path, count: int) -> tuple[list[tuple[str, float]], int]:
    """From `py-spy record --format raw` (collapsed stacks): the innermost frames holding
    the most samples, each with its share, and the number of samples."""
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames or not n.isdigit():
            continue
        total += int(n)
        own[frames[-1]] += int(n)
    return [(frame, n / total) for frame, n in own.most_common(count)], total


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"
