"""VM images against the same services as local processes: size, first answer, memory.

    uv run python bench/images.py [--services relay,mirror,nameserver] [--kernels own,debian]
                                  [--rounds 3] [--no-floor] [--write]

For each service, and for each kernel (`own`: `retreatkit image kernel`, built first if
missing; `debian`: Debian's cloud kernel), one run:

  size     the image built by `retreatkit.image.build` (kernel + initramfs, bytes)
  answer   seconds from qemu's start (under KVM if a timed boot shows it works here, else
           TCG) to the service's first good answer through its forwarded port: the relay
           answers `bob/1 send` with `ok NAMEPLATE`, the nameserver gives a local name's
           address over UDP, the mirror answers GET / with 200. Median of --rounds boots
           at --memory MB, after a first: the host RSS of qemu is read at that moment.
  first    the same for the first boot of the image as built, whose kernel and initramfs
           the host unpacks before qemu starts (kept for every later boot: bootcache.py)
  cpu      CPU seconds qemu used from its start to that answer: under TCG the steadier
           figure, as wall time moves with whatever else the host runs.
  floor    the least guest memory (MB, a multiple of 8) at which the image boots, gives
           that answer and then its admin endpoint's within 60 s, ten boots out of ten, by
           bisection between 16 and --memory (near its floor a guest may answer once and
           panic the next time; in 48 MB the relay answers, then panics as its admin
           endpoint loads).
  admin    seconds from the same start to the admin endpoint's first /healthz: the admin
           code loads after the service answers (docs/images.md, Start-up)
  local    the same service as `retreatkit SERVICE` on loopback: seconds from its start to
           the same first answer, its RSS then, and to its admin endpoint.

Targets with our kernel: image <= 8 MB, first answer <= 3 s under emulation, boots in
64 MB. The table is printed; --write puts it in bench/RESULTS.md under
`## VM images (bench/images.py)`; raw numbers go to bench/.work/images.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from benchlib import (
    WORK,
    cpu_model,
    memory_mb,
    proc_cpu,
    stamp,
    time_until,
    verdict,
    wait_quiet,
    write_section,
)

from retreatkit import config
from retreatkit.image import bootcache, build, kernel, qemu, run
from retreatkit.image import spec as specs

SECTION = "## VM images (bench/images.py)"
ANSWER_TIMEOUT = 60.0
RECORD = ("bench.retreat.lan", "10.9.8.7")
TOKEN = "bench"  # the guests' admin token


def relay_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"bob/1 send\n")
            return s.recv(64).startswith(b"ok ")
    except OSError:
        return False


class NameserverAsker:
    """Asks the nameserver for a local name over one UDP socket, again at every call, and
    takes an answer to any question it asked. A guest not listening yet drops a query
    without a word: waiting for each answer long (or asking from a new socket each time)
    would add up to that wait to the first answer's time."""

    def __init__(self, host: str, port: int) -> None:
        import dns.message

        self.at = (host, port)
        self.query = dns.message.make_query(RECORD[0], "A")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.02)

    def __call__(self) -> bool:
        import dns.exception
        import dns.message

        try:
            self.sock.sendto(self.query.to_wire(), self.at)
            while True:
                data = self.sock.recv(4096)
                try:
                    reply = dns.message.from_wire(data)
                except dns.exception.DNSException:
                    continue
                if reply.id == self.query.id:
                    return any(r.to_text() == RECORD[1] for rr in reply.answer for r in rr)
        except OSError:  # no answer within the wait (socket.timeout), or none possible
            return False

    def close(self) -> None:
        self.sock.close()


def http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    """GET `url` answers 200."""
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=0.5) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def mirror_answers(host: str, port: int) -> bool:
    return http_ok(f"http://{host}:{port}/")


def admin_answers(url: str, token: str = "") -> bool:
    """The admin endpoint's /healthz: it loads after the service answers (docs/images.md).
    A guest's endpoint faces beyond loopback, so it wants the token even to read."""
    return http_ok(f"{url}/healthz", {"Authorization": f"Bearer {token}"} if token else None)


def done_asking(answers: Callable[[], bool]) -> None:
    if isinstance(answers, NameserverAsker):
        answers.close()


# service -> (host, port) -> a check, true once the service gives a good answer
ANSWERS: dict[str, Callable[[str, int], Callable[[], bool]]] = {
    "relay": lambda host, port: lambda: relay_answers(host, port),
    "nameserver": NameserverAsker,
    "mirror": lambda host, port: lambda: mirror_answers(host, port),
}


def bench_config(folder: Path) -> dict[str, object]:
    cfg = config.load(None)
    cfg["mirror"].update(pypi="http://127.0.0.1:9/simple/", opam="http://127.0.0.1:9/opam")
    cfg["mirror"]["store"] = str(folder / "store")
    cfg["nameserver"].update(upstreams=["127.0.0.1:9"], records=dict([RECORD]))
    return cfg


@dataclass
class Boot:
    answer_seconds: float | None  # None: no answer within ANSWER_TIMEOUT
    qemu_rss_mb: float
    admin_seconds: float | None = None
    cpu_seconds: float | None = None  # CPU the process used until its first answer


