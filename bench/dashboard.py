"""The dashboard under a log flood: key latency, lines received, CPU and memory.

    uv run python bench/dashboard.py [--rate 10000] [--seconds 30] [--no-write] [--profile]

Three processes, all real, on 127.0.0.1:

  flood      this file with `--flood`: a real admin endpoint (retreatkit.admin.app: the
             token, /status, `GET /logs` streaming its LogRing) whose `retreatkit.*`
             loggers emit --rate records a second (a hundredth of them every 10 ms) for
             --seconds, once told to start. The dashboard reads them over the real SSE
             format, 500 records to a write, as it reads any process's.
  dashboard  `retreatkit tui --connect URL` in a pseudo-terminal of 160x50, TERM
             xterm-256color: Textual's own Linux driver, its input thread and its writer
             thread, nothing patched. It is on its Logs screen, following the newest line.
  organiser  this process. It writes the key `s` (show the next service's lines) into the
             terminal and reads everything the dashboard draws. A key's latency is the
             time from writing it until the frame that shows its effect (the filter line
             naming the next service) has been read back from the terminal, so it holds
             the pty both ways, Textual's input parsing, the handler (re-filtering up to
             20,000 kept lines), layout, rendering and writing. Then it waits 50-150 ms
             and presses again; a key not answered within 2 s counts as 2,000 ms.

First a few keys with no flood (the idle figure), then the flood with keys throughout.
Lines received are the dashboard's own count, read from its screen. CPU is utime+stime of
the dashboard process (every thread) from /proc, divided by the lines it received; RSS
is sampled every second. With --profile, py-spy samples the dashboard during the flood
and the functions holding the most samples are listed.

Targets (issue 10): a key answered "in well under 100 ms" (here: p99 under 100 ms,
median under 50 ms) while 10,000 lines a second arrive, and memory bounded (RSS over
the second half of the flood grows by less than 4 MiB). The table is printed and written
to bench/RESULTS.md under `## dashboard (bench/dashboard.py)`, every other section left
as it is; `--rate 500 --seconds 3 --no-write` checks that it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import platform
import random
import re
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import (
    ROOT,
    WORK,
    BenchError,
    busy_cpu,
    cpu_model,
    ensure_py_spy,
    git_commit,
    memory_mb,
    proc_cpu,
    py_spy_top,
    stop_popen,
    verdict,
    write_section,
)

SECTION = "## dashboard (bench/dashboard.py)"
TOKEN = "bench-token"  # the flood endpoint's, for this run only
SIZE = (160, 50)
ANSWER_TIMEOUT = 2.0
IDLE_KEYS = 20
TARGET_P99_MS = 100.0
TARGET_MEDIAN_MS = 50.0
TARGET_GROWTH_MIB = 4.0
SERVICE = re.compile(rb"service (\w+) \(s\)")
RECEIVED = re.compile(rb"([\d,]+) received")


# -- the flood (a child: bench/dashboard.py --flood RATE SECONDS) ------------------------


async def flood_main(rate: int, seconds: float) -> None:
    import logging

    from prometheus_client import CollectorRegistry

    from retreatkit.admin.app import make_app, start
    from retreatkit.admin.logs import LogRing
    from retreatkit.tui.testing import canned

    services = ("relay", "mirror", "nameserver")
    status = canned("example.org")
    ring = LogRing(services=services)
    root = logging.getLogger("retreatkit")
    root.addHandler(ring)
    root.setLevel(logging.INFO)
    root.propagate = False
    sources = {s: (lambda s=s: status[s]) for s in services}  # type: ignore[misc]
    app = make_app(CollectorRegistry(), sources, token=TOKEN, ring=ring)
    runner, (_host, port) = await start(app, "127.0.0.1", 0)
    go, stop = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, go.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(port, flush=True)
    await go.wait()
    loggers = [logging.getLogger(f"retreatkit.{s}") for s in services]
    sent, begun = 0, time.monotonic()
    while (elapsed := time.monotonic() - begun) < seconds and not stop.is_set():
        due = int(elapsed * rate)
        while sent < due:
            sent += 1
            log = loggers[sent % 3]
            if sent % 97 == 0:  # now and then what a peer chose: markup and escapes
                log.warning("bad name from 10.0.%d.%d: [bold]x[/] \x1b[2J", sent % 7, sent % 250)
            else:
                log.info("request %d from 10.0.%d.%d: GET /pypi/simple/numpy/ 200 (cached, "
                         "%d bytes)", sent, sent % 7, sent % 250, 1000 + sent % 9000)  # fmt: skip
        await asyncio.sleep(0.01)
    print(sent, flush=True)
    await stop.wait()
    await runner.cleanup()


# -- the organiser's side --------------------------------------------------------------


class Terminal:
    """The dashboard in a pseudo-terminal: keys in, everything it draws read back."""

    def __init__(self, url: str, home: Path) -> None:
        master, slave = os.openpty()
        rows, cols = SIZE[1], SIZE[0]
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TERM": "xterm-256color",
            "HOME": str(home),
            "XDG_STATE_HOME": str(home / "state"),
            "XDG_DATA_HOME": str(home / "data"),
            "RETREATKIT_TOKEN": TOKEN,
        }
        argv = [sys.executable, "-m", "retreatkit.cli.main", "tui", "--connect", url]
        self.process = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT,
            start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        self.fd = master
        os.set_blocking(master, False)
        self.tail = b""
        self.service: bytes | None = None
        self.received = 0
        self.drawn = 0  # bytes read from the terminal

    @property
    def pid(self) -> int:
        return self.process.pid

    def pump(self, timeout: float) -> bool:
        """Read what the dashboard drew within `timeout`; True if anything came."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return False
        try:
            data = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return False
        except OSError:  # the dashboard exited: the pty is closed
            raise BenchError("the dashboard exited") from None
        self.drawn += len(data)
        text = self.tail + data
        for found in SERVICE.finditer(text):
            self.service = found[1]
        counts = RECEIVED.findall(text)
        if counts:
            self.received = int(counts[-1].replace(b",", b""))
        self.tail = text[-200:]
        return True

    def until(self, check: object, timeout: float) -> float | None:
        """Seconds until `check()` holds while reading, or None."""
        assert callable(check)
        start = time.perf_counter()
        while not check():
            left = timeout - (time.perf_counter() - start)
            if left <= 0:
                return None
            self.pump(left)
        return time.perf_counter() - start

    def press(self, key: bytes) -> float:
        """Milliseconds from writing a service-filter key until the next service shows."""
        before = self.service
        self.tail = b""  # a match already read must not count as the answer
        start = time.perf_counter()
        os.write(self.fd, key)
        took = self.until(lambda: self.service != before, ANSWER_TIMEOUT)
        return ANSWER_TIMEOUT * 1000 if took is None else (time.perf_counter() - start) * 1000

    def settle(self, seconds: float) -> None:
        end = time.perf_counter() + seconds
        while (left := end - time.perf_counter()) > 0:
            self.pump(left)

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                os.write(self.fd, b"q")
            with contextlib.suppress(BenchError):
                self.until(lambda: self.process.poll() is not None, 5.0)
        stop_popen(self.process)
        os.close(self.fd)


