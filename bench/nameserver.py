"""The nameserver against dnsmasq on loopback: cache hits, 30% blocked, a 1M-entry list.

    uv run python bench/nameserver.py [--rounds 3] [--seconds 10] [--no-profile] [--wildcard]

One run, real processes, 127.0.0.1 only:

  setup    an upstream dnsmasq (retreatkit.nameserver.testing.Dnsmasq) answering
           --names test names (name0001.example.test ..., TEST-NET-2/3 addresses: public,
           so our rebinding protection keeps them) from a hosts file with a one-day TTL.
           Two servers under test forward to it: a second dnsmasq (--cache-size=10000,
           dnsmasq's own advised maximum; no rate limit, dnsmasq has none) and
           `retreatkit nameserver --rate-limit 0`. Both get the same blocklist of
           --blocked names: dnsmasq as --addn-hosts with 0.0.0.0 entries (how Pi-hole
           used dnsmasq), ours as --blocklist. Both caches are warmed with every name once.
  hits     dnsperf -c --clients -q --outstanding -Q --max-qps -l --seconds over the test
           names, against each server; queries/s from dnsperf, server CPU (utime+stime of
           the process and its children, all threads, from /proc) per completed query.
  mixed    the same, with a query file where 30% of lines are blocked names.
  fixed    (unless --fixed-qps 0) the cache-hit file at one fixed rate both servers can
           keep up with: CPU per query at equal load, where neither is saturated.
  uncached (unless --uncached 0) --uncached names no server has seen (u1.TAG.uncached.test
           ..., which the upstream answers by --address, TTL one day), each asked once
           at a fixed --uncached-qps: server CPU per cache miss, the answer cached.
  uncached0 the same under ttl0.test, which a second upstream answers with TTL 0 (both
           servers forward the zone there: dnsmasq --server=/ttl0.test/..., ours
           --forward): nothing to cache, so the plain forwarding cost. dnsmasq's cheapest
           miss: with a full cache of live answers, each insert costs it an eviction.
  mixed5   (unless --mixed-lines 0) --mixed-lines queries, each asked once at full speed:
           30% blocked names, 5% names never seen before, the rest cached names.
           Every measured attempt of these two gets a file of its own, so no name repeats.
  lists    a generated hosts-format list of --list-entries entries: time and RSS growth for
           our nameserver to load it, (a) as a process from its start until /status shows
           every entry (RSS against the same process without a list), (b) in a fresh
           interpreter with Blocklist().add_lines()/seal() (+ the merge the service does);
           (c) for reference, dnsmasq reading the same list as --addn-hosts (once).
  profile  (unless --no-profile) py-spy records our nameserver during one more cache-hit run.

Rounds alternate the order of the servers; the table shows medians. Before each
measurement the bench waits for an idle machine and records the CPU that other programs
took meanwhile; a disturbed measurement is taken again.

Targets: >= 1.0x dnsmasq's queries/s on cache hits, <= 1.5x its CPU per query; <= 3x
dnsmasq's CPU per uncached query (uncached0, dnsmasq's cheapest case); >=
0.8x dnsmasq's queries/s on mixed5; the 1M-entry list loaded in under 2 s and under 150 MB.
The table is printed and written to bench/RESULTS.md under
`## nameserver (bench/nameserver.py)`, leaving every other section as it is; the raw
numbers go to bench/.work/nameserver.json.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import linecache
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from benchlib import (
    ROOT,
    WORK,
    BenchError,
    busy_cpu,
    children_cpu,
    cpu_model,
    ensure_py_spy,
    memory_mb,
    proc_cpu,
    process_cpu_table,
    ratio,
    stop_popen,
    tree_cpu,
    verdict,
    version_of,
    wait_quiet,
    write_section,
)

DATA = WORK / "nameserver"
SECTION = "## nameserver (bench/nameserver.py)"
HOST = "127.0.0.1"
MIB = 1 << 20
TARGET_QPS_RATIO = 1.0
TARGET_CPU_RATIO = 1.5
TARGET_LOAD_S = 2.0
TARGET_LOAD_MB = 150.0
RELOADS = 3  # SIGHUP reloads of the big list after its first load
NOISY = 0.10  # CPU-s/s that other programs may take before a measurement is taken again
TRIES = 3
BLOCKED_SHARE = 0.30
UNCACHED_SHARE = 0.05
UNCACHED_ZONE = "uncached.test"  # the upstream answers every name under it
TTL0_ZONE = "ttl0.test"  # a second upstream answers every name under it, TTL 0
UPSTREAM_TTL = 86400
TARGET_UNCACHED_CPU_RATIO = 3.0
TARGET_MIXED5_QPS_RATIO = 0.8


# -- processes ------------------------------------------------------------------------


def machine() -> dict[str, str]:
    import dns.version
    import uvloop

    model = cpu_model()
    dnsperf = "?"
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        done = subprocess.run(["dnsperf", "-h"], capture_output=True, text=True, timeout=10)
        found = re.search(r"^Version (\S+)", done.stdout + done.stderr, re.M)
        dnsperf = found[1] if found else "?"
    commit, dirty = "?", ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(ROOT)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or "?"  # fmt: skip
        status = subprocess.run([*git, "status", "--porcelain", "retreatkit"],
                                capture_output=True, text=True, timeout=10).stdout  # fmt: skip
        dirty = " + uncommitted changes under retreatkit/" if status.strip() else ""
    return {
        "commit": commit + dirty,
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "dnsmasq": version_of(["dnsmasq", "--version"]).split("  ")[0],
        "dnsperf": dnsperf,
        "uvloop": str(getattr(uvloop, "__version__", "?")),
        "dnspython": dns.version.version,
    }


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def ask(port: int, name: str, timeout: float = 1.0) -> list[str] | None:
    """The A records a server gives for `name`, or None when it does not answer."""
    import dns.exception
    import dns.message
    import dns.query

    query = dns.message.make_query(name, "A")
    try:
        reply = dns.query.udp(query, HOST, port=port, timeout=timeout)
    except (TimeoutError, OSError, dns.exception.DNSException):
        return None
    return sorted(r.to_text() for rrset in reply.answer for r in rrset)


@dataclass
class Server:
    """A server under test: a process whose CPU we read, on a UDP port."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    admin: str = ""  # ours: http://host:port
    log: Path | None = None  # dnsmasq: its log file (SIGUSR1 writes its counters there)
    stopper: Callable[[], object] | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu(self) -> tuple[float, float]:
        return tree_cpu(self.pid)

    def stop(self) -> None:
        if self.stopper is not None:
            self.stopper()
        else:
            stop_popen(self.popen)

    def counters(self) -> dict[str, int]:
        """Queries this server forwarded upstream so far, and what it answered itself."""
        if self.admin:
            status = http_json(self.admin + "/status")["nameserver"]
            return {k: int(status[k]) for k in ("queries", "cache_hits", "blocked", "forwarded")}
        assert self.log is not None
        size = self.log.stat().st_size
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")[size:]
            m = re.search(r"queries forwarded (\d+), queries answered locally (\d+)", text)
            if m:
                return {"forwarded": int(m[1]), "answered_locally": int(m[2])}
            time.sleep(0.05)
        raise BenchError("dnsmasq wrote no counters after SIGUSR1")