def cpu_seconds(pid: int) -> float:
    user, system = proc_cpu(pid)
    return user + system


def boot_once(image: Path, service: str, memory: int, cfg: dict[str, object]) -> Boot:
    """One boot to the first good answer; the guest is powered off right after."""

    async def go() -> Boot:
        launch = run.Launch.prepare(image, cfg, TOKEN, [], memory, diskless=True)
        port = launch.forwards[0].port
        accel = await asyncio.to_thread(qemu.accel, image / "kernel", launch.manifest["machine"])
        with tempfile.TemporaryDirectory() as scratch:
            guest = run.Guest(launch, Path(scratch), run.ConsoleLog(Path(scratch) / "console"))
            start = time.monotonic()
            await guest.start(accel)
            pid = guest.pid
            assert pid is not None
            answers = ANSWERS[service]("127.0.0.1", port)

            def answered_or_gone() -> bool:  # a guest out of memory panics, and qemu exits
                return not Path(f"/proc/{pid}").exists() or answers()

            try:
                seconds = await asyncio.to_thread(
                    time_until, answered_or_gone, ANSWER_TIMEOUT, start
                )
                cpu = cpu_seconds(pid) if guest.running else None
                rss = memory_mb(pid)[0] if guest.running else 0.0
                admin = None
                if not guest.running:
                    seconds = None
                else:
                    admin = await asyncio.to_thread(
                        time_until,
                        lambda: admin_answers(launch.admin_url, TOKEN),
                        ANSWER_TIMEOUT,
                        start,
                    )
            finally:
                guest.kill()
                await guest.wait()
                done_asking(answers)
        return Boot(seconds, rss, admin, cpu)

    return asyncio.run(go())


FLOOR_BOOTS = 10  # a size is the floor only if every one of these boots answers: the
# mirror in 64 MB panicked 4 boots in 28 on one day, yet passed five in five (and once
# ten in ten): a floor read from few boots flatters


def boots(image: Path, service: str, memory_mb: int, cfg: dict[str, object], times: int) -> bool:
    """Whether `memory_mb` runs the image in full (the service answers, then its admin
    endpoint) `times` times out of as many."""
    return all(up(boot_once(image, service, memory_mb, cfg)) for _ in range(times))


def up(boot: Boot) -> bool:
    return boot.answer_seconds is not None and boot.admin_seconds is not None


def floor_mb(image: Path, service: str, top: int, cfg: dict[str, object]) -> int | None:
    """The least multiple of 8 MB the image runs in (`up`) FLOOR_BOOTS times in as many:
    near its floor a guest may answer once and panic ("deadlocked on memory") the next.
    Bisection between 16 and `top` with one boot a size, then the size found booted the
    rest of the times, and the next one up whenever a boot fails."""
    low, high = 2, top // 8  # in units of 8 MB; high is known to boot (checked first)
    if not boots(image, service, high * 8, cfg, 1):
        return None
    while high - low > 1:
        middle = (low + high) // 2
        if boots(image, service, middle * 8, cfg, 1):
            high = middle
        else:
            low = middle
    more = FLOOR_BOOTS - 1  # the bisection booted this size once already
    while not boots(image, service, high * 8, cfg, more):
        high, more = high + 1, FLOOR_BOOTS
        if high * 8 > top:
            return None
    return high * 8


def local_once(service: str, cfg_path: Path) -> Boot:
    """`retreatkit SERVICE` on loopback: seconds to its first answer, its RSS then, and
    seconds to its admin endpoint's."""
    port = qemu.free_port("127.0.0.1", ("udp", "tcp") if service == "nameserver" else ("tcp",))
    admin_port = qemu.free_port("127.0.0.1")
    argv = [sys.executable, "-m", "retreatkit.cli.main", "--config", str(cfg_path), service,
            "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin_port}"]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        answers = ANSWERS[service]("127.0.0.1", port)
        seconds = time_until(answers, ANSWER_TIMEOUT, start)
        done_asking(answers)
        cpu = cpu_seconds(proc.pid)
        rss = memory_mb(proc.pid)[0]
        admin_url = f"http://127.0.0.1:{admin_port}"
        admin = time_until(lambda: admin_answers(admin_url), ANSWER_TIMEOUT, start)
    finally:
        proc.terminate()
        proc.wait(30)
    return Boot(seconds, rss, admin, cpu)


@dataclass
class Row:
    service: str
    kind: str  # own, debian, local
    size_bytes: int | None
    answer_seconds: float | None
    floor_mb: int | None
    rss_mb: float
    accel: str
    admin_seconds: float | None = None
    cpu_seconds: float | None = None
    first_seconds: float | None = None  # the image's first boot, unpacked before it


