"""The mirror against nginx on loopback: small cache hits, CPU per GiB, waiters' first byte.

    uv run python bench/mirror.py [--duration 10] [--connections 50] [--no-profile]

One run, real processes, 127.0.0.1 only:

  setup    a fake PyPI (retreatkit.mirror.fakeupstream) behind a throttling proxy
           started from this file (only the cold file's bytes are slowed, to --rate MB/s);
           a `retreatkit mirror` on it; Debian's nginx (nginx-light) with its own
           temporary config, prefix and pid file, one worker, sendfile on, serving the
           very same bytes at the very same URLs (/pypi/files/<sha256>/<filename>).
  small    --small-files distinct wheels of 50 KiB, all cached in the mirror first; wrk
           (-t1 -c --connections -d --duration, a Lua script cycling through every URL)
           against each server after a short warm-up; requests/s and the server's CPU
           seconds per request (utime+stime from /proc, all processes of the server).
  profile  (unless --no-profile) py-spy records the mirror's event-loop thread during one
           more wrk run of the same load; the samples are sorted into parts.
  large    one 100 MiB wheel, cached; curl -o /dev/null --downloads times from each server;
           server CPU seconds per GiB sent.
  cold     another 100 MiB wheel nobody asked for yet; client 1 asks, clients 2..N ask
           --join-after s later, --late more --late-at s later (one child process, raw
           sockets); each client's first body byte against client 1's and against its own
           request; the fake upstream's /_stats must count exactly one GET of the file, and
           every client must get the whole file with the right sha256.

Before each measurement the bench waits (up to --quiet-wait s) for the machine to be idle,
and it reports how much CPU other programs took during each one.

Targets (from the issue): mirror >= 0.3x nginx requests/s on small hits, <= 1.5x nginx CPU
per GiB on large files, waiters' first byte within 100 ms of the first client's.
The table is printed and written to bench/RESULTS.md under `## mirror (bench/mirror.py)`,
leaving every other section of that file as it is; the raw numbers go to
bench/.work/mirror.json. py-spy is installed into bench/.work/prof-venv when missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from benchlib import (
    WORK,
    BenchError,
    busy_cpu,
    children_cpu,
    cpu_model,
    ensure_py_spy,
    proc_cpu,
    ratio,
    stop_popen,
    tree_cpu,
    verdict,
    version_of,
    wait_quiet,
    write_section,
)

SECTION = "## mirror (bench/mirror.py)"
HOST = "127.0.0.1"
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
START_TIMEOUT = 60.0
TARGET_RPS_RATIO = 0.3
TARGET_CPU_RATIO = 1.5
TARGET_WAIT_S = 0.100


# -- /proc and processes --------------------------------------------------------------


@dataclass
class Meter:
    """Server CPU (user, sys), client CPU and the whole machine's, over a measurement."""

    target: Target
    wall: float = 0.0
    user: float = 0.0
    system: float = 0.0
    clients: float = 0.0
    machine: float = 0.0  # CPU s the whole machine spent (kernel threads included)
    others: float = 0.0  # CPU s/s the machine spent on neither server nor our clients

    def __enter__(self) -> Meter:
        self._t, self._cpu = time.monotonic(), self.target.cpu()
        self._kids, self._busy = children_cpu(), busy_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        cpu = self.target.cpu()
        self.wall = time.monotonic() - self._t
        self.user, self.system = cpu[0] - self._cpu[0], cpu[1] - self._cpu[1]
        self.clients = children_cpu() - self._kids
        self.machine = busy_cpu() - self._busy
        rest = self.machine - self.user - self.system - self.clients
        self.others = max(0.0, rest) / self.wall


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1.0):
            return
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode} before listening")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: nothing listens on {port}")
        time.sleep(0.05)


def http_get(url: str, accept: str | None = None, timeout: float = 120.0) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def http_json(url: str, accept: str | None = None) -> Any:
    return json.loads(http_get(url, accept))


def uvloop_sendfile() -> str:
    """Whether uvloop's loop.sendfile works natively ("yes") or is not implemented ("no")."""
    import uvloop

    async def attempt() -> str:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        try:
            transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
            with tempfile.TemporaryFile() as f:
                f.write(b"x")
                f.flush()
                try:
                    await loop.sendfile(transport, f, fallback=False)
                except (NotImplementedError, RuntimeError):
                    return "no"
                finally:
                    transport.close()
            return "yes"
        finally:
            b.close()

    try:
        return uvloop.run(attempt())
    except Exception as exc:  # a probe: any failure means "unknown"
        return f"unknown ({type(exc).__name__})"


def machine() -> dict[str, str]:
    import aiohttp  # the mirror's own stack, for the record
    import uvloop

    model = cpu_model()
    return {
        "uvloop_sendfile": uvloop_sendfile(),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": version_of(["nginx", "-v"]).removeprefix("nginx version: "),
        "wrk": version_of(["wrk", "-v"]).split(" [")[0],
        "curl": version_of(["curl", "--version"]).split(" (")[0],
        "aiohttp": aiohttp.__version__,
        "uvloop": str(getattr(uvloop, "__version__", "?")),
    }


# -- the throttling proxy (run as a child: bench/mirror.py --throttle ...) ------------