def start_dnsmasq(
    upstream: int,
    blocked: Path,
    log: Path,
    extra: Sequence[str] = (),
    name: str = "dnsmasq",
    wildcard: bool = False,
) -> Server:
    """dnsmasq as a caching forwarder to `upstream`, with `blocked` as extra hosts;
    `wildcard`: on the wildcard address, as dnsmasq is by default (IP_PKTINFO replies)."""
    binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    for _ in range(5):  # a port free for UDP may be taken for TCP: try another
        port = free_udp_port()
        argv = [
            binary, "--keep-in-foreground", "--no-resolv", "--no-hosts", f"--port={port}",
            "--listen-address=127.0.0.1", *(() if wildcard else ("--bind-interfaces",)),
            f"--server=127.0.0.1#{upstream}",
            "--cache-size=10000", f"--addn-hosts={blocked}", "--local-ttl=2", "--pid-file=",
            f"--log-facility={log}", f"--user={getpass.getuser()}", *extra,
        ]  # fmt: skip
        log.write_text("")
        popen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and popen.poll() is None:
            if ask(port, "ready.example.test", 0.2) is not None:
                return Server(name, popen, port, log=log)
        stop_popen(popen)
    raise BenchError(f"dnsmasq did not start: {log.read_text()[-500:]}")


def start_ours(
    upstream: int, blocked: Path, extra: Sequence[str] = (), wildcard: bool = False
) -> Server:
    """Ours on 127.0.0.1, or with `wildcard` on 0.0.0.0 (the default `listen`)."""
    from retreatkit.nameserver.testing import start_nameserver

    ns = start_nameserver(
        "--upstream", f"{HOST}:{upstream}", "--rate-limit", "0", "--blocklist", str(blocked),
        *extra, listen="0.0.0.0:0" if wildcard else f"{HOST}:0",
    )  # fmt: skip
    return Server("ours", ns.process.popen, ns.port, admin=ns.admin, stopper=ns.stop)


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


# -- data -----------------------------------------------------------------------------


@dataclass
class Files:
    upstream_hosts: Path
    blocked_hosts: Path
    warm: Path
    hits: Path
    mixed: Path
    names: list[str]
    blocked: list[str]
    big_list: Path
    big_entries: int


def test_names(count: int) -> list[tuple[str, str]]:
    """(name, address): TEST-NET-2 and TEST-NET-3, public documentation addresses."""
    nets = ("198.51.100", "203.0.113")
    return [
        (f"name{i:04d}.example.test", f"{nets[i % 2]}.{(i // 2) % 254 + 1}")
        for i in range(1, count + 1)
    ]


def big_list(path: Path, entries: int) -> None:
    """A hosts-format blocklist like the big public ones: header, comments, localhost lines,
    then `0.0.0.0 name` lines of varied tracker-like names."""
    marker = f"# bench/nameserver.py list, {entries} entries, v1\n"
    if path.exists():
        with path.open() as f:
            if f.readline() == marker:
                return
    rng = random.Random(20261126)
    words = ["ads", "track", "pixel", "metrics", "stats", "beacon", "cdn", "tag", "click"]
    words += ["promo", "analytics", "telemetry", "srv", "ad", "banner", "log", "t", "px"]
    tlds = ("com", "net", "org", "io", "info", "de", "co.uk", "xyz", "ru", "fr", "com.br")
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        f.write(marker)
        f.write("# Title: generated tracker list\n127.0.0.1 localhost\n::1 localhost\n\n")
        for i in range(entries):
            if i % 10000 == 0:
                f.write(f"# section {i // 10000}\n")
            a, b, c = rng.choice(words), rng.getrandbits(24), rng.choice(words)
            f.write(f"0.0.0.0 {a}{i}.{b:x}-{c}.{rng.choice(tlds)}\n")
    tmp.replace(path)


def make_files(names: int, blocked_count: int, list_entries: int) -> Files:
    DATA.mkdir(parents=True, exist_ok=True)
    pairs = test_names(names)
    upstream_hosts = DATA / "upstream.hosts"
    upstream_hosts.write_text("".join(f"{addr} {name}\n" for name, addr in pairs))
    blocked = [f"ad{i:05d}.tracker{i % 97}.example" for i in range(1, blocked_count + 1)]
    blocked_hosts = DATA / "blocked.hosts"
    blocked_hosts.write_text(
        "# the mixed workload's blocklist\n" + "".join(f"0.0.0.0 {n}\n" for n in blocked)
    )
    rng = random.Random(7)
    cached = [name for name, _ in pairs]
    warm = DATA / "warm.txt"
    warm.write_text("".join(f"{n} A\n" for n in cached + blocked))
    hits = DATA / "hits.txt"
    shuffled = cached[:]
    rng.shuffle(shuffled)
    hits.write_text("".join(f"{n} A\n" for n in shuffled))
    # 30% of lines blocked: every blocked name once, cached names repeated to fill 70%
    lines_total = round(len(blocked) / BLOCKED_SHARE)
    mixed_lines = blocked + [cached[i % len(cached)] for i in range(lines_total - len(blocked))]
    rng.shuffle(mixed_lines)
    mixed = DATA / "mixed.txt"
    mixed.write_text("".join(f"{n} A\n" for n in mixed_lines))
    big = DATA / f"blocklist-{list_entries}.hosts"
    big_list(big, list_entries)
    return Files(upstream_hosts, blocked_hosts, warm, hits, mixed, cached, blocked, big,
                 list_entries)  # fmt: skip


_fresh = iter(range(1, 1 << 30))


def uncached_file(count: int, zone: str = UNCACHED_ZONE) -> Path:
    """`count` names no server has seen: every query a cache miss, on every server."""
    tag = f"t{next(_fresh)}x{random.getrandbits(32):08x}"
    path = DATA / "uncached.txt"
    path.write_text("".join(f"u{i}.{tag}.{zone} A\n" for i in range(count)))
    return path


def mixed5_file(files: Files, count: int) -> Path:
    """30% blocked names, 5% names never seen before, the rest cached names, shuffled."""
    tag = f"t{next(_fresh)}x{random.getrandbits(32):08x}"
    rng = random.Random(tag)
    lines = []
    fresh = 0
    for _ in range(count):
        draw = rng.random()
        if draw < BLOCKED_SHARE:
            lines.append(f"{rng.choice(files.blocked)} A\n")
        elif draw < BLOCKED_SHARE + UNCACHED_SHARE:
            lines.append(f"u{fresh}.{tag}.{UNCACHED_ZONE} A\n")
            fresh += 1
        else:
            lines.append(f"{rng.choice(files.names)} A\n")
    path = DATA / "mixed5.txt"
    path.write_text("".join(lines))
    return path


@dataclass
class Workload:
    name: str
    queries: Callable[[], Path]  # a file per measured attempt
    seconds: float  # dnsperf -l; 0: each line of the file once (-n 1)
    qps: int
    servers: tuple[Server, ...]


# -- dnsperf --------------------------------------------------------------------------


@dataclass
class PerfRun:
    server: str
    workload: str
    qps: float = 0.0
    sent: int = 0
    completed: int = 0
    lost: int = 0
    rcodes: str = ""
    run_s: float = 0.0  # dnsperf's own run time
    wall_s: float = 0.0  # our window around it
    user_s: float = 0.0
    sys_s: float = 0.0
    cpu_s: float = 0.0
    us_per_query: float = 0.0
    user_us: float = 0.0
    sys_us: float = 0.0
    server_busy: float = 0.0  # server CPU-s/s (1.00 = one core)
    client_busy: float = 0.0  # dnsperf's CPU-s/s
    others_busy: float = 0.0  # the rest of the machine's CPU-s/s
    others_top: list[tuple[str, float]] = field(default_factory=list)
    latency_ms: float = 0.0
    tries: int = 1


