"""Throughput of bob through its relay, against magic-wormhole's relay path and a plain copy.

    uv run python bench/transfer.py [--size-mib 512] [--rounds 3] [--no-write]

Moves one random file of --size-mib MiB, on loopback, with real processes:

  bob          bob send / bob recv through our relay (compression on, the default),
               `--no-direct` on both sides: on loopback bob would otherwise go direct
  bob-direct   the same without --no-direct: the direct path, the relay only pairs
  bob-nc       the relay path with `bob send --no-compress`
  wormhole     magic-wormhole 0.24.0, its own mailbox server and transit relay,
               `--no-listen` on both sides so the bytes go through the transit relay
  plain        a Python process writing the file to a TCP socket and another one
               writing what it reads to disk: the ceiling
  plain-relay  the plain copy through our relay (its bob/1 handshake, then raw bytes)
  floor        the plain copy through bench/splice_floor.c, a relay in C that only
               splices, as ours does: its relay CPU is the least any relay pays per
               byte here (compiled with cc into bench/.work/; left out without cc)

Each run is timed from the launch of the second process (the first one is already
waiting: bob's and wormhole's sender, the plain receiver) until both have exited, so
interpreter start-up, key exchange and the final acknowledgement are included
("end-to-end"). A thread also watches the receiving folder and times the first to the
last byte landing on disk ("data phase"). MB/s are 10^6 bytes per second. CPU seconds
are user+system of each side's process (all threads, from wait4; the waiting side's
start-up included) and of the relay process over the run (from /proc). The received
file's sha256 is checked after every run; a run that fails or mismatches is reported
and never counted.

CPU is also given per GiB moved, per process (sender, relay, receiver and their sum),
and checked against the targets of issue 12: total CPU per GiB at most a third of
magic-wormhole's, the relay's at most an eighth of its transit relay's, end-to-end
throughput at least 3x wormhole's. The summary goes to bench/RESULTS.md under
"## bob transfer (bench/transfer.py)" (--no-write: printed only).

The machine may be shared: before each run the script waits (--quiet-wait) for it to
be idle, and it records "CPU other", the machine's busy CPU during the run that was not
ours. Runs where that is more than a few percent are marked busy; the headline is the
median of the quiet runs, next to the best and the median of all runs. Children get
bytecode caches under bench/.work/pycache (both tools alike), and one 1 MiB warm-up
transfer per tool runs first, uncounted.

magic-wormhole lives in its own venv under bench/.work/, made here when missing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import platform
import queue
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO

from benchlib import (
    BenchError,
    busy_cpu,
    cpu_model,
    free_port,
    git_commit,
    site_packages,
    verdict,
    wait_quiet,
    with_bytecode,
    write_section,
)
from benchlib import proc_cpu as proc_user_system

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"
WORMHOLE_VENV = WORK / "wormhole-venv"
WORMHOLE_VERSION = "0.24.0"
WORMHOLE_PACKAGES = (
    f"magic-wormhole=={WORMHOLE_VERSION}",
    "magic-wormhole-mailbox-server",
    "magic-wormhole-transit-relay",
)
HOST = "127.0.0.1"
MIB = 1 << 20
CHUNK = 256 * 1024  # the plain copy's read and write size (bob reads 256 KiB too)
START_TIMEOUT = 60.0
TOOLS = ("bob", "bob-direct", "bob-nc", "wormhole", "plain", "plain-relay", "floor")
FLOOR_SOURCE = ROOT / "bench" / "splice_floor.c"
FLOOR_BINARY = WORK / "splice_floor"
SECTION = "## bob transfer (bench/transfer.py)"
GIB = 1 << 30
TARGET_TOTAL_CPU = 1 / 3  # of wormhole's CPU per GiB, sender + relay + receiver
TARGET_RELAY_CPU = 1 / 8  # of its transit relay's CPU per GiB
TARGET_SPEED = 3.0  # x wormhole's end-to-end throughput


# -- child processes ------------------------------------------------------------------


@dataclass
class Exit:
    code: int
    cpu: float  # user + system seconds, all threads
    at: float  # perf_counter() when it was reaped


class Child:
    """A child process: stdout and stderr lines pumped by threads, reaped with wait4."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env={**child_env(), **(env or {})},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._exit: Exit | None = None
        self._pumps = [
            threading.Thread(target=self._pump, args=(stream,), daemon=True)
            for stream in (self.popen.stdout, self.popen.stderr)
        ]
        for pump in self._pumps:
            pump.start()
        self._reaper = threading.Thread(target=self._reap, daemon=True)
        self._reaper.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.lines.put(raw.decode("utf-8", "replace").rstrip("\r\n"))
        self.lines.put(None)

    def _reap(self) -> None:
        _, status, usage = os.wait4(self.pid, 0)
        at = time.perf_counter()
        code = os.waitstatus_to_exitcode(status)
        self.popen.returncode = code  # so Popen never waits for it again
        self._exit = Exit(code, usage.ru_utime + usage.ru_stime, at)

    def alive(self) -> bool:
        return self._exit is None

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """Block until an output line matches; fail if the process ends or time runs out."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        ended = 0
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(f"{self.name}: no line {pattern!r} in {timeout}s") from None
            if line is None:
                ended += 1
                if ended == len(self._pumps):
                    raise BenchError(f"{self.name} ended before {pattern!r}: {self.tail()}")
                continue
            self.seen.append(line)
            match = regex.search(line)
            if match:
                return match

    def finish(self, timeout: float) -> Exit:
        self._reaper.join(timeout)
        if self._exit is None:
            self.kill()
            raise BenchError(f"{self.name} still running after {timeout:.0f}s: {self.tail()}")
        for pump in self._pumps:
            pump.join(5)
        return self._exit

    def tail(self) -> str:
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.seen.append(line)
        return " | ".join(self.seen[-8:])

    def kill(self) -> None:
        if self._exit is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.terminate()
            self._reaper.join(10)
        if self._exit is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            self._reaper.join(10)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def child_env() -> dict[str, str]:
    """Bytecode caches under bench/.work/, so no run pays for compiling (both tools alike)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(WORK / "pycache")
    return env