async def throttle_main(upstream: str, rate: float, match: str) -> None:
    """Forward each connection to `upstream`; responses to paths containing `match` are
    paced at `rate` bytes/s (the upstream closes after each response, so EOF ends one)."""
    up = urlsplit(upstream)
    up_host, up_port = up.hostname or HOST, up.port or 80

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_writer: asyncio.StreamWriter | None = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1].decode("latin-1")
            slow = bool(match) and match in target
            up_reader, up_writer = await asyncio.open_connection(up_host, up_port)
            up_writer.write(head)
            await up_writer.drain()
            started, sent = time.monotonic(), 0
            while chunk := await up_reader.read(64 * KIB):
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
                if slow:
                    ahead = started + sent / rate - time.monotonic()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            if up_writer is not None:
                up_writer.close()
            writer.close()

    server = await asyncio.start_server(handle, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    print(f"Throttle listening on http://{HOST}:{port}/", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


# -- the cold-file clients (run as a child: bench/mirror.py --cold-clients ...) ------------


async def one_client(port: int, path: str, start_at: float) -> dict[str, Any]:
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    buf, head_at = b"", None
    while b"\r\n\r\n" not in buf:
        data = await reader.read(64 * KIB)
        if not data:
            raise BenchError(f"connection closed in the response head: {buf[:200]!r}")
        head_at = head_at or time.monotonic()
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    length = int(headers["content-length"]) if "content-length" in headers else None
    digest = hashlib.sha256(body)
    got = len(body)
    body_at = time.monotonic() if body else None
    while length is None or got < length:
        data = await reader.read(256 * KIB)
        if not data:
            break
        body_at = body_at or time.monotonic()
        digest.update(data)
        got += len(data)
    ended = time.monotonic()
    writer.close()
    return {
        "status": status,
        "start": started,
        "head": head_at,
        "first_byte": body_at,
        "end": ended,
        "bytes": got,
        "sha256": digest.hexdigest(),
        "chunked": "chunked" in headers.get("transfer-encoding", ""),
    }


async def clients_main(url: str, count: int, join_after: float, late: int, late_at: float) -> None:
    """Client 1 at t0, clients 2..count at t0 + join_after, `late` more at t0 + late_at."""
    parts = urlsplit(url)
    t0 = time.monotonic() + 0.05
    starts = [t0] + [t0 + join_after] * (count - 1) + [t0 + late_at] * late
    results = await asyncio.gather(
        *(one_client(parts.port or 80, parts.path, at) for at in starts), return_exceptions=True
    )
    out = [r if isinstance(r, dict) else {"error": repr(r)} for r in results]
    print(json.dumps(out))


# -- the servers ----------------------------------------------------------------------


@dataclass
class Nginx:
    popen: subprocess.Popen[bytes]
    url: str
    prefix: Path

    @classmethod
    def start(cls, prefix: Path, docroot: Path) -> Nginx:
        port = free_port()
        prefix.mkdir(parents=True, exist_ok=True)
        (prefix / "logs").mkdir(exist_ok=True)
        user = "user root root;\n" if os.geteuid() == 0 else ""
        temps = "".join(
            f"  {k}_temp_path {prefix / k};\n"
            for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf = prefix / "nginx.conf"
        conf.write_text(
            f"{user}worker_processes 1;\n"
            "daemon off;\n"
            f"pid {prefix / 'nginx.pid'};\n"
            f"error_log {prefix / 'logs' / 'error.log'} warn;\n"
            "events { worker_connections 4096; }\n"
            "http {\n"
            "  access_log off;\n"
            "  sendfile on;\n"
            "  tcp_nopush on;\n"
            "  keepalive_requests 1000000;\n"
            "  default_type application/octet-stream;\n"
            f"{temps}"
            f"  server {{ listen {HOST}:{port}; root {docroot}; }}\n"
            "}\n"
        )
        popen = subprocess.Popen(
            ["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "logs" / "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(port, popen, "nginx")
        except BenchError:
            log = (prefix / "logs" / "error.log").read_text(errors="replace")
            raise BenchError(f"nginx did not start: {log[-2000:]}") from None
        return cls(popen, f"http://{HOST}:{port}", prefix)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        stop_popen(self.popen)  # SIGTERM: fast shutdown of master and workers


@dataclass
class Target:
    name: str
    url: str  # base, no trailing slash
    pid: int
    nginx: Nginx | None = None

    def cpu(self) -> tuple[float, float]:
        return tree_cpu(self.pid) if self.nginx else proc_cpu(self.pid)


# -- the load ---------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    mb_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0  # socket errors and non-2xx/3xx
    cpu_s: float = 0.0
    user_s: float = 0.0
    sys_s: float = 0.0
    cpu_per_request_us: float = 0.0
    cpu_busy: float = 0.0  # server CPU seconds per wall second
    client_busy: float = 0.0  # wrk's
    others_busy: float = 0.0  # the rest of the machine's (other programs)
    tries: int = 1  # measurements taken, the earlier ones discarded as noisy
    raw: str = ""


def write_lua(paths: Sequence[str], dest: Path) -> Path:
    dest.write_text(
        "local paths = {\n" + "".join(f'  "{p}",\n' for p in paths) + "}\nlocal i = 0\n"
        "request = function()\n"
        "  i = i % #paths + 1\n"
        '  return wrk.format("GET", paths[i])\n'
        "end\n"
    )
    return dest


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        return float("nan")
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m[2]]
    return float(m[1]) * scale


def run_wrk(target: Target, lua: Path, connections: int, seconds: float) -> WrkResult:
    argv = [
        "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(lua),
        target.url,
    ]  # fmt: skip
    with Meter(target) as meter:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise BenchError(f"wrk failed: {done.stderr.strip()[-500:]}")
    out = done.stdout
    result = WrkResult(raw=out)
    if m := re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out):
        result.requests = int(m[1])
        result.seconds = _ms(m[2] + m[3]) / 1e3
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        result.rps = float(m[1])
    if m := re.search(r"Transfer/sec:\s+([\d.]+)([KMG]?B)", out):
        result.mb_per_s = float(m[1]) * {"B": 1, "KB": KIB, "MB": MIB, "GB": GIB}[m[2]] / 1e6
    if m := re.search(r"\s50%\s+(\S+)", out):
        result.p50_ms = _ms(m[1])
    if m := re.search(r"\s99%\s+(\S+)", out):
        result.p99_ms = _ms(m[1])
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        result.errors += int(m[1])
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        result.errors += sum(int(x) for x in m.groups())
    result.user_s, result.sys_s = meter.user, meter.system
    result.cpu_s = result.user_s + result.sys_s
    result.client_busy = meter.clients / meter.wall
    result.others_busy = meter.others
    result.cpu_per_request_us = result.cpu_s / max(result.requests, 1) * 1e6
    result.cpu_busy = result.cpu_s / meter.wall
    return result


M = TypeVar("M", "WrkResult", "LargeResult")
NOISY = 0.25  # CPU-s/s of other programs above which a measurement is taken again
TRIES = 3


def quietly(measure: Callable[[], M], quiet_wait: float) -> M:
    """Wait for an idle machine, measure; again (up to TRIES) if others got busy meanwhile."""
    for attempt in range(TRIES):
        wait_quiet(quiet_wait)
        result = measure()
        result.tries = attempt + 1
        if result.others_busy <= NOISY:
            break
        if attempt + 1 < TRIES:
            print(f"  (others took {result.others_busy:.2f} CPU-s/s: once more)", flush=True)
    return result


@dataclass
class LargeResult:
    downloads: int = 0
    bytes: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    user_s: float = 0.0
    sys_s: float = 0.0
    cpu_per_gib: float = 0.0
    mb_per_s: float = 0.0  # of each download, on average
    client_busy: float = 0.0  # curl's CPU s/s
    machine_per_gib: float = 0.0  # the whole machine's CPU s per GiB: server, curl, kernel
    others_busy: float = 0.0  # the rest of the machine's
    tries: int = 1


def run_downloads(target: Target, path: str, size: int, count: int) -> LargeResult:
    url = target.url + path
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url]
    subprocess.run(argv, capture_output=True, check=True, timeout=120)  # warm: page cache
    total = 0
    with Meter(target) as meter:
        for _ in range(count):
            done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120)
            code, got = done.stdout.split()
            if code != "200" or int(got) != size:
                raise BenchError(f"{target.name}: {url} gave {code} with {got} bytes, not {size}")
            total += int(got)
    cpu = meter.user + meter.system
    return LargeResult(
        user_s=meter.user,
        sys_s=meter.system,
        client_busy=meter.clients / meter.wall,
        others_busy=meter.others,
        machine_per_gib=meter.machine / (total / GIB),
        downloads=count,
        bytes=total,
        wall_s=meter.wall,
        cpu_s=cpu,
        cpu_per_gib=cpu / (total / GIB),
        mb_per_s=total / meter.wall / 1e6,
    )


@dataclass
class ColdResult:
    clients: int = 0
    join_after_s: float = 0.0
    fill_s: float = 0.0
    client1_ttfb_ms: float = 0.0
    max_first_byte_gap_ms: float = 0.0  # max over clients 2..N of first byte - client 1's
    max_waiter_ttfb_ms: float = 0.0  # max over clients 2..N of first byte - own request
    late_clients: int = 0
    late_at_s: float = 0.0
    max_late_ttfb_ms: float = 0.0  # late joiners: first byte - own request
    upstream_direct_ttfb_ms: float = 0.0  # the fake upstream's own, for a file of this size
    upstream_gets: int = 0  # fake upstream's /_stats for the file
    upstream_fetches: int = 0  # the mirror's own counter, delta
    coalesced: int = 0  # the mirror's own counter, delta
    all_ok: bool = False
    per_client: list[dict[str, Any]] = field(default_factory=list)


def first_byte_ms(url: str) -> float:
    """curl's time to the first byte of a whole GET, in ms."""
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{time_starttransfer}", url]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120)
    return float(done.stdout) * 1e3


def run_cold(
    mirror: Target, admin: str, upstream: str, path: str, upstream_path: str, size: int,
    digest: str, count: int, join_after: float, late: int, late_at: float,
) -> ColdResult:  # fmt: skip
    before = http_json(f"{admin}/status")["mirror"]
    argv = [
        sys.executable, __file__, "--cold-clients", mirror.url + path, str(count),
        str(join_after), str(late), str(late_at),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise BenchError(f"cold clients failed: {done.stderr.strip()[-1000:]}")
    clients: list[dict[str, Any]] = json.loads(done.stdout)
    after = http_json(f"{admin}/status")["mirror"]
    stats: dict[str, int] = http_json(upstream.rstrip("/") + "/_stats")
    result = ColdResult(
        clients=count,
        join_after_s=join_after,
        late_clients=late,
        late_at_s=late_at,
        upstream_gets=stats.get(upstream_path, 0),
        upstream_fetches=after["upstream_fetches"] - before["upstream_fetches"],
        coalesced=after["coalesced"] - before["coalesced"],
    )
    bad = [c for c in clients if "error" in c or c["first_byte"] is None]
    if bad:
        raise BenchError(f"cold clients failed: {bad}")
    first = clients[0]
    t0 = first["start"]
    result.client1_ttfb_ms = (first["first_byte"] - first["start"]) * 1e3
    result.fill_s = max(c["end"] for c in clients) - t0
    gaps, waits, lates = [], [], []
    for i, c in enumerate(clients, 1):
        row = {
            "client": i,
            "start_ms": (c["start"] - t0) * 1e3,
            "head_ms": (c["head"] - t0) * 1e3,
            "first_byte_ms": (c["first_byte"] - t0) * 1e3,
            "gap_to_client1_ms": (c["first_byte"] - first["first_byte"]) * 1e3,
            "ttfb_ms": (c["first_byte"] - c["start"]) * 1e3,
            "end_ms": (c["end"] - t0) * 1e3,
            "status": c["status"],
            "bytes": c["bytes"],
            "sha_ok": c["sha256"] == digest and c["bytes"] == size,
        }
        result.per_client.append(row)
        if i > count:
            lates.append(row["ttfb_ms"])
        elif i > 1:
            gaps.append(row["gap_to_client1_ms"])
            waits.append(row["ttfb_ms"])
    result.max_first_byte_gap_ms = max(gaps, default=0.0)
    result.max_waiter_ttfb_ms = max(waits, default=0.0)
    result.max_late_ttfb_ms = max(lates, default=0.0)
    result.all_ok = all(r["status"] == 200 and r["sha_ok"] for r in result.per_client)
    return result


# -- profiling ------------------------------------------------------------------------


@dataclass
class Profile:
    samples: int = 0
    rate: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0
    requests: int = 0
    self_top: list[tuple[str, float]] = field(default_factory=list)  # share of samples
    inclusive_top: list[tuple[str, float]] = field(default_factory=list)
    buckets: list[tuple[str, float]] = field(default_factory=list)
    output: str = ""


# where a sample's time goes, by the first frame (from the leaf up) that matches
# where a sample's time goes: the innermost frame (leaf up) that matches one of these
BUCKETS: tuple[tuple[str, str], ...] = (
    ("socket send (transport.writelines: the syscall, loopback TCP included)",
     r"^StreamWriter\._writelines \(aiohttp/"),
    ("the mirror's handler (routes, hot cache, ranges.plan, respond.blob, web.Response)",
     r"^(file|blob|plan|matches|etag_of|_file_headers|mirror_of|errors|Mirror\.blob"
     r"|HotCache\.get|LRU\._get) \(retreatkit/"),
    ("a hot-cache miss (Store.get, Store.has_blob, the blob read)",
     r"^(Store\.(get|has_blob|blob_path|db)|valid_hex|blob_path) \(retreatkit/"),
    ("aiohttp response (prepare, headers, write_eof)",
     r"^(\w+\.)?(prepare|_start|_write_headers|write_headers|write_eof|finish_response"
     r"|_prepare_hook) \(aiohttp/"),
    ("aiohttp routing and request objects",
     r"^(Application\._handle|UrlDispatcher\.resolve|Resource\.resolve|\w+\._match"
     r"|Application\._make_request|RequestHandler\._handle_request) \(aiohttp/"),
    ("aiohttp connection (parser, per-connection task)",
     r"^RequestHandler\.(data_received|start) \(aiohttp/"),
    ("event loop (uvloop's C code, no Python frame)",
     r"^(Runner\.run \(asyncio/runners|run \(uvloop/)"),
)  # fmt: skip


def profile_mirror(
    py_spy: Path, target: Target, lua: Path, connections: int, seconds: float, out: Path
) -> Profile:
    rate = 250
    raw = out.with_suffix(".txt")
    spy = subprocess.Popen(
        [
            str(py_spy), "record", "--pid", str(target.pid), "--rate", str(rate),
            "--duration", f"{int(seconds) + 2}", "--format", "raw", "--output", str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(1.0)
    load = run_wrk(target, lua, connections, seconds)
    _, err = spy.communicate(timeout=seconds + 60)
    prof = Profile(rate=rate, seconds=seconds, cpu_s=load.cpu_s, requests=load.requests)
    if spy.returncode != 0 or not raw.exists():
        prof.output = f"py-spy failed: {err.decode(errors='replace')[-500:]}"
        return prof
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [_short(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames or frames[0].startswith("Thread._bootstrap"):
            continue  # the event loop's thread only: the executor's threads sit idle here
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
        buckets[_bucket(frames)] += count
    prof.samples = total
    if total:
        prof.self_top = [(f, n / total) for f, n in own.most_common(15)]
        prof.inclusive_top = [(f, n / total) for f, n in incl.most_common(25)]
        prof.buckets = [(b, n / total) for b, n in buckets.most_common()]
    out.write_text(json.dumps(asdict(prof), indent=2) + "\n")
    return prof


def _bucket(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in _BUCKET_RES:
            if pattern.search(frame):
                return name
    return "other"


_BUCKET_RES = [(name, re.compile(pattern)) for name, pattern in BUCKETS]


def _short(frame: str) -> str:
    """`fn (/a/b/site-packages/aiohttp/x.py:12)` -> `fn (aiohttp/x.py:12)`, and the same
    for the standard library and this project's files."""
    fn, _, where = frame.partition(" (")
    where = re.sub(r"^.*/(?:site-packages|lib/python3\.\d+)/", "", where)
    where = re.sub(r"^.*/(retreatkit|bench)/", r"\1/", where)
    return f"{fn} ({where}" if where else fn


# -- setup ----------------------------------------------------------------------------


@dataclass
class Wheel:
    project: str
    filename: str
    data: bytes
    sha256: str
    path: str = ""  # /pypi/files/<sha256>/<filename>, from the mirror's page


def wheel_of(project: str, version: str, size: int) -> tuple[str, bytes, bytes]:
    from retreatkit.mirror.testing import make_wheel

    base = len(make_wheel(project, version, pad=0)[1])
    return make_wheel(project, version, pad=max(0, size - base))


def prime(mirror: Target, project: str, wheels: list[Wheel], fetch: bool) -> None:
    """Read the project page (the mirror learns the files), then fetch each (cache fill)."""
    page = http_json(
        f"{mirror.url}/pypi/simple/{project}/", accept="application/vnd.pypi.simple.v1+json"
    )
    urls = {f["filename"]: f["url"] for f in page["files"]}
    for w in wheels:
        w.path = urls[w.filename]
        if fetch:
            got = http_get(mirror.url + w.path)
            if hashlib.sha256(got).hexdigest() != w.sha256:
                raise BenchError(f"the mirror gave wrong bytes for {w.filename}")


def docroot_for(root: Path, docroot: Path, wheels: list[Wheel]) -> None:
    """The same bytes at the same URL paths for nginx (hard links to the upstream's files)."""
    for w in wheels:
        dest = docroot / w.path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(root / "files" / w.filename, dest)


def other_archives(
    up_root: Path, url: str, count: int, size: int, tmp: Path
) -> dict[str, list[str]]:
    """An apt archive of `count` .deb files and an npm registry (at `url` + npm/) of `count`
    tarballs, each about `size` bytes, in the upstream's folder: the paths clients ask
    for, by kind."""
    from retreatkit.mirror.testrepos import make_deb, make_npm_tarball, write_apt, write_npm

    debs = {
        f"bench-deb{i}_1.0_all.deb": make_deb(tmp / "debs", f"bench-deb{i}", "1.0", pad=size)
        for i in range(count)
    }
    write_apt(up_root / "debian", "stable", debs, signer=None)
    tarballs = [make_npm_tarball(f"bench-npm{i}", "1.0.0", pad=size) for i in range(count)]
    write_npm(up_root / "npm", url + "npm/", tarballs)
    return {
        "apt": [f"/debian/pool/main/b/{name.split('_')[0]}/{name}" for name in debs],
        "npm": [f"/npm/bench-npm{i}/-/bench-npm{i}-1.0.0.tgz" for i in range(count)],
    }


def prime_paths(mirror: Target, kind: str, paths: list[str]) -> None:
    """What a client reads before the files (the mirror learns them), then each file."""
    from retreatkit.mirror.testrepos import arch

    if kind == "apt":
        http_get(f"{mirror.url}/debian/dists/stable/Release")
        http_get(f"{mirror.url}/debian/dists/stable/main/binary-{arch()}/Packages.xz")
    else:
        for path in paths:
            http_get(mirror.url + path.split("/-/")[0])  # the packument
    for path in paths:
        http_get(mirror.url + path)


def docroot_paths(up_root: Path, docroot: Path, paths: list[str], served_as: str) -> None:
    """The same files at the same paths for nginx; `served_as` maps a path to the
    upstream's file (the npm stub keeps `/npm/NAME/-/FILE` under `npm/`)."""
    for path in paths:
        dest = docroot / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(up_root / served_as / path.split("/", 2)[2], dest)


# -- report ---------------------------------------------------------------------------


R = TypeVar("R")


def median_run(runs: list[R], key: str) -> R:
    """The round whose `key` is the median (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: float(getattr(r, key)))
    return ordered[(len(ordered) - 1) // 2]


@dataclass
class Small:
    """The rounds of one server under the small-hit load, and their medians."""

    runs: list[WrkResult]

    def med(self, key: str) -> float:
        return statistics.median(float(getattr(r, key)) for r in self.runs)

    def per_request(self, key: str) -> float:
        """`key` (user_s or sys_s) per request in µs, of the round with the median CPU."""
        run = median_run(self.runs, "cpu_per_request_us")
        return float(getattr(run, key)) / max(run.requests, 1) * 1e6

    def spread(self, key: str, fmt: str = ",.0f") -> str:
        values = [float(getattr(r, key)) for r in self.runs]
        return " / ".join(format(v, fmt) for v in values)


@dataclass
class Large:
    runs: list[LargeResult]

    def med(self, key: str) -> float:
        return statistics.median(float(getattr(r, key)) for r in self.runs)

    def per_gib(self, key: str) -> float:
        """`key` (user_s or sys_s) per GiB, of the round with the median CPU per GiB."""
        run = median_run(self.runs, "cpu_per_gib")
        return float(getattr(run, key)) / (run.bytes / GIB)

    def spread(self, key: str, fmt: str = ".3f") -> str:
        return " / ".join(format(float(getattr(r, key)), fmt) for r in self.runs)


@dataclass
class Outcome:
    machine: dict[str, str]
    command: str
    settings: dict[str, Any]
    small: dict[str, Small]
    large: dict[str, Large]
    cold: ColdResult
    profile: Profile | None
    small_size: int
    large_size: int
    seconds: float = 0.0
    others: dict[str, dict[str, Small]] = field(default_factory=dict)  # apt, npm hits


def render(o: Outcome) -> str:
    c, p, st, mach = o.cold, o.profile, o.settings, o.machine
    m, n = o.small["mirror"], o.small["nginx"]
    lm, ln = o.large["mirror"], o.large["nginx"]
    rps_ratio = ratio(m.med("rps"), n.med("rps"))
    cpu_req = ratio(m.med("cpu_per_request_us"), n.med("cpu_per_request_us"))
    gib_ratio = ratio(lm.med("cpu_per_gib"), ln.med("cpu_per_gib"))
    mach_ratio = ratio(lm.med("machine_per_gib"), ln.med("machine_per_gib"))
    wait_ok = c.max_first_byte_gap_ms <= TARGET_WAIT_S * 1e3
    rounds = len(m.runs)
    lines = [
        SECTION,
        "",
        f"Command: `{o.command}` ({time.strftime('%Y-%m-%d %H:%M %Z')}, {o.seconds:.0f} s)",
        "",
        f"Machine: nproc {mach['nproc']}, {mach['cpu']}, kernel {mach['kernel']},"
        f" Python {mach['python']}, nginx {mach['nginx']} (Debian's nginx-light: 1 worker,"
        f" sendfile on, access_log off), {mach['wrk']}, {mach['curl']}, aiohttp"
        f" {mach['aiohttp']}, uvloop {mach['uvloop']}. Everything on 127.0.0.1; the mirror is"
        " one `retreatkit mirror` process (uvloop); server CPU is utime+stime from"
        " /proc/PID/stat (nginx: master + worker). The machine is shared with other work:"
        " each measurement waits for it to be idle first and reports what others took.",
        "",
        f"Medians of {rounds} rounds (servers alternating); each round's values under Details."
        " A user + sys split is that of the median round.",
        "",
        "| measure | mirror | nginx | mirror/nginx | target | status |",
        "| --- | ---: | ---: | ---: | --- | --- |",
        f"| small hits: requests/s ({st['small_files']} distinct {o.small_size / KIB:.0f} KiB"
        f" files, wrk -t1 -c{st['connections']} -d{st['duration']:g}s)"
        f" | {m.med('rps'):,.0f} | {n.med('rps'):,.0f} | {rps_ratio:.2f}x"
        f" | >= {TARGET_RPS_RATIO}x | {verdict(rps_ratio >= TARGET_RPS_RATIO)} |",
        f"| small hits: server CPU per request (user + sys)"
        f" | {m.med('cpu_per_request_us'):.0f} µs ({m.per_request('user_s'):.0f}"
        f" + {m.per_request('sys_s'):.0f}) | {n.med('cpu_per_request_us'):.0f} µs"
        f" ({n.per_request('user_s'):.0f} + {n.per_request('sys_s'):.0f}) | {cpu_req:.1f}x"
        " | | |",
        f"| small hits: latency p50 / p99 | {m.med('p50_ms'):.1f} / {m.med('p99_ms'):.1f} ms"
        f" | {n.med('p50_ms'):.1f} / {n.med('p99_ms'):.1f} ms | | | |",
        f"| large hit: server CPU per GiB, user + sys ({o.large_size // MIB} MiB file, curl"
        f" x{lm.runs[0].downloads} a round) | {lm.med('cpu_per_gib'):.3f} s"
        f" ({lm.per_gib('user_s'):.3f} + {lm.per_gib('sys_s'):.3f})"
        f" | {ln.med('cpu_per_gib'):.3f} s ({ln.per_gib('user_s'):.3f}"
        f" + {ln.per_gib('sys_s'):.3f}) | {gib_ratio:.2f}x | <= {TARGET_CPU_RATIO}x"
        f" | {verdict(gib_ratio <= TARGET_CPU_RATIO)} |",
        f"| large hit: whole machine's CPU per GiB (server, curl, kernel)"
        f" | {lm.med('machine_per_gib'):.3f} s | {ln.med('machine_per_gib'):.3f} s"
        f" | {ratio(lm.med('machine_per_gib'), ln.med('machine_per_gib')):.2f}x | | |",
        f"| large hit: MB/s per download | {lm.med('mb_per_s'):,.0f} | {ln.med('mb_per_s'):,.0f}"
        f" | {ratio(lm.med('mb_per_s'), ln.med('mb_per_s')):.2f}x | | |",
        *[
            f"| {kind} hits: requests/s and server CPU per request ({st['small_files']}"
            f" distinct {o.small_size / KIB:.0f} KiB {what}, same load)"
            f" | {h['mirror'].med('rps'):,.0f} ({h['mirror'].med('cpu_per_request_us'):.0f} µs)"
            f" | {h['nginx'].med('rps'):,.0f} ({h['nginx'].med('cpu_per_request_us'):.0f} µs)"
            f" | {ratio(h['mirror'].med('rps'), h['nginx'].med('rps')):.2f}x | | |"
            for kind, h in o.others.items()
            for what in [{"apt": ".deb files", "npm": "tarballs"}[kind]]
        ],
        f"| cold file: waiters' first body byte after client 1's (max of clients"
        f" 2..{c.clients}) | {c.max_first_byte_gap_ms:.1f} ms | | | <= {TARGET_WAIT_S * 1e3:.0f}"
        f" ms | {verdict(wait_ok)} |",
        f"| cold file: GETs of the file upstream (fake upstream's /_stats) | {c.upstream_gets}"
        f" | | | exactly 1 | {verdict(c.upstream_gets == 1)} |",
        "",
        "Details:",
        "",
        f"- Small hits, each round: mirror {m.spread('rps')} req/s at"
        f" {m.spread('cpu_per_request_us', '.0f')} µs CPU/request; nginx {n.spread('rps')}"
        f" req/s at {n.spread('cpu_per_request_us', '.0f')} µs. Errors: {m.med('errors'):.0f}"
        f" / {n.med('errors'):.0f} (median). CPU-seconds per second (1.00 = one core): server"
        f" {m.spread('cpu_busy', '.2f')} (mirror) vs {n.spread('cpu_busy', '.2f')} (nginx), wrk"
        f" {m.spread('client_busy', '.2f')} vs {n.spread('client_busy', '.2f')}, other"
        f" programs {m.spread('others_busy', '.2f')} vs {n.spread('others_busy', '.2f')}."
        " With one wrk thread on 2 cores, nginx's req/s is bounded by wrk rather than by"
        " nginx (its worker is not saturated), so its req/s is a floor and the CPU per"
        " request is the fairer comparison. A measurement during which other programs took"
        f" more than {NOISY} CPU-s/s was taken again (up to {TRIES} times; extra"
        f" measurements here: {_extra(m.runs + n.runs)}). The first round follows a"
        f" {st['warmup']:g} s warm-up run of each server that is not counted.",
        f"- Large hit, each round ({lm.runs[0].downloads} sequential `curl -o /dev/null`"
        " downloads after one warm-up download): server CPU per GiB"
        f" {lm.spread('cpu_per_gib')} (mirror) vs {ln.spread('cpu_per_gib')} (nginx); whole"
        f" machine {lm.spread('machine_per_gib')} vs {ln.spread('machine_per_gib')}; other"
        f" programs {lm.spread('others_busy', '.2f')} vs {ln.spread('others_busy', '.2f')}"
        f" CPU-s/s (measurements taken again: {_extra(lm.runs + ln.runs)}). On loopback the"
        " receiver's TCP work is done partly in the sender's"
        " system time, and how much depends on scheduling, so these vary from round to round.",
        f"- Cold file: {o.large_size // MIB} MiB, upstream paced at {st['rate_mbs']:g} MB/s"
        f" by a proxy in the bench, so the fill took {c.fill_s:.1f} s. Client 1 asked at 0,"
        f" clients 2..{c.clients} {c.join_after_s * 1e3:.0f} ms later. Client 1's first body"
        f" byte came {c.client1_ttfb_ms:.1f} ms after its request; the waiters' first bytes"
        f" came at most {c.max_first_byte_gap_ms:.1f} ms after client 1's, and at most"
        f" {c.max_waiter_ttfb_ms:.1f} ms after their own requests. Client 1's wait is the"
        " upstream's: the fake upstream reads and checksums the whole file before it answers"
        f" (its own first byte for a file of that size, asked directly:"
        f" {c.upstream_direct_ttfb_ms:.0f} ms). {c.late_clients} more clients joined"
        f" {c.late_at_s:g} s into the fill (clients {c.clients + 1}.."
        f"{c.clients + c.late_clients}): their first byte came at most"
        f" {c.max_late_ttfb_ms:.1f} ms after their requests. The mirror counted"
        f" {c.upstream_fetches} upstream fetch and {c.coalesced} coalesced requests; every"
        f" client got {'the whole file with the right sha256' if c.all_ok else 'NOT all bytes'}.",
    ]
    if c.per_client:
        lines += [
            "",
            "| client | asked at | first body byte at | after client 1's | own TTFB | done at |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {r['client']} | {r['start_ms']:.1f} ms | {r['first_byte_ms']:.1f} ms"
            f" | {r['gap_to_client1_ms']:+.1f} ms | {r['ttfb_ms']:.1f} ms"
            f" | {r['end_ms'] / 1e3:.2f} s |"
            for r in c.per_client
        ]
    if p is not None and p.samples:
        per_req = p.cpu_s / max(p.requests, 1) * 1e6
        lines += [
            "",
            "Profile of the mirror under the same small-hit load: one more wrk run with py-spy"
            f" attached to the event-loop thread ({p.rate} Hz; py-spy pauses the process for"
            f" each sample, so this run made {p.requests / max(p.seconds, 1e-9):,.0f} req/s at"
            f" {per_req:.0f} µs CPU per request; {p.samples:,} samples). Where the samples go,"
            " by the innermost frame that matches one of these parts:",
            "",
            "| part | share of samples |",
            "| --- | ---: |",
        ]
        lines += [f"| {name} | {share:.0%} |" for name, share in p.buckets]
        lines += ["", "Functions holding the most samples themselves (self time):", ""]
        lines += [f"- {share:.1%} `{fn}`" for fn, share in p.self_top[:12]]
    elif p is not None:
        lines += ["", f"Profile: {p.output}"]
    lines += ["", "Where we stand:", ""]
    lines.append(
        f"- Small hits: {rps_ratio:.2f}x nginx's req/s against >= {TARGET_RPS_RATIO}x:"
        f" {verdict(rps_ratio >= TARGET_RPS_RATIO)}; the mirror spends {cpu_req:.1f}x nginx's"
        " CPU per request." + (f" {_store_share(p)}" if p is not None and p.samples else "")
    )
    lines.append(
        f"- Large hits: {gib_ratio:.2f}x nginx's server CPU per GiB against <="
        f" {TARGET_CPU_RATIO}x: {verdict(gib_ratio <= TARGET_CPU_RATIO)}."
        + " uvloop has no native loop.sendfile (checked by this bench); the mirror's loop"
        " (retreatkit/loop.py) adds one on os.sendfile, so the user time is small. On loopback"
        " the receiver's TCP work is billed partly to the sender's system time, depending on"
        f" scheduling: the whole machine's CPU per GiB ({mach_ratio:.2f}x nginx's) is the"
        " steadier comparison."
    )
    lines.append(
        f"- Cold file: waiters' first byte {c.max_first_byte_gap_ms:.1f} ms after client 1's"
        f" against <= {TARGET_WAIT_S * 1e3:.0f} ms: {verdict(wait_ok)}; {c.upstream_gets}"
        f" upstream GET of the file against exactly 1: {verdict(c.upstream_gets == 1)}."
    )
    return "\n".join(lines) + "\n"


def _extra(runs: Sequence[WrkResult | LargeResult]) -> int:
    return sum(r.tries - 1 for r in runs)


def _store_share(p: Profile) -> str:
    shares = dict(p.buckets)
    own = sum(v for k, v in shares.items() if k.startswith(("the mirror's", "a hot-cache")))
    aio = sum(v for k, v in shares.items() if k.startswith("aiohttp "))
    send = sum(v for k, v in shares.items() if k.startswith("socket send"))
    return (
        f"In the profile, the mirror's own code (routes, hot cache, ranges, store lookups)"
        f" holds {own:.0%} of the samples, aiohttp's request and response code {aio:.0%},"
        f" and the socket write, which nginx pays as well, {send:.0%}."
    )


def print_table(o: Outcome) -> None:
    m, n = o.small["mirror"], o.small["nginx"]
    lm, ln = o.large["mirror"], o.large["nginx"]
    c = o.cold
    rows: list[tuple[str, str, str, str, str]] = []
    for name, a, b, fmt, target in (
        ("small hits req/s", m.med("rps"), n.med("rps"), ",.0f", ">= 0.3x"),
        ("small hits CPU µs/req", m.med("cpu_per_request_us"), n.med("cpu_per_request_us"),
         ".0f", ""),
        ("large hit CPU s/GiB", lm.med("cpu_per_gib"), ln.med("cpu_per_gib"), ".3f", "<= 1.5x"),
        ("large machine CPU s/GiB", lm.med("machine_per_gib"), ln.med("machine_per_gib"),
         ".3f", ""),
        ("large hit MB/s", lm.med("mb_per_s"), ln.med("mb_per_s"), ",.0f", ""),
    ):  # fmt: skip
        rows.append((name, format(a, fmt), format(b, fmt), f"{ratio(a, b):.2f}x", target))
    for kind, h in o.others.items():
        a, b = h["mirror"].med("rps"), h["nginx"].med("rps")
        rows.append((f"{kind} hits req/s", f"{a:,.0f}", f"{b:,.0f}", f"{ratio(a, b):.2f}x", ""))
    rows.append(
        ("cold: waiters' max gap", f"{c.max_first_byte_gap_ms:.1f} ms", "", "", "<= 100 ms")
    )
    rows.append(("cold: upstream GETs", str(c.upstream_gets), "", "", "exactly 1"))
    print()
    print(f"{'measure':<26}{'mirror':>12}{'nginx':>12}{'ratio':>9}  target")
    for name, a2, b2, r, t in rows:
        print(f"{name:<26}{a2:>12}{b2:>12}{r:>9}  {t}")
    print(flush=True)


# -- main -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds of the small and large runs (3)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of each wrk run (10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk warm-up (2)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    p.add_argument("--small-files", type=int, default=200, help="distinct small files (200)")
    p.add_argument("--small-kib", type=int, default=50, help="size of each small file (50)")
    p.add_argument("--large-mib", type=int, default=100, help="large and cold file size (100)")
    p.add_argument("--downloads", type=int, default=10, help="large downloads a round (10)")
    p.add_argument("--clients", type=int, default=10, help="clients of the cold file (10)")
    p.add_argument(
        "--join-after", type=float, default=0.05, help="s between client 1 and the rest (0.05)"
    )
    p.add_argument("--late", type=int, default=5, help="more cold clients joining mid-fill (5)")
    p.add_argument("--late-at", type=float, default=2.0, help="s after client 1 they join (2.0)")
    p.add_argument("--rate", type=float, default=20.0, help="cold upstream MB/s (20)")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        help="before each measurement, wait up to this many s for an idle machine (20)",
    )
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy run")
    p.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    p.add_argument("--throttle", nargs=3, metavar=("URL", "RATE", "MATCH"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["--cold-clients"] and len(raw) == 6:  # the child that plays the cold clients
        asyncio.run(clients_main(raw[1], int(raw[2]), float(raw[3]), int(raw[4]), float(raw[5])))
        return 0
    args = parse_args(raw)
    if args.throttle:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(throttle_main(args.throttle[0], float(args.throttle[1]), args.throttle[2]))
        return 0
    if args.rounds < 1 or args.clients < 1 or args.downloads < 1:
        print("--rounds, --clients and --downloads must be at least 1", file=sys.stderr)
        return 2
    for tool in ("nginx", "wrk", "curl"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install -y nginx-light wrk curl", file=sys.stderr)
            return 2
    command = "uv run python bench/mirror.py" + ("" if not raw else " " + " ".join(raw))
    info = machine()
    print(
        f"bench/mirror.py: nproc {info['nproc']}, {info['cpu']}, kernel {info['kernel']},"
        f" Python {info['python']}, nginx {info['nginx']}",
        flush=True,
    )
    py_spy = None if args.no_profile else ensure_py_spy()
    WORK.mkdir(parents=True, exist_ok=True)

    from retreatkit.mirror.testing import sha256, start_mirror, start_upstream, write_pypi

    small_size, large_size = args.small_kib * KIB, args.large_mib * MIB
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mirror-bench-") as tmp_name:
        tmp = Path(tmp_name)
        print("building wheels ...", flush=True)
        smalls = [wheel_of("small", f"1.0.{i}", small_size) for i in range(args.small_files)]
        bighit = [wheel_of("bighit", "1.0", large_size)]
        bigcold = [wheel_of("bigcold", "1.0", large_size)]
        up_root = tmp / "upstream"
        write_pypi(up_root, {"small": smalls, "bighit": bighit, "bigcold": bigcold})
        as_wheels = {
            name: [Wheel(name, f, d, sha256(d)) for f, d, _ in items]
            for name, items in (("small", smalls), ("bighit", bighit), ("bigcold", bigcold))
        }
        del smalls, bighit, bigcold
        cold_wheel, big = as_wheels["bigcold"][0], as_wheels["bighit"][0]
        actual_small = len(as_wheels["small"][0].data)

        stoppers: list[Any] = []
        try:
            upstream = start_upstream(up_root)
            stoppers.append(upstream.stop)
            throttle = subprocess.Popen(
                [
                    sys.executable, __file__, "--throttle", upstream.url,
                    str(args.rate * 1e6), cold_wheel.filename,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            stoppers.append(lambda: stop_popen(throttle))
            assert throttle.stderr is not None
            line = throttle.stderr.readline().decode()
            m = re.match(r"Throttle listening on (\S+)", line)
            if not m:
                raise BenchError(f"throttle proxy did not start: {line!r}")
            print("building an apt archive and an npm registry ...", flush=True)
            others = other_archives(up_root, upstream.url, args.small_files, small_size, tmp)
            mirror_server, admin = start_mirror(
                tmp / "store", pypi=m[1] + "simple/", npm=upstream.url + "npm/",
                apt={"debian": upstream.url + "debian"},
            )  # fmt: skip
            stoppers.append(mirror_server.stop)
            mirror = Target("mirror", mirror_server.url.rstrip("/"), mirror_server.process.pid)

            print("filling the mirror's cache ...", flush=True)
            prime(mirror, "small", as_wheels["small"], fetch=True)
            prime(mirror, "bighit", as_wheels["bighit"], fetch=True)
            prime(mirror, "bigcold", as_wheels["bigcold"], fetch=False)
            for kind, paths in others.items():
                prime_paths(mirror, kind, paths)
            docroot = tmp / "docroot"
            docroot_for(up_root, docroot, as_wheels["small"] + as_wheels["bighit"])
            docroot_paths(up_root, docroot, others["apt"], "debian")
            docroot_paths(up_root, docroot, others["npm"], "npm")
            nginx = Nginx.start(tmp / "nginx", docroot)
            stoppers.append(nginx.stop)
            nginx_t = Target("nginx", nginx.url, nginx.pid, nginx)
            lua = write_lua([w.path for w in as_wheels["small"]], tmp / "paths.lua")
            for t in (mirror, nginx_t):  # the same bytes from both, before measuring
                w = as_wheels["small"][0]
                if hashlib.sha256(http_get(t.url + w.path)).hexdigest() != w.sha256:
                    raise BenchError(f"{t.name} gives wrong bytes for {w.path}")

            small_runs: dict[str, list[WrkResult]] = {"mirror": [], "nginx": []}
            other_runs: dict[str, dict[str, list[WrkResult]]] = {
                kind: {"mirror": [], "nginx": []} for kind in others
            }
            other_lua = {
                kind: write_lua(paths, tmp / f"{kind}.lua") for kind, paths in others.items()
            }
            large_runs: dict[str, list[LargeResult]] = {"mirror": [], "nginx": []}
            for rnd in range(args.rounds):
                order = (nginx_t, mirror) if rnd % 2 == 0 else (mirror, nginx_t)
                for t in order:
                    print(f"round {rnd + 1} small hits: {t.name} ...", flush=True)
                    if rnd == 0:
                        run_wrk(t, lua, args.connections, args.warmup)
                    load = partial(run_wrk, t, lua, args.connections, args.duration)
                    r = quietly(load, args.quiet_wait)
                    small_runs[t.name].append(r)
                    print(
                        f"  {r.rps:,.0f} req/s, {r.cpu_per_request_us:.0f} µs CPU/request,"
                        f" p99 {r.p99_ms:.1f} ms, {r.errors} errors, others {r.others_busy:.2f}",
                        flush=True,
                    )
                for kind, lua_file in other_lua.items():
                    for t in order:
                        print(f"round {rnd + 1} {kind} hits: {t.name} ...", flush=True)
                        load = partial(run_wrk, t, lua_file, args.connections, args.duration)
                        r = quietly(load, args.quiet_wait)
                        other_runs[kind][t.name].append(r)
                        print(f"  {r.rps:,.0f} req/s, {r.cpu_per_request_us:.0f} µs CPU/request,"
                              f" {r.errors} errors", flush=True)  # fmt: skip
                for t in order:
                    print(f"round {rnd + 1} large hit: {t.name} ...", flush=True)
                    downloads = partial(run_downloads, t, big.path, len(big.data), args.downloads)
                    r2 = quietly(downloads, args.quiet_wait)
                    large_runs[t.name].append(r2)
                    print(
                        f"  {r2.cpu_per_gib:.3f} CPU s/GiB (machine {r2.machine_per_gib:.3f}),"
                        f" {r2.mb_per_s:,.0f} MB/s, others {r2.others_busy:.2f}",
                        flush=True,
                    )

            profile = None
            if py_spy is not None:
                print("profiling the mirror under the small-hit load ...", flush=True)
                wait_quiet(args.quiet_wait)
                out = WORK / "mirror-profile.json"
                profile = profile_mirror(py_spy, mirror, lua, args.connections, args.duration, out)

            print(
                f"cold file: {args.clients} + {args.late} clients, upstream at {args.rate:g}"
                " MB/s ...",
                flush=True,
            )
            wait_quiet(args.quiet_wait)
            cold_result = run_cold(
                mirror, admin, upstream.url, cold_wheel.path, f"/files/{cold_wheel.filename}",
                len(cold_wheel.data), cold_wheel.sha256, args.clients, args.join_after,
                args.late, args.late_at,
            )  # fmt: skip
            direct = upstream.url + "files/" + big.filename  # same size, not the cold path
            cold_result.upstream_direct_ttfb_ms = first_byte_ms(direct)
            print(
                f"  waiters' first byte at most {cold_result.max_first_byte_gap_ms:.1f} ms after"
                f" client 1's; {cold_result.upstream_gets} upstream GET",
                flush=True,
            )
        finally:
            for stop in reversed(stoppers):
                with contextlib.suppress(Exception):
                    stop()

    outcome = Outcome(
        machine=info,
        command=command,
        settings={
            "rounds": args.rounds,
            "duration": args.duration,
            "warmup": args.warmup,
            "connections": args.connections,
            "small_files": args.small_files,
            "downloads": args.downloads,
            "clients": args.clients,
            "late": args.late,
            "rate_mbs": args.rate,
        },
        small={k: Small(v) for k, v in small_runs.items()},
        others={kind: {k: Small(v) for k, v in runs.items()} for kind, runs in other_runs.items()},
        large={k: Large(v) for k, v in large_runs.items()},
        cold=cold_result,
        profile=profile,
        small_size=actual_small,
        large_size=large_size,
        seconds=time.monotonic() - started,
    )
    print_table(outcome)
    section = render(outcome)
    print(section)
    (WORK / "mirror.json").write_text(json.dumps(asdict(outcome), indent=2, default=str) + "\n")
    if not args.no_write:
        write_section(SECTION, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