def _field(text: str, label: str) -> str:
    m = re.search(rf"^\s*{re.escape(label)}:\s*(.*)$", text, re.M)
    if not m:
        raise BenchError(f"dnsperf printed no {label!r}:\n{text[-2000:]}")
    return m[1].strip()


def dnsperf(
    server: Server,
    workload: str,
    queries: Path,
    seconds: float,
    clients: int,
    outstanding: int,
    max_qps: int,
    ours: Sequence[int],
) -> PerfRun:
    """One dnsperf run against `server`; its CPU and everyone else's around it.
    `seconds` 0: every line of the file once (-n 1), however long that takes."""
    length = ["-l", f"{seconds:g}"] if seconds else ["-n", "1"]
    argv = [
        "dnsperf", "-s", HOST, "-p", str(server.port), "-d", str(queries), *length,
        "-c", str(clients), "-q", str(outstanding), "-Q", str(max_qps),
    ]  # fmt: skip
    ours_set = {*ours, server.pid}
    table0 = process_cpu_table()
    t0, cpu0, kids0, busy0 = time.monotonic(), server.cpu(), children_cpu(), busy_cpu()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=(seconds or 600) + 60)
    t1, cpu1, kids1, busy1 = time.monotonic(), server.cpu(), children_cpu(), busy_cpu()
    table1 = process_cpu_table()
    if done.returncode != 0:
        raise BenchError(f"dnsperf failed ({done.returncode}): {done.stderr[-1000:]}")
    text = done.stdout
    r = PerfRun(server.name, workload)
    r.sent = int(_field(text, "Queries sent").split()[0])
    r.completed = int(_field(text, "Queries completed").split()[0])
    r.lost = int(_field(text, "Queries lost").split()[0])
    r.rcodes = _field(text, "Response codes")
    r.run_s = float(_field(text, "Run time (s)"))
    r.qps = float(_field(text, "Queries per second"))
    r.latency_ms = float(_field(text, "Average Latency (s)").split()[0]) * 1e3
    r.wall_s = t1 - t0
    r.user_s, r.sys_s = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    r.cpu_s = r.user_s + r.sys_s
    n = max(r.completed, 1)
    r.us_per_query, r.user_us, r.sys_us = r.cpu_s / n * 1e6, r.user_s / n * 1e6, r.sys_s / n * 1e6
    r.server_busy = r.cpu_s / r.wall_s
    client = kids1 - kids0
    r.client_busy = client / r.wall_s
    # the other servers we started (idle now) count as ours too; the server's own figure
    # includes its children already
    ours_cpu = r.cpu_s + sum(
        table1[p][1] - table0[p][1] for p in ours_set - {server.pid} if p in table0 and p in table1
    )
    rest = (busy1 - busy0) - ours_cpu - client
    r.others_busy = max(0.0, rest) / r.wall_s
    deltas: dict[str, float] = {}
    for pid, (name, cpu) in table1.items():
        if pid in ours_set or pid == os.getpid():
            continue
        before = table0[pid][1] if pid in table0 else 0.0  # a newcomer: all of its CPU
        deltas[name] = deltas.get(name, 0.0) + cpu - before
    top = sorted(deltas.items(), key=lambda kv: -kv[1])[:3]
    r.others_top = [(k, round(v / r.wall_s, 3)) for k, v in top if v > 0]
    return r


R = TypeVar("R", bound=PerfRun)


def quietly(measure: Callable[[], R], quiet_wait: float) -> R:
    """Wait for an idle machine, measure; again (up to TRIES) if others got busy meanwhile."""
    result: R | None = None
    for attempt in range(TRIES):
        wait_quiet(quiet_wait)
        result = measure()
        result.tries = attempt + 1
        if result.others_busy <= NOISY:
            break
        if attempt + 1 < TRIES:
            top = ", ".join(f"{k} {v:.2f}" for k, v in result.others_top)
            print(f"  (others took {result.others_busy:.2f} CPU-s/s [{top}]: once more)")
    assert result is not None
    return result


def check_run(r: PerfRun) -> None:
    if r.lost > r.sent * 0.001 or not r.rcodes.startswith("NOERROR") or "," in r.rcodes:
        print(f"  WARNING: {r.server} {r.workload}: lost {r.lost}, rcodes {r.rcodes}")


# -- blocklist loading ----------------------------------------------------------------


@dataclass
class LoadRun:
    """Our nameserver as a process, started with the big list; and without, for the RSS."""

    entries: int = 0
    to_listening_s: float = 0.0  # process start -> "Nameserver listening"
    to_loaded_s: float = 0.0  # process start -> /status shows every entry
    load_s: float = 0.0  # "listening" -> every entry (the list is read after the sockets)
    rss_mb: float = 0.0
    hwm_mb: float = 0.0
    base_rss_mb: float = 0.0
    base_hwm_mb: float = 0.0
    rss_growth_mb: float = 0.0
    peak_growth_mb: float = 0.0
    cpu_s: float = 0.0  # the whole process's CPU until loaded (start-up included)
    reloads_rss_growth_mb: float = 0.0  # VmRSS growth after RELOADS reloads (SIGHUP)
    reloads_peak_growth_mb: float = 0.0  # VmHWM growth once they are done


@dataclass
class InProcess:
    """Blocklist().add_lines()/seal() in a fresh interpreter (and the service's merge)."""

    entries: int = 0
    bad_lines: int = 0
    add_s: float = 0.0
    seal_s: float = 0.0
    merge_s: float = 0.0
    total_s: float = 0.0  # add + seal
    rss_before_mb: float = 0.0
    rss_growth_mb: float = 0.0  # after seal, the pending list freed
    peak_growth_mb: float = 0.0  # during add_lines/seal
    merged_peak_growth_mb: float = 0.0  # once merge has run too


@dataclass
class DnsmasqLoad:
    entries: int = 0
    to_answer_s: float = 0.0  # start -> answers a name from the list's end
    rss_mb: float = 0.0
    cpu_s: float = 0.0


def nameserver_argv(upstream: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "retreatkit.cli.main", "nameserver", "--listen", f"{HOST}:0",
        "--admin", f"{HOST}:0", "--upstream", f"{HOST}:{upstream}", "--rate-limit", "0", *extra,
    ]  # fmt: skip


def load_in_service(upstream: int, files: Files) -> LoadRun:
    from retreatkit.testing import Process

    run = LoadRun()
    # the same process without a list: its RSS at the same point is the baseline
    base = Process.start(nameserver_argv(upstream))
    try:
        base.wait_for(r"^Nameserver listening on ")
        admin = base.wait_for(r"^Admin on (http://\S+)/status$")[1]
        http_json(admin + "/status")
        time.sleep(0.3)
        run.base_rss_mb, run.base_hwm_mb = memory_mb(base.popen.pid)
    finally:
        base.stop()
    t0 = time.monotonic()
    proc = Process.start(nameserver_argv(upstream, "--blocklist", str(files.big_list)))
    try:
        proc.wait_for(r"^Nameserver listening on ")
        t_listen = time.monotonic()
        admin = proc.wait_for(r"^Admin on (http://\S+)/status$")[1]
        deadline = t0 + 120
        while True:
            status = http_json(admin + "/status")["nameserver"]
            if status["blocklist_entries"] >= files.big_entries:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"the list did not load: {status['blocklist_entries']}")
            time.sleep(0.02)
        t_loaded = time.monotonic()
        run.entries = int(status["blocklist_entries"])
        run.rss_mb, run.hwm_mb = memory_mb(proc.popen.pid)
        run.cpu_s = sum(proc_cpu(proc.popen.pid))
        for _ in range(RELOADS):  # each swaps a new copy in while the old one answers
            before = [s["loaded_at"] for s in status["blocklists"]]
            proc.popen.send_signal(signal.SIGHUP)
            while [s["loaded_at"] for s in status["blocklists"]] == before:
                if time.monotonic() > deadline + 120:
                    raise BenchError("a reload did not finish")
                time.sleep(0.05)
                status = http_json(admin + "/status")["nameserver"]
        rss, hwm = memory_mb(proc.popen.pid)
        run.reloads_rss_growth_mb = rss - run.base_rss_mb
        run.reloads_peak_growth_mb = hwm - run.base_hwm_mb
    finally:
        proc.stop()
    run.to_listening_s = t_listen - t0
    run.to_loaded_s = t_loaded - t0
    run.load_s = t_loaded - t_listen
    run.rss_growth_mb = run.rss_mb - run.base_rss_mb
    run.peak_growth_mb = run.hwm_mb - run.base_hwm_mb
    return run