def proc_cpu(pid: int) -> float:
    """User + system seconds a live process has used so far."""
    return sum(proc_user_system(pid))


def wait_port(port: int, owner: Child, timeout: float = START_TIMEOUT) -> None:
    """Poll until something accepts on the port; fail fast if its owner died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            pass
        if not owner.alive():
            raise BenchError(f"{owner.name} exited before listening: {owner.tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"{owner.name}: nothing listens on {port} after {timeout}s")
        time.sleep(0.05)


# -- measuring a run ------------------------------------------------------------------


class Landing(threading.Thread):
    """Watches a folder for the first byte and the last byte of `size` to land."""

    def __init__(self, folder: Path, size: int) -> None:
        super().__init__(daemon=True)
        self.folder = folder
        self.size = size
        self.first: float | None = None
        self.last: float | None = None
        self._halt = threading.Event()

    def _total(self) -> int:
        total = 0
        with os.scandir(self.folder) as it:
            for entry in it:
                with contextlib.suppress(FileNotFoundError):
                    if entry.is_file(follow_symlinks=False):
                        total = max(total, entry.stat(follow_symlinks=False).st_size)
        return total

    def run(self) -> None:
        while not self._halt.is_set():
            total = self._total()
            now = time.perf_counter()
            if total and self.first is None:
                self.first = now
            if total >= self.size:
                self.last = now
                return
            time.sleep(0.005)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


@dataclass
class Run:
    tool: str
    round: int
    ok: bool
    wall: float = 0.0  # s, end-to-end
    data: float = 0.0  # s, first to last byte on the receiver's disk
    cpu_send: float = 0.0
    cpu_recv: float = 0.0
    cpu_relay: float = 0.0
    cpu_other: float = 0.0  # machine-wide busy CPU during the run minus the three above
    error: str = ""


@dataclass
class Bench:
    size: int
    source: Path
    digest: str
    tmp: Path
    timeout: float
    relay_address: str = ""
    relay: Child | None = None
    mailbox_url: str = ""
    transit: str = ""
    transit_relay: Child | None = None
    floor_port: int = 0
    floor: Child | None = None
    servers: list[Child] = field(default_factory=list)
    # a bob nameplate pairs once, then it is burned; shared by copies of this Bench
    serial: Iterator[int] = field(default_factory=lambda: itertools.count(101))

    def nameplate(self) -> int:
        return next(self.serial)

    def stop(self) -> None:
        for child in self.servers:
            child.kill()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * MIB):
            digest.update(block)
    return digest.hexdigest()


def timed_pair(
    bench: Bench,
    tool: str,
    rnd: int,
    first: Child,
    start_second: Callable[[], Child],
    out: Path,
    relay: Child | None,
    first_sends: bool,
) -> Run:
    """`first` is waiting; start the second, time until both exit, check the file."""
    landing = Landing(out, bench.size)
    relay_cpu = proc_cpu(relay.pid) if relay else 0.0
    first_cpu = proc_cpu(first.pid)
    landing.start()
    machine_cpu = busy_cpu()
    t0 = time.perf_counter()
    second = start_second()
    try:
        a, b = first.finish(bench.timeout), second.finish(bench.timeout)
    finally:
        first.kill()
        second.kill()
        landing.stop()
    wall = max(a.at, b.at) - t0
    machine_cpu = busy_cpu() - machine_cpu
    send, recv = (a, b) if first_sends else (b, a)
    run = Run(tool, rnd, False, wall, 0.0, send.cpu, recv.cpu)
    if relay:
        run.cpu_relay = proc_cpu(relay.pid) - relay_cpu
    # the waiting side's CPU before t0 is not the run's
    ours = a.cpu - first_cpu + b.cpu + run.cpu_relay
    run.cpu_other = max(0.0, machine_cpu - ours)
    if landing.first is not None and landing.last is not None:
        run.data = landing.last - landing.first
    if a.code or b.code:
        run.error = f"exit codes {a.code}/{b.code}: {first.tail()} || {second.tail()}"
        return run
    received = [p for p in out.rglob("*") if p.is_file()]
    if len(received) != 1:
        run.error = f"expected one received file, found {[str(p) for p in received]}"
        return run
    got = sha256(received[0])
    if got != bench.digest:
        run.error = f"sha256 mismatch: {got} != {bench.digest}"
        return run
    run.ok = True
    return run


def run_bob(bench: Bench, rnd: int, tool: str) -> Run:
    out = bench.tmp / f"recv-{tool}-{rnd}"
    out.mkdir()
    code = f"{bench.nameplate()}-alpha-beta"
    bob = [sys.executable, "-m", "retreatkit.cli.bob"]
    relay = ["--relay", bench.relay_address]
    if tool != "bob-direct":
        relay.append("--no-direct")  # the relay path, forced (on loopback bob goes direct)
    extra = ["--no-compress"] if tool == "bob-nc" else []
    sender = Child(
        "bob send",
        [*bob, "send", *relay, *extra, str(bench.source)],
        env={"BOB_PASSPHRASE": code},  # never in argv: bob refuses it there
    )
    try:
        sender.wait_for(r"^Passphrase: ")
    except BenchError:
        sender.kill()
        raise

    def receiver() -> Child:
        return Child("bob recv", [*bob, "recv", *relay, "--yes", "--output", str(out), code])

    return timed_pair(bench, tool, rnd, sender, receiver, out, bench.relay, first_sends=True)


def run_wormhole(bench: Bench, rnd: int) -> Run:
    out = bench.tmp / f"recv-wormhole-{rnd}"
    out.mkdir()
    code = f"{bench.nameplate()}-alpha-beta"
    wormhole = [
        str(WORMHOLE_VENV / "bin" / "wormhole"),
        "--relay-url",
        bench.mailbox_url,
        "--transit-helper",
        bench.transit,
    ]
    src = str(bench.source)
    sender = Child(
        "wormhole send",
        [*wormhole, "send", "--no-qr", "--hide-progress", "--no-listen", "--code", code, src],
        cwd=bench.tmp,
    )
    try:
        sender.wait_for(r"Wormhole code is: ")
    except BenchError:
        sender.kill()
        raise

    def receiver() -> Child:
        argv = [*wormhole, "receive", "--accept-file", "--hide-progress", "--no-listen", code]
        return Child("wormhole receive", argv, cwd=out)

    return timed_pair(
        bench, "wormhole", rnd, sender, receiver, out, bench.transit_relay, first_sends=True
    )


def run_tool(bench: Bench, tool: str, rnd: int) -> Run:
    try:
        if tool == "wormhole":
            return run_wormhole(bench, rnd)
        if tool == "plain":
            return run_plain(bench, rnd)
        if tool == "floor":
            return run_floor(bench, rnd)
        if tool == "plain-relay":
            return run_plain_relay(bench, rnd)
        return run_bob(bench, rnd, tool)
    except BenchError as exc:
        return Run(tool, rnd, False, error=str(exc))
    finally:
        for child in bench.tmp.glob("recv-*"):
            shutil.rmtree(child, ignore_errors=True)


def run_plain(bench: Bench, rnd: int) -> Run:
    out = bench.tmp / f"recv-plain-{rnd}"
    out.mkdir()
    me = [sys.executable, str(Path(__file__).resolve())]
    receiver = Child("plain recv", [*me, "--plain-recv", str(out / bench.source.name)])
    try:
        port = int(receiver.wait_for(r"^listening (\d+)$")[1])
    except BenchError:
        receiver.kill()
        raise

    def sender() -> Child:
        return Child("plain send", [*me, "--plain-send", str(port), str(bench.source)])

    return timed_pair(bench, "plain", rnd, receiver, sender, out, None, first_sends=False)


def run_floor(bench: Bench, rnd: int) -> Run:
    out = bench.tmp / f"recv-floor-{rnd}"
    out.mkdir()
    me = [sys.executable, str(Path(__file__).resolve())]
    port = str(bench.floor_port)
    # the floor relay takes the receiver first, then the sender
    receiver = Child("floor recv", [*me, "--plain-recv-from", port, str(out / bench.source.name)])
    try:
        receiver.wait_for(r"^connected$")
    except BenchError:
        receiver.kill()
        raise

    def sender() -> Child:
        return Child("floor send", [*me, "--plain-send", port, str(bench.source)])

    return timed_pair(bench, "floor", rnd, receiver, sender, out, bench.floor, first_sends=False)


def run_plain_relay(bench: Bench, rnd: int) -> Run:
    out = bench.tmp / f"recv-plain-relay-{rnd}"
    out.mkdir()
    me = [sys.executable, str(Path(__file__).resolve())]
    at, nameplate = bench.relay_address, str(bench.nameplate())
    sender = Child("relay send", [*me, "--relay-send", at, nameplate, str(bench.source)])
    try:
        sender.wait_for(r"^held$")
    except BenchError:
        sender.kill()
        raise

    def receiver() -> Child:
        path = str(out / bench.source.name)
        return Child("relay recv", [*me, "--relay-recv", at, nameplate, path])

    return timed_pair(
        bench, "plain-relay", rnd, sender, receiver, out, bench.relay, first_sends=True
    )


def ensure_floor() -> bool:
    """bench/splice_floor.c built into bench/.work/; False where there is no C compiler."""
    fresh = FLOOR_BINARY.exists() and (FLOOR_BINARY.stat().st_mtime >= FLOOR_SOURCE.stat().st_mtime)
    if fresh:
        return True
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return False
    WORK.mkdir(parents=True, exist_ok=True)
    subprocess.run([cc, "-O2", "-o", str(FLOOR_BINARY), str(FLOOR_SOURCE)], check=True)
    return True


# -- the plain copy's two halves (run as child processes of this script) ----------------


def plain_recv(path: str) -> int:
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(1)
        print(f"listening {listener.getsockname()[1]}", file=sys.stderr, flush=True)
        conn, _ = listener.accept()
    return receive(conn, path)


def plain_recv_from(port: str, path: str) -> int:
    conn = socket.create_connection((HOST, int(port)))
    print("connected", file=sys.stderr, flush=True)
    return receive(conn, path)


def relay_hello(at: str, line: str, wanted: str) -> socket.socket:
    """Connected to our relay, its bob/1 handshake made, up to the reply word `wanted`."""
    host, _, port = at.rpartition(":")
    conn = socket.create_connection((host, int(port)))
    conn.sendall(line.encode("ascii") + b"\n")
    reader = conn.makefile("rb", buffering=0)
    while True:
        reply = reader.readline().decode("ascii", "replace").strip()
        if not reply or reply.startswith("error"):
            raise SystemExit(f"relay: {reply or 'closed'}")
        if reply.split()[0] == wanted:
            return conn


def relay_send(at: str, nameplate: str, path: str) -> int:
    conn = relay_hello(at, f"bob/1 send {nameplate}", "ok")
    print("held", file=sys.stderr, flush=True)
    reader = conn.makefile("rb", buffering=0)  # one byte at a time: nothing read ahead
    if not reader.readline().startswith(b"paired "):
        raise SystemExit("relay: not paired")
    return send_file(conn, path)


def relay_recv(at: str, nameplate: str, path: str) -> int:
    return receive(relay_hello(at, f"bob/1 recv {nameplate}", "paired"), path)


def receive(conn: socket.socket, path: str) -> int:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with conn:
            while n := conn.recv_into(buf):
                done = 0
                while done < n:
                    done += os.write(fd, view[done:n])
    finally:
        os.close(fd)
    return 0


def plain_send(port: str, path: str) -> int:
    return send_file(socket.create_connection((HOST, int(port))), path)


def send_file(conn: socket.socket, path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        with conn:
            while chunk := os.read(fd, CHUNK):
                conn.sendall(chunk)
    finally:
        os.close(fd)
    return 0


# -- servers and set-up ---------------------------------------------------------------


def ensure_wormhole() -> None:
    wormhole = WORMHOLE_VENV / "bin" / "wormhole"
    if wormhole.exists():
        found = subprocess.run([str(wormhole), "--version"], capture_output=True, text=True)
        if WORMHOLE_VERSION in found.stdout + found.stderr:
            return
    print(f"Installing magic-wormhole {WORMHOLE_VERSION} into {WORMHOLE_VENV} ...", flush=True)
    WORK.mkdir(parents=True, exist_ok=True)
    uv = shutil.which("uv")
    if uv:
        subprocess.run(
            [uv, "venv", "-q", "--python", sys.executable, str(WORMHOLE_VENV)], check=True
        )
        cmd = [uv, "pip", "install", "-q", "--python", str(WORMHOLE_VENV), *WORMHOLE_PACKAGES]
        subprocess.run(cmd, check=True)
    else:
        subprocess.run([sys.executable, "-m", "venv", str(WORMHOLE_VENV)], check=True)
        pip = [str(WORMHOLE_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, *WORMHOLE_PACKAGES], check=True)


def start_servers(bench: Bench, tools: Sequence[str]) -> None:
    if any(tool.startswith("bob") or tool == "plain-relay" for tool in tools):
        bob = [sys.executable, "-m", "retreatkit.cli.bob"]
        relay = Child(
            "bob relay",
            [*bob, "relay", "--listen", f"{HOST}:0", "--admin", f"{HOST}:0"],
        )
        bench.servers.append(relay)
        match = relay.wait_for(r"^Relay listening on (\S+):(\d+)$")
        wait_port(int(match[2]), relay)
        bench.relay, bench.relay_address = relay, f"{match[1]}:{match[2]}"
    if "wormhole" in tools:
        twist = str(WORMHOLE_VENV / "bin" / "twist")
        home = bench.tmp / "wormhole-servers"
        home.mkdir()
        mailbox_port, transit_port = free_port(), free_port()
        mailbox = Child(
            "wormhole mailbox",
            [twist, "wormhole-mailbox", f"--port=tcp:{mailbox_port}:interface={HOST}"],
            cwd=home,
        )
        bench.servers.append(mailbox)
        transit = Child(
            "transit relay",
            [twist, "transitrelay", f"--port=tcp:{transit_port}:interface={HOST}"],
            cwd=home,
        )
        bench.servers.append(transit)
        wait_port(mailbox_port, mailbox)
        wait_port(transit_port, transit)
        bench.mailbox_url = f"ws://{HOST}:{mailbox_port}/v1"
        bench.transit = f"tcp:{HOST}:{transit_port}"
        bench.transit_relay = transit
    if "floor" in tools:
        floor = Child("splice floor", [str(FLOOR_BINARY)])
        bench.servers.append(floor)
        bench.floor_port = int(floor.wait_for(r"^listening (\d+)$")[1])
        bench.floor = floor


def make_source(folder: Path, size: int) -> tuple[Path, str]:
    path = folder / f"random-{size}.bin"
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(4 * MIB, left))
            digest.update(block)
            f.write(block)
            left -= len(block)
    return path, digest.hexdigest()


def machine() -> dict[str, str]:
    model = cpu_model()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "commit": git_commit(),
    }


# -- report ---------------------------------------------------------------------------


def mbps(size: int, seconds: float) -> float:
    return size / seconds / 1e6 if seconds > 0 else 0.0


def quiet(run: Run) -> bool:
    """Nothing else of note ran on the machine during this run."""
    cores = os.cpu_count() or 1
    return run.cpu_other <= 0.05 + 0.05 * cores * run.wall


@dataclass
class Stat:
    quiet_median: float  # over quiet runs, else over all runs
    best: float
    median: float  # over all runs


def stat(values: list[float], quiet_values: list[float]) -> Stat:
    if not values:
        return Stat(0.0, 0.0, 0.0)
    headline = statistics.median(quiet_values or values)
    return Stat(headline, max(values), statistics.median(values))


@dataclass
class Summary:
    tool: str
    runs: int
    quiet_runs: int
    e2e: Stat  # MB/s
    data: Stat  # MB/s
    cpu_send: float  # medians over all good runs
    cpu_recv: float
    cpu_relay: float


def summarise(size: int, runs: list[Run], tools: Sequence[str]) -> list[Summary]:
    out = []
    for tool in tools:
        good = [r for r in runs if r.tool == tool and r.ok]
        if not good:
            continue
        calm = [r for r in good if quiet(r)]
        out.append(
            Summary(
                tool,
                len(good),
                len(calm),
                stat([mbps(size, r.wall) for r in good], [mbps(size, r.wall) for r in calm]),
                stat(
                    [mbps(size, r.data) for r in good if r.data > 0],
                    [mbps(size, r.data) for r in calm if r.data > 0],
                ),
                statistics.median(r.cpu_send for r in good),
                statistics.median(r.cpu_recv for r in good),
                statistics.median(r.cpu_relay for r in good),
            )
        )
    return out


def report(size: int, runs: list[Run], summaries: list[Summary]) -> None:
    print()
    print(f"{'run':<14} {'e2e s':>7} {'MB/s':>8} {'data MB/s':>10} {'CPU send':>9}", end="")
    print(f" {'CPU recv':>9} {'CPU relay':>10} {'CPU other':>10}  check")
    for r in runs:
        label = f"{r.tool}#{r.round}"
        print(
            f"{label:<14} {r.wall:7.2f} {mbps(size, r.wall):8.1f} {mbps(size, r.data):10.1f}"
            f" {r.cpu_send:9.2f} {r.cpu_recv:9.2f} {r.cpu_relay:10.2f} {r.cpu_other:10.2f}  "
            + ("sha256 ok" if r.ok else f"FAILED: {r.error[:300]}")
            + ("" if quiet(r) or not r.ok else ", machine busy")
        )
    print()
    print("MB/s: median of quiet runs / best / median of all runs; CPU s: medians")
    print(f"{'tool':<9} {'runs':>9} {'end-to-end MB/s':>22} {'data-phase MB/s':>22}", end="")
    print(f" {'CPU send':>9} {'CPU recv':>9} {'CPU relay':>10}")
    for s in summaries:
        runs_text = f"{s.runs} ({s.quiet_runs} q)"
        print(
            f"{s.tool:<9} {runs_text:>9} {triple(s.e2e):>22} {triple(s.data):>22}"
            f" {s.cpu_send:9.2f} {s.cpu_recv:9.2f} {s.cpu_relay:10.2f}"
        )
    print()
    print("CPU seconds per GiB moved (medians): sender + relay + receiver = total")
    for s in summaries:
        per = per_gib(size, s)
        print(
            f"{s.tool:<11} {per['send']:6.2f} + {per['relay']:5.2f} + {per['recv']:6.2f}"
            f" = {per['total']:6.2f}"
        )
    by = {s.tool: s for s in summaries}
    print()
    for line in verdicts(size, by):
        print(line.replace("**", ""))
    print()
    for ours in ("bob", "bob-nc"):
        for other, goal in (("wormhole", "target >= 3x"), ("plain", "stretch >= 0.5x")):
            if ours not in by or other not in by:
                continue
            a, b = by[ours], by[other]
            print(
                f"{ours}/{other}:"
                f" end-to-end {ratio(a.e2e.quiet_median, b.e2e.quiet_median)} quiet median,"
                f" {ratio(a.e2e.best, b.e2e.best)} best;"
                f" data phase {ratio(a.data.quiet_median, b.data.quiet_median)} quiet median,"
                f" {ratio(a.data.best, b.data.best)} best   [{goal}]"
            )


def per_gib(size: int, s: Summary) -> dict[str, float]:
    scale = GIB / size
    send, relay, recv = s.cpu_send * scale, s.cpu_relay * scale, s.cpu_recv * scale
    return {"send": send, "relay": relay, "recv": recv, "total": send + relay + recv}


def verdicts(size: int, by: dict[str, Summary]) -> list[str]:
    """Issue 12's targets, against magic-wormhole in the same run."""
    if "bob" not in by or "wormhole" not in by:
        return ["(the targets need both bob and wormhole in the run)"]
    ours, theirs = per_gib(size, by["bob"]), per_gib(size, by["wormhole"])
    speed = by["bob"].e2e.quiet_median / by["wormhole"].e2e.quiet_median
    total = ours["total"] / theirs["total"] if theirs["total"] else float("inf")
    relay = ours["relay"] / theirs["relay"] if theirs["relay"] else float("inf")
    out = [
        f"total CPU per GiB: {ours['total']:.2f} s, {total:.2f} of wormhole's"
        f" {theirs['total']:.2f} s (target <= {TARGET_TOTAL_CPU:.2f}):"
        f" {verdict(total <= TARGET_TOTAL_CPU)}",
        f"relay CPU per GiB: {ours['relay']:.2f} s, {relay:.2f} of the transit relay's"
        f" {theirs['relay']:.2f} s (target <= {TARGET_RELAY_CPU:.3f}):"
        f" {verdict(relay <= TARGET_RELAY_CPU)}",
        f"end-to-end throughput: {speed:.2f}x wormhole's (target >= {TARGET_SPEED:g}x):"
        f" {verdict(speed >= TARGET_SPEED)}",
    ]
    if "floor" in by:
        floor = per_gib(size, by["floor"])["relay"]
        goal = theirs["relay"] * TARGET_RELAY_CPU
        same = ""
        if "plain-relay" in by:
            same = f", and ours {per_gib(size, by['plain-relay'])['relay']:.2f} s with them"
        out.append(
            f"relay floor: carrying the plain copy, a relay in C that only splices"
            f" (bench/splice_floor.c) spent {floor:.2f} s per GiB{same}; the target for"
            f" ours is {goal:.2f} s"
        )
    if "bob-direct" in by:
        direct = by["bob-direct"].e2e.quiet_median
        out.append(
            f"direct path: {direct:.0f} MB/s end-to-end beside the relay path's"
            f" {by['bob'].e2e.quiet_median:.0f} MB/s"
        )
    return out