def measure(args: argparse.Namespace) -> list[Row]:
    work = WORK / "images"
    work.mkdir(parents=True, exist_ok=True)
    cfg = bench_config(work)
    cfg_path = work / "retreat.toml"
    cfg_path.write_text(
        '[mirror]\npypi = "http://127.0.0.1:9/simple/"\nopam = "http://127.0.0.1:9/opam"\n'
        f'store = "{work / "store"}"\n[nameserver]\nupstreams = ["127.0.0.1:9"]\n'
        f'records = {{ "{RECORD[0]}" = "{RECORD[1]}" }}\n'
    )
    if "own" in args.kernels and kernel.own() is None:
        kernel.build(print)
    rows = []
    for service in args.services:
        for kind in args.kernels:
            image = work / kind / service
            manifest = build.build(service, image, kind)
            for name in ("kernel", "initramfs"):  # as if built here for the first time
                bootcache.forget(image / name)
            wait_quiet(args.quiet_wait)
            first = boot_once(image, service, args.memory, cfg).answer_seconds
            boots = []
            for _ in range(args.rounds):
                wait_quiet(args.quiet_wait)
                boots.append(boot_once(image, service, args.memory, cfg))
            floor = None if args.no_floor else floor_mb(image, service, args.memory, cfg)
            machine = manifest["machine"]
            answer, rss, admin, cpu = medians([b for b in boots if b.answer_seconds is not None])
            rows.append(Row(service, kind, manifest["size_bytes"], answer, floor, rss,
                            qemu.accel(image / "kernel", machine), admin, cpu, first))  # fmt: skip
            print(rows[-1], flush=True)
        local = [local_once(service, cfg_path) for _ in range(args.rounds)]
        answer, rss, admin, cpu = medians([b for b in local if b.answer_seconds is not None])
        rows.append(Row(service, "local", None, answer, None, rss, "-", admin, cpu))
        print(rows[-1], flush=True)
    return rows


def medians(boots: list[Boot]) -> tuple[float | None, float, float | None, float | None]:
    """First answer, RSS, admin endpoint and CPU: medians over the boots that answered."""
    if not boots:
        return None, 0.0, None, None
    admins = [b.admin_seconds for b in boots if b.admin_seconds is not None]
    cpus = [b.cpu_seconds for b in boots if b.cpu_seconds is not None]
    return (
        statistics.median(b.answer_seconds or 0.0 for b in boots),
        statistics.median(b.qemu_rss_mb for b in boots),
        statistics.median(admins) if admins else None,
        statistics.median(cpus) if cpus else None,
    )


def _cell(value: float | int | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(rows: list[Row], args: argparse.Namespace) -> str:
    lines = [
        SECTION,
        "",
        f"`uv run python bench/images.py --rounds {args.rounds} --memory {args.memory}` "
        f"on {cpu_model()} ({stamp()}); medians. Image = kernel + initramfs; first answer "
        "from qemu's (or the process's) start; floor = least guest memory that boots to an answer "
        "and then its admin endpoint's, ten times in ten; "
        "admin = its admin endpoint's first /healthz, from the same start (it loads after the "
        "service answers); CPU = the CPU seconds qemu (or the process) used until the first "
        "answer, steadier than wall time under emulation; RSS = qemu's (or the process's) "
        "resident memory at the first answer; first boot = the first answer of the image's "
        "first boot, its kernel and initramfs unpacked by the host before qemu starts (kept "
        "for the boots after it, which the other columns measure).",
        "",
        "| service | run as | accel | image MB | first answer s | CPU s | admin s | floor MB "
        "| RSS MB | first boot s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = None if r.size_bytes is None else r.size_bytes / 1e6
        lines.append(f"| {r.service} | {r.kind} | {r.accel} | {_cell(size, '.1f')} | "
                     f"{_cell(r.answer_seconds, '.2f')} | {_cell(r.cpu_seconds, '.2f')} | "
                     f"{_cell(r.admin_seconds, '.2f')} | {_cell(r.floor_mb, 'd')} | "
                     f"{r.rss_mb:.0f} | {_cell(r.first_seconds, '.2f')} |")  # fmt: skip
    own = [r for r in rows if r.kind == "own"]
    if own:
        floor = (
            "not measured"
            if args.no_floor
            else verdict(all(r.floor_mb is not None and r.floor_mb <= 64 for r in own))
        )
        lines += [
            "",
            "Targets with our kernel: image <= 8 MB "
            f"{verdict(all((r.size_bytes or 0) <= 8e6 for r in own))}, first answer <= 3 s "
            f"{verdict(all((r.answer_seconds or 99) <= 3 for r in own))}, boots in 64 MB "
            f"{floor}.",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--services", default="relay,mirror,nameserver")
    parser.add_argument("--kernels", default="own,debian")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory", type=int, default=256, help="MB for the timed boots")
    parser.add_argument("--no-floor", action="store_true", help="skip the memory bisection")
    parser.add_argument("--quiet-wait", type=float, default=30.0)
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    args.services = [s for s in args.services.split(",") if s]
    args.kernels = [k for k in args.kernels.split(",") if k]
    for service in args.services:
        specs.spec(service)
    rows = measure(args)
    text = table(rows, args)
    print(text)
    (WORK / "images.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    if args.write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