def load_child(path: str) -> None:
    """In a fresh interpreter: what the list costs Blocklist, printed as JSON."""
    from retreatkit.nameserver.policy import Blocklist

    pid = os.getpid()
    result = InProcess()
    result.rss_before_mb, _ = memory_mb(pid)
    t0 = time.perf_counter()
    part = Blocklist()
    with Path(path).open(encoding="utf-8", errors="replace") as lines:
        part.add_lines(path, lines)
    t1 = time.perf_counter()
    part.seal()
    t2 = time.perf_counter()
    rss, hwm = memory_mb(pid)
    merged = Blocklist.merge([part])  # what Nameserver.reload does with the sealed parts
    t3 = time.perf_counter()
    _, hwm2 = memory_mb(pid)
    result.entries, result.bad_lines = len(merged), part.bad_lines
    result.add_s, result.seal_s, result.merge_s = t1 - t0, t2 - t1, t3 - t2
    result.total_s = t2 - t0
    result.rss_growth_mb = rss - result.rss_before_mb
    result.peak_growth_mb = hwm - result.rss_before_mb
    result.merged_peak_growth_mb = hwm2 - result.rss_before_mb
    print(json.dumps(asdict(result)))


def load_in_process(files: Files) -> InProcess:
    done = subprocess.run(
        [sys.executable, __file__, "--load-child", str(files.big_list)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise BenchError(f"load child failed: {done.stderr[-1500:]}")
    return InProcess(**json.loads(done.stdout.strip().splitlines()[-1]))


def load_dnsmasq(files: Files, upstream: int) -> DnsmasqLoad:
    """dnsmasq reading the same list as --addn-hosts: start until it answers from it."""
    last = files.big_list.read_text().rstrip("\n").rsplit("\n", 1)[1].split()[1]
    log = DATA / "dnsmasq-biglist.log"
    t0 = time.monotonic()
    port = free_udp_port()
    argv = [
        shutil.which("dnsmasq") or "/usr/sbin/dnsmasq", "--keep-in-foreground", "--no-resolv",
        "--no-hosts", f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
        f"--server=127.0.0.1#{upstream}", "--cache-size=10000",
        f"--addn-hosts={files.big_list}", "--pid-file=", f"--log-facility={log}",
        f"--user={getpass.getuser()}",
    ]  # fmt: skip
    popen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = t0 + 120
        while ask(port, last, 0.1) != ["0.0.0.0"]:
            if popen.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"dnsmasq did not load the list: {log.read_text()[-500:]}")
        result = DnsmasqLoad(entries=files.big_entries, to_answer_s=time.monotonic() - t0)
        result.rss_mb = memory_mb(popen.pid)[0]
        result.cpu_s = sum(proc_cpu(popen.pid))
        return result
    finally:
        stop_popen(popen)


# -- profile --------------------------------------------------------------------------


@dataclass
class Profile:
    samples: int = 0
    rate: int = 0
    run: PerfRun | None = None
    buckets: list[tuple[str, float]] = field(default_factory=list)  # share of samples
    self_top: list[tuple[str, float]] = field(default_factory=list)
    lines_top: list[tuple[str, float]] = field(default_factory=list)  # our source lines
    output: str = ""


# where a sample's time goes, decided by its innermost frame
BUCKETS: tuple[tuple[str, str], ...] = (
    ("transport.sendto: the sendmsg syscall (kernel loopback send + wake-up) and uvloop's"
     " address conversion", "sendto"),
    ("uvloop's own C code: epoll, recvmsg (kernel receive), bytes and address objects,"
     " calling datagram_received", "loop"),
    ("wire.parse: header, name walk, key bytes", "parse"),
    ("Query/Entry object construction", "objects"),
    ("Template.render: patch ID/flags/question/TTL, bytes copy", "render"),
    ("Resolver.fast + Cache.get + Entry.local (lookups, monotonic clock)", "fast"),
    ("UDPServer.datagram_received itself: gate, stats counters, hit_keys Counter, and its"
     " return (freeing the query's objects)", "server"),
)  # fmt: skip


def _bucket(leaf: str, source: str) -> str:
    fn = leaf.split(" (", 1)[0]
    if fn == "UDPServer.datagram_received":
        return "sendto" if "sendto(" in source else "server"
    if fn.startswith(("Gate.", "Counter.", "Stats.")):
        return "server"
    if fn in ("Runner.run", "run") or not fn:
        return "loop"
    if fn == "parse":
        return "parse"
    if fn.startswith(("__create_fn__", "Query.", "Entry.__init__")) or "<string>" in leaf:
        return "objects"
    if fn.startswith("Template."):
        return "render"
    if fn.startswith(("Resolver.", "Cache.", "Entry.")):
        return "fast"
    return "other"


def _source(frame: str) -> str:
    m = re.search(r"\((.+):(\d+)\)$", frame)
    if not m:
        return ""
    path = m[1] if Path(m[1]).is_absolute() else str(ROOT / m[1])  # py-spy: relative to cwd
    return linecache.getline(path, int(m[2])).strip()


def _short(frame: str) -> str:
    fn, _, where = frame.partition(" (")
    where = re.sub(r"^.*/(?:site-packages|lib/python3\.\d+)/", "", where)
    where = re.sub(r"^.*/(retreatkit|bench)/", r"\1/", where)
    return f"{fn} ({where}" if where else fn


def profile_ours(
    py_spy: Path, server: Server, files: Files, args: argparse.Namespace, ours: Sequence[int]
) -> Profile:
    rate = 250
    seconds = max(4.0, args.seconds / 2)
    raw = DATA / "profile.txt"
    raw.unlink(missing_ok=True)
    spy = subprocess.Popen(
        [
            str(py_spy), "record", "--pid", str(server.pid), "--rate", str(rate), "--nonblocking",
            "--duration", f"{int(seconds) + 2}", "--format", "raw", "--output", str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(1.0)
    run = dnsperf(server, "profile", files.hits, seconds, args.clients, args.outstanding,
                  args.max_qps, ours)  # fmt: skip
    _, err = spy.communicate(timeout=seconds + 60)
    prof = Profile(rate=rate, run=run)
    if spy.returncode != 0 or not raw.exists():
        prof.output = f"py-spy failed: {err.decode(errors='replace')[-500:]}"
        return prof
    own: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        source = _source(leaf)
        buckets[_bucket(leaf, source)] += count
        own[_short(leaf).split(":")[0] + ")"] += count
        if re.search(r"\((?:.*/)?retreatkit/", leaf):
            lines[f"{_short(leaf)} `{source}`"] += count
    prof.samples = total
    if total:
        names = dict((key, name) for name, key in BUCKETS)
        names["other"] = "other"
        prof.buckets = [(names[b], n / total) for b, n in buckets.most_common()]
        prof.self_top = [(f, n / total) for f, n in own.most_common(12)]
        prof.lines_top = [(f, n / total) for f, n in lines.most_common(12)]
    return prof


# -- report ---------------------------------------------------------------------------


def med(runs: Sequence[Any], key: str) -> float:
    return statistics.median(float(getattr(r, key)) for r in runs)


def median_run(runs: Sequence[PerfRun], key: str) -> PerfRun:
    ordered = sorted(runs, key=lambda r: float(getattr(r, key)))
    return ordered[(len(ordered) - 1) // 2]


def spread(runs: Sequence[Any], key: str, fmt: str) -> str:
    return " / ".join(format(float(getattr(r, key)), fmt) for r in runs)


@dataclass
class Outcome:
    machine: dict[str, str]
    command: str
    settings: dict[str, Any]
    perf: dict[str, dict[str, list[PerfRun]]]  # workload -> server -> rounds
    loads: list[LoadRun]
    inproc: list[InProcess]
    dnsmasq_load: DnsmasqLoad | None
    counters: dict[str, dict[str, int]]
    profile: Profile | None
    seconds: float = 0.0


DETAILS = (
    ("hits", "Cache hits"), ("mixed", "Mixed"), ("fixed", "Fixed rate"), ("uncached", "Uncached"),
    ("uncached0", "Uncached, TTL 0"), ("mixed5", "Mixed with uncached"),
)  # fmt: skip
# workload -> (queries/s target, CPU per query target, the dnsmasq the targets compare with)
TARGETS: dict[str, tuple[float | None, float | None, str]] = {
    "hits": (TARGET_QPS_RATIO, TARGET_CPU_RATIO, "dnsmasq"),
    "uncached0": (None, TARGET_UNCACHED_CPU_RATIO, "dnsmasq"),
    "mixed5": (TARGET_MIXED5_QPS_RATIO, None, "dnsmasq"),
}


def workload_rows(o: Outcome, workload: str, label: str) -> list[str]:
    runs = o.perf.get(workload)
    if not runs:
        return []
    qps_target, cpu_target, against = TARGETS.get(workload, (None, None, "dnsmasq"))
    us = runs["ours"]
    rows = []
    for name in [n for n in runs if n != "ours"]:
        dm = runs[name]
        q_ratio = ratio(med(us, "qps"), med(dm, "qps"))
        c_ratio = ratio(med(us, "us_per_query"), med(dm, "us_per_query"))
        mu, md = median_run(us, "us_per_query"), median_run(dm, "us_per_query")
        q_goal = qps_target if name == against else None
        c_goal = cpu_target if name == against else None
        what = label
        rows += [
            f"| {what}: queries/s | {med(us, 'qps'):,.0f} | {med(dm, 'qps'):,.0f}"
            f" | {q_ratio:.2f}x | {f'>= {q_goal}x' if q_goal else ''}"
            f" | {verdict(q_ratio >= q_goal) if q_goal else ''} |",
            f"| {what}: server CPU per query (user + sys)"
            f" | {med(us, 'us_per_query'):.2f} µs ({mu.user_us:.2f} + {mu.sys_us:.2f})"
            f" | {med(dm, 'us_per_query'):.2f} µs ({md.user_us:.2f} + {md.sys_us:.2f})"
            f" | {c_ratio:.2f}x | {f'<= {c_goal}x' if c_goal else ''}"
            f" | {verdict(c_ratio <= c_goal) if c_goal else ''} |",
        ]
    return rows


def render(o: Outcome) -> str:
    st, mach = o.settings, o.machine
    hits = o.perf["hits"]
    q_ratio = ratio(med(hits["ours"], "qps"), med(hits["dnsmasq"], "qps"))
    c_ratio = ratio(med(hits["ours"], "us_per_query"), med(hits["dnsmasq"], "us_per_query"))
    load_s = med(o.loads, "to_loaded_s")
    peak = med(o.loads, "peak_growth_mb")
    dperf = (
        f"`dnsperf -c {st['clients']} -q {st['outstanding']} -Q {st['max_qps']}"
        f" -l {st['seconds']:g}`"
    )
    lines = [
        SECTION,
        "",
        f"Command: `{o.command}` (commit {mach['commit']},"
        f" {time.strftime('%Y-%m-%d %H:%M %Z')}, {o.seconds:.0f} s)",
        "",
        f'Machine: nproc {mach["nproc"]}, CPU "{mach["cpu"]}", kernel {mach["kernel"]},'
        f" Python {mach['python']}, uvloop {mach['uvloop']}, dnspython {mach['dnspython']};"
        f" {mach['dnsmasq']}, dnsperf {mach['dnsperf']} (Debian). Everything on 127.0.0.1:"
        f" dnsperf, the server under test and the upstream dnsmasq share the {mach['nproc']}"
        " cores. Server CPU is utime+stime of the server's process (all threads, and"
        " children) from /proc/PID/stat around each dnsperf run, divided by the queries"
        " dnsperf saw answered. The machine is shared with other sessions: each measurement"
        " waits for it to be idle and records what other programs took meanwhile.",
        "",
        f"Setup: an upstream dnsmasq answers {st['names']} names (name0001.example.test ...,"
        f" 198.51.100.x / 203.0.113.x) from a hosts file, TTL {UPSTREAM_TTL} s. Under test,"
        " both forwarding to it: **dnsmasq** (`--no-resolv --server=127.0.0.1#UPPORT"
        " --cache-size=10000 --addn-hosts=blocked.hosts --local-ttl=2`; dnsmasq has no rate"
        " limit) and **ours** (`retreatkit nameserver --upstream 127.0.0.1:UPPORT"
        " --blocklist blocked.hosts --rate-limit 0`; the default limit of 1000 q/s per client"
        f" is switched off for the load test). blocked.hosts holds {st['blocked']} names as"
        " `0.0.0.0 name` lines, the form Pi-hole fed dnsmasq. Both caches were warmed"
        " with every name once (dnsperf -n 1), so every measured query is answered from"
        " cache or from the blocklist. **cache hits**: the query file is the"
        f" {st['names']} cached names; **mixed**: {BLOCKED_SHARE:.0%} of its lines are"
        " blocked names, the rest cached names. dnsperf as "
        f"{dperf} (UDP, no EDNS), the same for both. **uncached**: {st['uncached']:,}"
        f" names under {UNCACHED_ZONE} (the upstream answers them all with `--address`)"
        " that no server has seen, each asked once (`-n 1`) at"
        f" {st['uncached_qps']:,} q/s, their answers (TTL one day) cached by both, so"
        " dnsmasq's cache is full of live answers after 10,000 of them; **uncached0**: the"
        f" same under {TTL0_ZONE}, which both servers forward to a second upstream that"
        " answers with TTL 0: nothing is cached, the plain cost of forwarding, dnsmasq's"
        " cheapest miss (the target is against this one). **mixed5**: each of"
        f" {st['mixed_lines']:,} queries once, at full speed: {BLOCKED_SHARE:.0%} blocked,"
        f" {UNCACHED_SHARE:.0%} names never seen before, the rest cached names. Every"
        " measured attempt of these two has a query file of its own."
        + (
            " Both servers listen on the wildcard address (`--wildcard`; ours on 0.0.0.0,"
            " dnsmasq without --bind-interfaces): each reply's source comes from IP_PKTINFO."
            if st.get("wildcard")
            else ""
        ),
        "",
        f"Medians of {len(hits['ours'])} rounds (servers alternating); every round's numbers"
        " are under Details. The user + sys split is that of the median round.",
        "",
        "| measure | ours | dnsmasq | ours/dnsmasq | target | status |",
        "| --- | ---: | ---: | ---: | --- | --- |",
        *workload_rows(o, "hits", "cache hits"),
        *workload_rows(o, "mixed", f"mixed, {BLOCKED_SHARE:.0%} blocked"),
        *workload_rows(o, "fixed", f"cache hits at a fixed {st['fixed_qps']:,} q/s"),
        *workload_rows(o, "uncached", f"uncached, each name once at {st['uncached_qps']:,} q/s"),
        *workload_rows(
            o, "uncached0", f"uncached, TTL 0 (nothing cached), {st['uncached_qps']:,} q/s"
        ),
        *workload_rows(
            o, "mixed5", f"mixed, {BLOCKED_SHARE:.0%} blocked + {UNCACHED_SHARE:.0%} uncached"
        ),
    ]
    lines += [
        "",
        f"Blocklist loading, {st['list_entries']:,}-entry hosts-format list"
        f" ({o.loads[0].entries:,} entries loaded; medians of {len(o.loads)}):",
        "",
        "| measure | ours | target | status |",
        "| --- | ---: | --- | --- |",
        f"| process start -> /status shows every entry | {load_s:.2f} s | < {TARGET_LOAD_S:g} s"
        f" | {verdict(load_s < TARGET_LOAD_S)} |",
        f"| of which: start -> listening (interpreter, imports, sockets)"
        f" | {med(o.loads, 'to_listening_s'):.2f} s | | |",
        f"| of which: listening -> every entry (read, parse, seal, merge, swap)"
        f" | {med(o.loads, 'load_s'):.2f} s | | |",
        f"| RSS growth, peak (VmHWM) against the same process without a list"
        f" | {peak:.0f} MB | < {TARGET_LOAD_MB:g} MB | {verdict(peak < TARGET_LOAD_MB)} |",
        f"| RSS growth, once loaded (VmRSS) | {med(o.loads, 'rss_growth_mb'):.0f} MB | | |",
        f"| RSS growth after {RELOADS} reloads (SIGHUP): VmRSS / peak (VmHWM)"
        f" | {med(o.loads, 'reloads_rss_growth_mb'):.0f} /"
        f" {med(o.loads, 'reloads_peak_growth_mb'):.0f} MB | | |",
        f"| in-process Blocklist().add_lines() + seal() | {med(o.inproc, 'total_s'):.2f} s"
        f" ({med(o.inproc, 'add_s'):.2f} + {med(o.inproc, 'seal_s'):.2f}) | < {TARGET_LOAD_S:g} s"
        f" | {verdict(med(o.inproc, 'total_s') < TARGET_LOAD_S)} |",
        f"| in-process RSS growth: peak / after seal"
        f" | {med(o.inproc, 'peak_growth_mb'):.0f} / {med(o.inproc, 'rss_growth_mb'):.0f} MB"
        f" | < {TARGET_LOAD_MB:g} MB | {verdict(med(o.inproc, 'peak_growth_mb') < TARGET_LOAD_MB)}"
        " |",
        f"| in-process Blocklist.merge() of the sealed list (the service does this too)"
        f" | {med(o.inproc, 'merge_s'):.2f} s (peak growth with it"
        f" {med(o.inproc, 'merged_peak_growth_mb'):.0f} MB) | | |",
    ]
    if o.dnsmasq_load is not None:
        d = o.dnsmasq_load
        lines.append(
            f"| for reference: dnsmasq {o.machine['dnsmasq'].removeprefix('Dnsmasq version ')}"
            " with the same list as --addn-hosts, start -> answers from it (one run)"
            f" | {d.to_answer_s:.2f} s, RSS {d.rss_mb:.0f} MB | | |"
        )
    lines += ["", "Details:", ""]
    for workload, label in DETAILS:
        runs = o.perf.get(workload)
        if not runs:
            continue
        us, dm = runs["ours"], runs["dnsmasq"]
        lines.append(
            f"- {label}, each round: ours {spread(us, 'qps', ',.0f')} q/s at"
            f" {spread(us, 'us_per_query', '.2f')} µs CPU/query; dnsmasq"
            f" {spread(dm, 'qps', ',.0f')} q/s at {spread(dm, 'us_per_query', '.2f')} µs."
            f" Server CPU-s/s (1.00 = one core): {spread(us, 'server_busy', '.2f')} vs"
            f" {spread(dm, 'server_busy', '.2f')}; dnsperf {spread(us, 'client_busy', '.2f')}"
            f" vs {spread(dm, 'client_busy', '.2f')}; other programs"
            f" {spread(us, 'others_busy', '.2f')} vs {spread(dm, 'others_busy', '.2f')}."
            f" Average latency {med(us, 'latency_ms'):.2f} vs {med(dm, 'latency_ms'):.2f} ms;"
            f" lost queries {sum(r.lost for r in us)} vs {sum(r.lost for r in dm)};"
            f" taken again: {sum(r.tries - 1 for r in us + dm)}."
        )
    dm_busy = med(hits["dnsmasq"], "server_busy")
    if dm_busy < 0.95:
        lines.append(
            f"- Under the cache-hit load dnsmasq used {dm_busy:.2f} of a core, ours"
            f" {med(hits['ours'], 'server_busy'):.2f}: with dnsperf on the other of the 2 cores,"
            " dnsmasq is not saturated (dnsperf and the kernel's loopback work are the limit),"
            " so its queries/s is a floor and the CPU per query is the fairer comparison."
        )
    fwd = o.counters
    lines.append(
        f"- Upstream traffic: after all runs ours had forwarded"
        f" {fwd['ours'].get('forwarded', '?')} queries and dnsmasq"
        f" {fwd['dnsmasq'].get('forwarded', '?')}: the {st['names']} warm-up queries and the"
        " names of the uncached, uncached0 and mixed5 runs (plus one readiness probe for"
        f" dnsmasq); the rest came from cache. Ours counted {fwd['ours'].get('blocked', '?')}"
        " blocked answers, every one it gave (cached or not)."
    )
    lines.append(
        "- Blocklist loading, each round: start -> every entry"
        f" {spread(o.loads, 'to_loaded_s', '.2f')} s; peak RSS growth"
        f" {spread(o.loads, 'peak_growth_mb', '.0f')} MB (baseline process"
        f" {med(o.loads, 'base_rss_mb'):.0f} MB RSS); in-process add_lines + seal"
        f" {spread(o.inproc, 'total_s', '.2f')} s. /status is polled every 20 ms; the list is"
        " read in a worker thread after the sockets are up, so the server answers (without"
        " blocking) while it loads."
    )
    lines += render_profile(o.profile)
    lines += ["", "Where we stand:", ""]
    lines.append(
        f"- Cache hits: {q_ratio:.2f}x dnsmasq's queries/s against >= {TARGET_QPS_RATIO}x:"
        f" {verdict(q_ratio >= TARGET_QPS_RATIO)}; {c_ratio:.2f}x its CPU per query against"
        f" <= {TARGET_CPU_RATIO}x: {verdict(c_ratio <= TARGET_CPU_RATIO)}."
    )
    mu = median_run(hits["ours"], "us_per_query")
    md = median_run(hits["dnsmasq"], "us_per_query")
    lines.append(
        f"- Where the gap is: kernel (sys) time per cache hit is about the same for both"
        f" ({mu.sys_us:.1f} µs ours, {md.sys_us:.1f} µs dnsmasq: recvmsg, and sendmsg with the"
        f" loopback delivery to dnsperf); user time is {mu.user_us:.1f} µs against"
        f" {md.user_us:.1f} µs. At most 1.5x dnsmasq's CPU per query leaves ours"
        f" {TARGET_CPU_RATIO * md.us_per_query - mu.sys_us:.1f} µs of user time per query."
    )
    for workload, what in (("uncached0", "Uncached queries"), ("mixed5", "Mixed with uncached")):
        runs = o.perf.get(workload)
        if not runs:
            continue
        qps_goal, cpu_goal, against = TARGETS[workload]
        us, dm = runs["ours"], runs[against]
        if cpu_goal is not None:
            c = ratio(med(us, "us_per_query"), med(dm, "us_per_query"))
            lines.append(
                f"- {what}: {c:.2f}x the CPU per query of {against} against <= {cpu_goal}x:"
                f" {verdict(c <= cpu_goal)}."
            )
        if qps_goal is not None:
            q = ratio(med(us, "qps"), med(dm, "qps"))
            lines.append(
                f"- {what}: {q:.2f}x the queries/s of {against} against >= {qps_goal}x:"
                f" {verdict(q >= qps_goal)}."
            )
    lines.append(
        f"- 1M-entry list: {load_s:.2f} s from process start against < {TARGET_LOAD_S:g} s:"
        f" {verdict(load_s < TARGET_LOAD_S)}; {peak:.0f} MB peak RSS growth against"
        f" < {TARGET_LOAD_MB:g} MB: {verdict(peak < TARGET_LOAD_MB)}."
    )
    return "\n".join(lines) + "\n"


def render_profile(p: Profile | None) -> list[str]:
    if p is None:
        return []
    if not p.samples or p.run is None:
        return ["", f"Profile: {p.output}"]
    r = p.run
    lines = [
        "",
        f"Profile of ours under the cache-hit load: one more dnsperf run ({r.run_s:.0f} s) with"
        f" py-spy {p.rate} Hz --nonblocking attached ({r.qps:,.0f} q/s, {r.us_per_query:.2f} µs"
        f" CPU/query = {r.user_us:.2f} user + {r.sys_us:.2f} sys; {p.samples:,} samples)."
        " Where the samples go, by the innermost frame (py-spy sees Python frames only, so"
        " uvloop's C code and the kernel's work inside a syscall land on the Python line"
        " that called them):",
        "",
        "| part | share of samples | ≈ µs per query |",
        "| --- | ---: | ---: |",
    ]
    lines += [
        f"| {name} | {share:.0%} | {share * r.us_per_query:.2f} |" for name, share in p.buckets
    ]
    lines += ["", "Source lines of ours holding the most samples (self time):", ""]
    lines += [f"- {share:.1%} {where}" for where, share in p.lines_top[:10]]
    return lines


def print_table(o: Outcome) -> None:
    print()
    print(f"{'':34} {'ours':>14} {'dnsmasq':>14} {'ratio':>8}")
    for workload in ("hits", "mixed", "fixed", "uncached", "uncached0", "mixed5"):
        runs = o.perf.get(workload)
        if not runs:
            continue
        us = runs["ours"]
        for name in [n for n in runs if n != "ours"]:
            dm = runs[name]
            tag = workload if name == "dnsmasq" else f"{workload} vs no list"
            print(
                f"{tag + ' queries/s':34} {med(us, 'qps'):>14,.0f} {med(dm, 'qps'):>14,.0f}"
                f" {ratio(med(us, 'qps'), med(dm, 'qps')):>7.2f}x"
            )
            print(
                f"{tag + ' CPU µs/query':34} {med(us, 'us_per_query'):>14.2f}"
                f" {med(dm, 'us_per_query'):>14.2f}"
                f" {ratio(med(us, 'us_per_query'), med(dm, 'us_per_query')):>7.2f}x"
            )
    print(f"{'1M list: start -> loaded (s)':34} {med(o.loads, 'to_loaded_s'):>14.2f}")
    print(f"{'1M list: peak RSS growth (MB)':34} {med(o.loads, 'peak_growth_mb'):>14.0f}")
    print(f"{'1M list in-process add+seal (s)':34} {med(o.inproc, 'total_s'):>14.2f}")
    print(f"{'1M list in-process peak (MB)':34} {med(o.inproc, 'peak_growth_mb'):>14.0f}")
    if o.dnsmasq_load is not None:
        d = o.dnsmasq_load
        print(f"{'1M list: dnsmasq start -> answers':34} {'':>14} {d.to_answer_s:>14.2f}")
    print()


# -- main -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds of every measurement (3)")
    p.add_argument("--seconds", type=float, default=10.0, help="dnsperf -l of each run (10)")
    p.add_argument("--clients", type=int, default=4, help="dnsperf -c (4)")
    p.add_argument("--outstanding", type=int, default=100, help="dnsperf -q (100)")
    p.add_argument("--max-qps", type=int, default=200000, help="dnsperf -Q (200000)")
    p.add_argument(
        "--fixed-qps", type=int, default=30000, help="the fixed-rate run's -Q; 0 skips it (30000)"
    )
    p.add_argument("--fixed-seconds", type=float, default=4.0, help="its -l (4)")
    p.add_argument(
        "--uncached", type=int, default=30000, help="names of the uncached run; 0 skips it (30000)"
    )
    p.add_argument("--uncached-qps", type=int, default=5000, help="its -Q (5000)")
    p.add_argument(
        "--mixed-lines", type=int, default=400000, help="queries of mixed5; 0 skips it (400000)"
    )
    p.add_argument("--names", type=int, default=1000, help="cached test names (1000)")
    p.add_argument("--blocked", type=int, default=3000, help="blocked names (3000)")
    p.add_argument("--list-entries", type=int, default=1_000_000, help="big list (1000000)")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        help="before each measurement, wait up to this many s for an idle machine (20)",
    )
    p.add_argument("--no-dnsmasq-list", action="store_true", help="skip dnsmasq's list load")
    p.add_argument(
        "--lists-only",
        action="store_true",
        help="only our process loading the big list and reloading it; printed, not written",
    )
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy run")
    p.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    p.add_argument(
        "--wildcard",
        action="store_true",
        help="both servers on the wildcard address, as deployed (their defaults): each"
        " reply's source from IP_PKTINFO; dnsperf still asks 127.0.0.1",
    )
    return p.parse_args(argv)


def warm(server: Server, files: Files) -> None:
    """Every name once, the way dnsperf asks (the cache key includes the EDNS flags)."""
    done = subprocess.run(
        ["dnsperf", "-s", HOST, "-p", str(server.port), "-d", str(files.warm), "-n", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    completed = int(_field(done.stdout, "Queries completed").split()[0])
    total = len(files.names) + len(files.blocked)
    if completed != total:
        raise BenchError(f"warming {server.name}: {completed} of {total} answered")
    for name, want in ((files.names[0], None), (files.blocked[0], ["0.0.0.0"])):
        got = ask(server.port, name)
        if not got or (want is not None and got != want) or (want is None and got == ["0.0.0.0"]):
            raise BenchError(f"{server.name} answers {name} with {got}")


def lists_only(args: argparse.Namespace) -> int:
    """--lists-only: the list-loading rows of the table, for our process alone."""
    from retreatkit.nameserver.testing import Dnsmasq

    files = make_files(args.names, args.blocked, args.list_entries)
    upstream = Dnsmasq.start(files.upstream_hosts, ttl=UPSTREAM_TTL)
    try:
        for rnd in range(args.rounds):
            wait_quiet(args.quiet_wait)
            r = load_in_service(upstream.port, files)
            print(
                f"round {rnd + 1}: {r.entries:,} entries, {r.to_loaded_s:.2f} s from start;"
                f" RSS growth: peak +{r.peak_growth_mb:.1f} MB, loaded +{r.rss_growth_mb:.1f} MB;"
                f" after {RELOADS} reloads +{r.reloads_rss_growth_mb:.1f} MB, peak"
                f" +{r.reloads_peak_growth_mb:.1f} MB",
                flush=True,
            )
    finally:
        upstream.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["--load-child"] and len(raw) == 2:
        load_child(raw[1])
        return 0
    args = parse_args(raw)
    if args.rounds < 1:
        print("--rounds must be at least 1", file=sys.stderr)
        return 2
    for tool in ("dnsperf", "dnsmasq"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"{tool} is missing: apt-get install -y dnsperf dnsmasq-base", file=sys.stderr)
            return 2
    command = "uv run python bench/nameserver.py" + ("" if not raw else " " + " ".join(raw))
    info = machine()
    print(
        f"bench/nameserver.py: nproc {info['nproc']}, {info['cpu']}, kernel {info['kernel']},"
        f" Python {info['python']}, {info['dnsmasq']}, dnsperf {info['dnsperf']}",
        flush=True,
    )
    if args.lists_only:
        return lists_only(args)
    py_spy = None if args.no_profile else ensure_py_spy()
    started = time.monotonic()
    print("writing the hosts files, query files and the big list ...", flush=True)
    files = make_files(args.names, args.blocked, args.list_entries)

    from retreatkit.nameserver.testing import Dnsmasq

    stoppers: list[Callable[[], object]] = []
    perf: dict[str, dict[str, list[PerfRun]]] = {}
    try:
        upstream = Dnsmasq.start(
            files.upstream_hosts,
            ttl=UPSTREAM_TTL,
            extra=(f"--address=/{UNCACHED_ZONE}/198.51.100.200",),
        )
        stoppers.append(upstream.stop)
        empty = DATA / "empty.hosts"
        empty.write_text("")
        ttl0 = Dnsmasq.start(empty, ttl=0, extra=(f"--address=/{TTL0_ZONE}/198.51.100.201",))
        stoppers.append(ttl0.stop)
        dm = start_dnsmasq(
            upstream.port, files.blocked_hosts, DATA / "dnsmasq.log",
            [f"--server=/{TTL0_ZONE}/{HOST}#{ttl0.port}"], wildcard=args.wildcard,
        )  # fmt: skip
        stoppers.append(dm.stop)
        us = start_ours(
            upstream.port, files.blocked_hosts, ["--forward", f"{TTL0_ZONE}={HOST}:{ttl0.port}"],
            wildcard=args.wildcard,
        )  # fmt: skip
        stoppers.append(us.stop)
        ours_pids = [upstream.process.pid, ttl0.process.pid, dm.pid, us.pid]
        for server in (dm, us):
            print(f"warming {server.name} on port {server.port} ...", flush=True)
            warm(server, files)

        workloads = [
            Workload("hits", lambda: files.hits, args.seconds, args.max_qps, (dm, us)),
            Workload("mixed", lambda: files.mixed, args.seconds, args.max_qps, (dm, us)),
        ]
        if args.fixed_qps:
            workloads.append(
                Workload("fixed", lambda: files.hits, args.fixed_seconds, args.fixed_qps, (dm, us))
            )
        if args.uncached:
            workloads += [
                Workload("uncached", lambda: uncached_file(args.uncached), 0,
                         args.uncached_qps, (dm, us)),
                Workload("uncached0", lambda: uncached_file(args.uncached, TTL0_ZONE), 0,
                         args.uncached_qps, (dm, us)),
            ]  # fmt: skip
        if args.mixed_lines:
            workloads.append(Workload(
                "mixed5", lambda: mixed5_file(files, args.mixed_lines), 0, args.max_qps, (dm, us)
            ))  # fmt: skip
        for rnd in range(args.rounds):
            for load in workloads:
                order = load.servers if rnd % 2 == 0 else load.servers[::-1]
                for server in order:
                    print(f"round {rnd + 1} {load.name}: {server.name} ...", flush=True)

                    def measure(s: Server = server, w: Workload = load) -> PerfRun:
                        return dnsperf(s, w.name, w.queries(), w.seconds, args.clients,
                                       args.outstanding, w.qps, ours_pids)  # fmt: skip

                    r = quietly(measure, args.quiet_wait)
                    check_run(r)
                    perf.setdefault(load.name, {}).setdefault(server.name, []).append(r)
                    print(
                        f"  {r.qps:,.0f} q/s, {r.us_per_query:.2f} µs CPU/query"
                        f" ({r.user_us:.2f} user + {r.sys_us:.2f} sys), server"
                        f" {r.server_busy:.2f} CPU-s/s, dnsperf {r.client_busy:.2f},"
                        f" others {r.others_busy:.2f}",
                        flush=True,
                    )
        counters = {"ours": us.counters(), "dnsmasq": dm.counters()}
        print(f"counters after the runs: {counters}", flush=True)

        profile = None
        if py_spy is not None:
            print("profiling ours under the cache-hit load ...", flush=True)
            wait_quiet(args.quiet_wait)
            profile = profile_ours(py_spy, us, files, args, ours_pids)
        dm.stop()
        us.stop()

        loads: list[LoadRun] = []
        inproc: list[InProcess] = []
        for rnd in range(args.rounds):
            print(f"round {rnd + 1} blocklist loading ...", flush=True)
            wait_quiet(args.quiet_wait)
            lr = load_in_service(upstream.port, files)
            loads.append(lr)
            wait_quiet(args.quiet_wait)
            ip = load_in_process(files)
            inproc.append(ip)
            print(
                f"  service: {lr.to_loaded_s:.2f} s from start ({lr.load_s:.2f} s after"
                f" listening), peak RSS +{lr.peak_growth_mb:.0f} MB, loaded"
                f" +{lr.rss_growth_mb:.0f} MB; in-process: add {ip.add_s:.2f} s + seal"
                f" {ip.seal_s:.2f} s (merge {ip.merge_s:.2f} s), peak +{ip.peak_growth_mb:.0f} MB",
                flush=True,
            )
        dnsmasq_load = None
        if not args.no_dnsmasq_list:
            print("dnsmasq reading the same list (reference) ...", flush=True)
            wait_quiet(args.quiet_wait)
            dnsmasq_load = load_dnsmasq(files, upstream.port)
            print(
                f"  {dnsmasq_load.to_answer_s:.2f} s, RSS {dnsmasq_load.rss_mb:.0f} MB",
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
            "seconds": args.seconds,
            "clients": args.clients,
            "outstanding": args.outstanding,
            "max_qps": args.max_qps,
            "fixed_qps": args.fixed_qps,
            "fixed_seconds": args.fixed_seconds,
            "uncached": args.uncached,
            "uncached_qps": args.uncached_qps,
            "mixed_lines": args.mixed_lines,
            "names": args.names,
            "blocked": args.blocked,
            "list_entries": args.list_entries,
            "wildcard": args.wildcard,
        },
        perf=perf,
        loads=loads,
        inproc=inproc,
        dnsmasq_load=dnsmasq_load,
        counters=counters,
        profile=profile,
        seconds=time.monotonic() - started,
    )
    print_table(outcome)
    section = render(outcome)
    print(section)
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "nameserver.json").write_text(json.dumps(asdict(outcome), indent=2, default=str) + "\n")
    if not args.no_write:
        write_section(SECTION, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