def render(size: int, rounds: int, info: dict[str, str], summaries: list[Summary]) -> str:
    """The RESULTS.md section: the command, the machine, the table and the verdicts."""
    lines = [
        SECTION,
        "",
        f"Command (commit {info['commit']}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}):",
        "",
        f"    uv run python bench/transfer.py --size-mib {size // (1 << 20)} --rounds {rounds}",
        "",
        f"Machine: nproc {info['nproc']}, {info['cpu']}, kernel {info['kernel']},"
        f" Python {info['python']}. One random file on loopback, real processes; bob's"
        " relay path with `--no-direct` on both sides, `bob-direct` without it; magic-wormhole"
        f" {WORMHOLE_VERSION} with `--no-listen` (its transit relay). MB/s are 10^6 bytes/s,"
        " end-to-end from the second process's launch until both exit; CPU is user + system"
        " of each process, all threads, start-up included, per GiB moved (medians).",
        "",
        "| tool | runs (quiet) | end-to-end MB/s: quiet median / best | data-phase MB/s"
        " | CPU s/GiB sender | relay | receiver | total |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        per = per_gib(size, s)
        lines.append(
            f"| {s.tool} | {s.runs} ({s.quiet_runs})"
            f" | **{s.e2e.quiet_median:.0f}** / {s.e2e.best:.0f} | {s.data.quiet_median:.0f}"
            f" | {per['send']:.2f} | {per['relay']:.2f} | {per['recv']:.2f}"
            f" | **{per['total']:.2f}** |"
        )
    lines += ["", *(f"- {line}" for line in verdicts(size, {s.tool: s for s in summaries}))]
    lines += ["", RELAY_NOTE]
    return "\n".join(lines) + "\n"


RELAY_NOTE = (
    "The relay moves a pair's bytes with one thread per direction blocking in splice(2) t"
    "hrough a 1 MiB pipe: its user time is about 0.02 s/GiB, the rest is the kernel's TCP"
    " work on loopback, part of it the receiving side's, which runs in the relay's contex"
    "t. `floor` and `plain-relay` carry the same plain copy through a relay in C that onl"
    "y splices (bench/splice_floor.c) and through ours: the first is what a relay cannot "
    "go below here, the second shows ours against it. The relay's CPU with bob's peers (t"
    "he `bob` row) against the same with the plain copy's (`plain-relay`) shows what the "
    "peers' traffic costs the relay."
)


def triple(s: Stat) -> str:
    return f"{s.quiet_median:.0f} / {s.best:.0f} / {s.median:.0f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


# -- main -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size-mib", type=int, default=512, help="file size in MiB (default 512)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every tool (default 3)")
    p.add_argument(
        "--tools",
        default=",".join(TOOLS),
        help=f"comma-separated subset of {','.join(TOOLS)} (default all)",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per run before failing")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each run, wait up to this many seconds for the machine to be idle",
    )
    p.add_argument("--json", type=Path, help="also write every run and the summary here")
    p.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    p.add_argument("--plain-recv", metavar="PATH", help=argparse.SUPPRESS)
    p.add_argument("--plain-send", nargs=2, metavar=("PORT", "PATH"), help=argparse.SUPPRESS)
    p.add_argument("--plain-recv-from", nargs=2, metavar=("PORT", "PATH"), help=argparse.SUPPRESS)
    for flag in ("--relay-send", "--relay-recv"):
        p.add_argument(flag, nargs=3, metavar=("ADDR", "NAMEPLATE", "PATH"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plain_recv:
        return plain_recv(args.plain_recv)
    if args.plain_send:
        return plain_send(*args.plain_send)
    if args.plain_recv_from:
        return plain_recv_from(*args.plain_recv_from)
    if args.relay_send:
        return relay_send(*args.relay_send)
    if args.relay_recv:
        return relay_recv(*args.relay_recv)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(tools) - set(TOOLS)
    if unknown or not tools or args.rounds < 1 or args.size_mib < 1:
        print(f"bad arguments (tools: {', '.join(TOOLS)})", file=sys.stderr)
        return 2
    if "wormhole" in tools:
        ensure_wormhole()
    if "floor" in tools and not ensure_floor():
        print("no C compiler (cc): the floor is left out", flush=True)
        tools.remove("floor")
    venvs = [Path(sys.prefix), *([WORMHOLE_VENV] if "wormhole" in tools else [])]
    with_bytecode(ROOT / "retreatkit", *(p for venv in venvs for p in site_packages(venv)))
    size = args.size_mib * MIB
    info = machine()
    print(
        f"bench/transfer.py: {args.size_mib} MiB, {args.rounds} rounds, tools {','.join(tools)};"
        f" nproc {info['nproc']}, {info['cpu']}, kernel {info['kernel']},"
        f" Python {info['python']}; commit {info['commit']}",
        flush=True,
    )
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bob-bench-") as tmp_name:
        tmp = Path(tmp_name)
        source, digest = make_source(tmp, size)
        bench = Bench(size, source, digest, tmp, args.timeout)
        try:
            start_servers(bench, tools)
            # warm up: bytecode caches, page cache, first connections; not counted
            small, small_digest = make_source(tmp, MIB)
            warm = replace(bench, size=MIB, source=small, digest=small_digest)
            for tool in tools:
                run = run_tool(warm, tool, 0)
                if not run.ok:
                    print(f"  warm-up {tool} FAILED: {run.error[:300]}", flush=True)
            for rnd in range(1, args.rounds + 1):
                shift = (rnd - 1) % len(tools)  # rotate the order from round to round
                for tool in tools[shift:] + tools[:shift]:
                    os.sync()  # the last run's dirty pages go out before this one starts
                    busy = wait_quiet(args.quiet_wait)
                    if busy >= 0.15:
                        print(f"  (machine still {busy:.0%} busy; running anyway)", flush=True)
                    run = run_tool(bench, tool, rnd)
                    runs.append(run)
                    status = "ok" if run.ok else f"FAILED {run.error[:200]}"
                    print(
                        f"  round {rnd} {tool:<9} {run.wall:6.2f} s"
                        f" {mbps(size, run.wall):7.1f} MB/s end-to-end,"
                        f" {mbps(size, run.data):7.1f} MB/s data phase  {status}",
                        flush=True,
                    )
        finally:
            bench.stop()
    summaries = summarise(size, runs, tools)
    report(size, runs, summaries)
    if not args.no_write and all(r.ok for r in runs):
        write_section(SECTION, render(size, args.rounds, info, summaries))
    if args.json:
        doc = {
            "machine": info,
            "size": size,
            "rounds": args.rounds,
            "runs": [asdict(r) for r in runs],
            "summary": [asdict(s) for s in summaries],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