@dataclass
class Outcome:
    rate: int
    seconds: float
    command: str
    machine: dict[str, str]
    idle_ms: list[float] = field(default_factory=list)
    flood_ms: list[float] = field(default_factory=list)
    received: int = 0
    sent: int = 0
    flood_s: float = 0.0
    cpu_s: float = 0.0
    flood_cpu_s: float = 0.0
    others_cpu_s: float = 0.0
    rss_mib: list[float] = field(default_factory=list)  # one a second through the flood
    rss_start_mib: float = 0.0
    profile: list[tuple[str, float]] = field(default_factory=list)
    profile_note: str = ""


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def run(args: argparse.Namespace, outcome: Outcome) -> None:
    flood = subprocess.Popen(
        [sys.executable, __file__, "--flood", str(args.rate), str(args.seconds)],
        stdout=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="rkdash-bench-") as home:
        term: Terminal | None = None
        try:
            assert flood.stdout is not None
            port = int(flood.stdout.readline())
            term = Terminal(f"http://127.0.0.1:{port}", Path(home))
            if term.until(lambda: term.drawn > 0, 20) is None:
                raise BenchError("the dashboard drew nothing in 20 s")
            term.settle(1.5)
            os.write(term.fd, b"5")  # the Logs screen
            if term.until(lambda: term.service is not None, 10) is None:
                raise BenchError("the Logs screen never showed its filter line")
            term.settle(1.0)
            print(f"idle: {IDLE_KEYS} keys ...", flush=True)
            for _ in range(IDLE_KEYS):
                outcome.idle_ms.append(term.press(b"s"))
                term.settle(random.uniform(0.05, 0.15))
            outcome.rss_start_mib = memory_mb(term.pid)[0]
            spy = start_profile(term.pid, args.seconds) if args.profile else None
            received0, cpu0 = term.received, sum(proc_cpu(term.pid))
            flood_cpu0, busy0 = sum(proc_cpu(flood.pid)), busy_cpu()
            print(f"flood: {args.rate:,} lines/s for {args.seconds:g} s ...", flush=True)
            flood.send_signal(signal.SIGUSR1)
            begun = time.perf_counter()
            next_sample = begun + 1.0
            while time.perf_counter() - begun < args.seconds:
                outcome.flood_ms.append(term.press(b"s"))
                term.settle(random.uniform(0.05, 0.15))
                if time.perf_counter() >= next_sample:
                    outcome.rss_mib.append(memory_mb(term.pid)[0])
                    next_sample += 1.0
            outcome.flood_s = time.perf_counter() - begun
            term.settle(0.3)  # the last lines sent reach the screen's count
            outcome.cpu_s = sum(proc_cpu(term.pid)) - cpu0
            outcome.flood_cpu_s = sum(proc_cpu(flood.pid)) - flood_cpu0
            outcome.others_cpu_s = busy_cpu() - busy0 - outcome.cpu_s - outcome.flood_cpu_s
            outcome.received = term.received - received0
            outcome.sent = int(flood.stdout.readline() or 0)
            if spy is not None:
                outcome.profile, outcome.profile_note = finish_profile(*spy)
        finally:
            if term is not None:
                term.close()
            stop_popen(flood)


def start_profile(pid: int, seconds: float) -> tuple[subprocess.Popen[bytes], Path] | None:
    py_spy = ensure_py_spy()
    if py_spy is None:
        return None
    WORK.mkdir(parents=True, exist_ok=True)
    raw = WORK / "dashboard-profile.txt"  # collapsed stacks, kept for a closer look
    spy = subprocess.Popen(
        [str(py_spy), "record", "--pid", str(pid), "--rate", "200", "--nonblocking",
         "--duration", str(int(seconds)), "--format", "raw", "--threads",
         "--output", str(raw)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    return spy, raw


def finish_profile(spy: subprocess.Popen[bytes], raw: Path) -> tuple[list[tuple[str, float]], str]:
    _, err = spy.communicate(timeout=120)
    if spy.returncode != 0 or not raw.exists():
        return [], f"py-spy failed: {err.decode(errors='replace')[-300:]}"
    top, samples = py_spy_top(raw, 15)
    return top, f"{samples:,} samples at 200 Hz, every thread"


# -- report ----------------------------------------------------------------------------


def figures(o: Outcome) -> dict[str, float]:
    flood = o.flood_ms or [0.0]
    half = o.rss_mib[len(o.rss_mib) // 2 :] or [0.0]
    per_10k = o.cpu_s / (o.received / 10_000) if o.received else float("inf")
    return {
        "idle_median": statistics.median(o.idle_ms or [0.0]),
        "median": statistics.median(flood),
        "p99": percentile(flood, 0.99),
        "max": max(flood),
        "keys": len(o.flood_ms),
        "unanswered": sum(1 for x in flood if x >= ANSWER_TIMEOUT * 1000),
        "lines_per_s": o.received / o.flood_s if o.flood_s else 0.0,
        "sent_per_s": o.sent / o.flood_s if o.flood_s else 0.0,
        "cpu_per_10k": per_10k,
        "cpu_busy": o.cpu_s / o.flood_s if o.flood_s else 0.0,
        "rss_start": o.rss_start_mib,
        "rss_end": o.rss_mib[-1] if o.rss_mib else 0.0,
        "rss_peak": max(o.rss_mib or [0.0]),
        "growth": max(half) - half[0],
    }


def render(o: Outcome) -> str:
    f, m = figures(o), o.machine
    met_keys = f["p99"] < TARGET_P99_MS and f["median"] < TARGET_MEDIAN_MS
    lines = [
        SECTION,
        "",
        f"Command: `{o.command}` (commit {m['commit']}, {time.strftime('%Y-%m-%d %H:%M %Z')})",
        "",
        f'Machine: nproc {m["nproc"]}, CPU "{m["cpu"]}", kernel {m["kernel"]}, Python'
        f" {m['python']}, Textual {m['textual']}. Flood endpoint, dashboard and the process"
        " pressing keys share the cores.",
        "",
        f"How: a real admin endpoint in its own process streams {o.rate:,} log lines a second"
        f" for {o.seconds:g} s over `GET /logs` (SSE, the real LogRing); `retreatkit tui` runs"
        " unmodified in a 160x50 pseudo-terminal on its Logs screen; the key `s` (show the"
        " next service's lines: the dashboard re-filters up to 20,000 kept lines) is written"
        " into the terminal every 50-150 ms, and its latency is the time until the frame"
        " naming the next service has been read back from the terminal.",
        "",
        "| figure | value | target |",
        "|---|---:|---|",
        f"| key latency, no flood: median | {f['idle_median']:.1f} ms | |",
        f"| key latency under the flood: median | {f['median']:.1f} ms |"
        f" < {TARGET_MEDIAN_MS:.0f} ms |",
        f"| p99 | {f['p99']:.1f} ms | < {TARGET_P99_MS:.0f} ms: {verdict(met_keys)} |",
        f"| max | {f['max']:.1f} ms | |",
        f"| keys pressed (unanswered in 2 s) | {f['keys']:.0f} ({f['unanswered']:.0f}) | |",
        f"| lines received a second | {f['lines_per_s']:,.0f} (sent {f['sent_per_s']:,.0f}) | |",
        f"| dashboard CPU-seconds per 10,000 lines | {f['cpu_per_10k']:.3f} |"
        f" ({f['cpu_busy']:.2f} of a core) |",
        f"| dashboard RSS at the flood's start / end / peak | {f['rss_start']:.1f} /"
        f" {f['rss_end']:.1f} / {f['rss_peak']:.1f} MiB | |",
        f"| RSS growth over the flood's second half | {f['growth']:+.1f} MiB |"
        f" < {TARGET_GROWTH_MIB:.0f} MiB: {verdict(f['growth'] < TARGET_GROWTH_MIB)} |",
        "",
        f"CPU meanwhile: the flood endpoint {o.flood_cpu_s:.1f} s, other programs on the"
        f" machine {max(0.0, o.others_cpu_s):.1f} s, over {o.flood_s:.1f} s.",
    ]
    if o.profile or o.profile_note:
        lines += ["", f"Profile of the dashboard under the flood ({o.profile_note}):", ""]
        lines += [f"- {share:.1%} {frame}" for frame, share in o.profile]
    return "\n".join(lines) + "\n"


def machine() -> dict[str, str]:
    from importlib.metadata import version

    return {
        "commit": git_commit(),
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "textual": version("textual"),
    }


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["--flood"] and len(raw) == 3:
        asyncio.run(flood_main(int(raw[1]), float(raw[2])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=10_000, help="log lines a second (10000)")
    parser.add_argument("--seconds", type=float, default=30.0, help="of flood (30)")
    parser.add_argument("--profile", action="store_true", help="py-spy the dashboard")
    parser.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    args = parser.parse_args(raw)
    command = "uv run python bench/dashboard.py" + ("" if not raw else " " + " ".join(raw))
    outcome = Outcome(args.rate, args.seconds, command, machine())
    try:
        run(args, outcome)
    except BenchError as exc:
        print(f"bench/dashboard.py: {exc}", file=sys.stderr)
        return 1
    section = render(outcome)
    print(section)
    if not args.no_write:
        write_section(SECTION, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
