"""`retreatkit image kernel|build|run`: argument parsing and printing only.

The builder's modules are imported when a command runs: `retreatkit.cli.main` is imported
by every process, guests included, and they need none of them.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retreatkit.admin.token import TokenError, load_or_create
from retreatkit.image import spec

if TYPE_CHECKING:
    from retreatkit.image import run


COMMANDS = ("image", "vm")
FORWARD_HELP = (
    "repeatable; HOST is an IPv4 address (127.0.0.1, 0.0.0.0: all), not a name; ports not"
    " named go to 127.0.0.1, any free port"
)
MEMORY_HELP = "guest memory, from 56 MB to this host's (default: [images] memory)"
TOKEN = "admin-token"  # noqa: S105 - the file, in the run's folder, of the guest's own token
# Ctrl-C: 128 + SIGINT, as a shell counts a command the signal stopped (and as bob does);
# a SIGTERM is a stop asked for (a service manager's), which ends as the guest ends
INTERRUPTED = 128 + signal.SIGINT


class UsageError(Exception):
    """An argument or setting that cannot work, refused before anything starts (exit 2)."""


def guest_memory(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    """`--memory`, else `[images] memory`: MB of guest memory, refused when no image boots."""
    given, memory = ("--memory", args.memory)
    if memory is None:
        given, memory = ("[images] memory =", cfg["images"]["memory"])
    problem = spec.memory_problem(memory, given, _service_of(getattr(args, "image", None)))
    if problem is not None:
        raise UsageError(problem)
    return int(memory)


def _service_of(image: str | Path | None) -> str | None:
    """The service an image folder holds, when it can be read (else later steps say why)."""
    from retreatkit.image import build

    if image is None:
        return None
    try:
        service = build.load_manifest(Path(image)).get("service")
    except ValueError:
        return None
    return service if isinstance(service, str) else None


def add_parsers(sub: Any) -> None:
    image = sub.add_parser("image", help="build and boot single-service VM images")
    isub = image.add_subparsers(dest="image_command", required=True, metavar="{kernel,build,run}")
    k = isub.add_parser(
        "kernel", help="build the small guest kernel and SQLite library once (cached)"
    )
    k.add_argument("--jobs", type=int, metavar="N", help="parallel compile jobs (default: CPUs)")
    k.add_argument("--force", action="store_true", help="build again even if one is cached")
    b = isub.add_parser("build", help="build SERVICE's image into DIR/SERVICE/")
    b.add_argument("service", choices=sorted(spec.SPECS))
    b.add_argument(
        "-o", "--output", metavar="DIR", type=Path, default=Path("images"), help="default ./images"
    )
    b.add_argument(
        "--kernel",
        choices=spec.KERNELS,
        help="own (`image kernel`), debian (cloud) or auto (default: [images] kernel)",
    )
    b.add_argument("--config", metavar="FILE", type=Path, dest="sub_config", help="retreat.toml")
    r = isub.add_parser("run", help="boot an image under qemu; Ctrl-C stops it cleanly")
    r.add_argument("image", metavar="IMAGE", type=Path, help="a folder `image build` wrote")
    r.add_argument(
        "--forward",
        metavar="tcp|udp:HOST:PORT:GUESTPORT",
        action="append",
        default=[],
        help=FORWARD_HELP,
    )
    r.add_argument(
        "--disk",
        metavar="FILE",
        type=Path,
        help="the mirror's store, which it needs (ext4; made if missing)",
    )
    r.add_argument("--memory", metavar="MB", type=int, help=MEMORY_HELP)
    r.add_argument(
        "--console", metavar="FILE", type=Path, help="console log (default: state folder)"
    )
    r.add_argument("--config", metavar="FILE", type=Path, dest="sub_config", help="retreat.toml")
    add_vm_parser(sub)


def add_vm_parser(sub: Any) -> None:
    vm = sub.add_parser("vm", help="run named guests under a supervisor (start, stop, stats)")
    vsub = vm.add_subparsers(
        dest="vm_command", required=True, metavar="{list,start,stop,remove,console,stats,serve}"
    )
    vsub.add_parser("list", help="every guest: state, uptime, restarts, memory, CPU")
    start = vsub.add_parser("start", help="define (with IMAGE) and start a guest")
    start.add_argument("name", metavar="NAME")
    start.add_argument("image", metavar="IMAGE", type=Path, nargs="?", help="an image folder")
    start.add_argument(
        "--forward",
        metavar="tcp|udp:HOST:PORT:GUESTPORT",
        action="append",
        default=[],
        help=FORWARD_HELP,
    )
    start.add_argument("--disk", metavar="FILE", type=Path, help="a data disk (made if missing)")
    start.add_argument("--memory", metavar="MB", type=int, help=MEMORY_HELP)
    start.add_argument("--restart", action="store_true", help="start it again when it exits")
    start.add_argument("--config", metavar="FILE", type=Path, dest="sub_config")
    stop = vsub.add_parser("stop", help="stop a guest cleanly")
    stop.add_argument("name", metavar="NAME")
    remove = vsub.add_parser("remove", help="forget a stopped guest (its console log too)")
    remove.add_argument("name", metavar="NAME")
    console = vsub.add_parser("console", help="a guest's console log")
    console.add_argument("name", metavar="NAME")
    console.add_argument("-n", "--lines", type=int, default=50, metavar="N")
    console.add_argument("-f", "--follow", action="store_true")
    stats = vsub.add_parser("stats", help="one guest's state, memory, CPU time and uptime")
    stats.add_argument("name", metavar="NAME")
    run = vsub.add_parser("serve", help="run the supervisor in the foreground")
    run.add_argument("--admin", metavar="HOST:PORT", help="admin endpoint (default 127.0.0.1:0)")
    run.add_argument("--until-idle", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)


def main(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    from retreatkit.image import debs, guestconfig, kernel, kmod, network, qemu, run, sqlitelib

    errors = (
        network.NetworkError,
        debs.PackageError,
        kernel.KernelError,
        sqlitelib.SqliteError,
        kmod.ModuleError,
        qemu.QemuError,
        run.RunError,
        guestconfig.GuestConfigError,
        TokenError,
        ValueError,
        OSError,
    )
    try:
        if args.command == "vm":
            from retreatkit.cli import vm

            code: int = vm.main(args, cfg)
            return code
        if args.image_command == "kernel":
            kernel.build(_say, args.jobs, args.force)
            sqlitelib.build(_say, args.force)
            return 0
        if args.image_command == "build":
            return _build(args, cfg)
        return _run(args, cfg)
    except UsageError as exc:
        print(f"retreatkit: {exc}", file=sys.stderr)
        return 2
    except errors as exc:
        print(f"retreatkit: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("retreatkit: interrupted", file=sys.stderr)
        return 130


def one_line(exc: BaseException) -> str:
    """An error these commands expect, as the one line they say."""
    if isinstance(exc, OSError) and exc.strerror:  # which file, when the system says
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _build(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    from retreatkit.image import build, inputs

    out = args.output / args.service
    out.mkdir(parents=True, exist_ok=True)  # a folder that cannot be is said before the build
    inputs.forget(out)  # a build cut short leaves no record of the image it replaced
    started = time.monotonic()
    shared = inputs.common()  # as the build starts: what it reads from here on
    manifest = build.build(args.service, out, args.kernel or cfg["images"]["kernel"], _say)
    # what it was built from, beside it: `up` uses the image again while none changes
    inputs.record(out, inputs.of_build(args.service, shared, manifest), time.monotonic() - started)
    k, i = manifest["kernel"], manifest["initramfs"]
    _say(
        f"Built {out}: kernel {_mb(k['size_bytes'])} + initramfs {_mb(i['size_bytes'])}"
        f" = {_mb(manifest['size_bytes'])}"
    )
    return 0


def _run(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    from retreatkit.image import paths, qemu, run

    memory = guest_memory(args, cfg)
    service = _service_of(args.image)  # else the image is said not to be one, below
    problems = run.config_problems(service, cfg) if service in spec.SPECS else []
    if problems:
        raise UsageError("; ".join(problems))
    forwards = [qemu.Forward.parse(f) for f in args.forward]
    disk = args.disk.resolve() if args.disk else None
    # the run's own folder (mode 0700), gone with it: the guest's configuration disk and
    # its admin token, made for this run alone. Never the host's token: a guest taken over
    # would hold what acts on every service of this host
    with tempfile.TemporaryDirectory(prefix="retreatkit-guest-") as run_dir:
        token = Path(run_dir) / TOKEN
        launch = run.Launch.prepare(args.image, cfg, load_or_create(token), forwards, memory, disk)
        console = run.own_console(args.console, paths.state_dir() / "console", launch.service)
        try:
            return asyncio.run(_boot(launch, console, Path(run_dir)))
        finally:
            console.release()


def _echo(line: bytes) -> None:
    sys.stderr.buffer.write(line)
    sys.stderr.flush()


def _interrupted(code: int) -> int:
    """The last line of a run stopped by Ctrl-C, and its exit code; else `code`."""
    if code == INTERRUPTED:
        print("retreatkit: interrupted", file=sys.stderr, flush=True)
    return code


async def _boot(launch: run.Launch, log: run.ConsoleLog, run_dir: Path) -> int:
    from retreatkit.image import network, qemu, run

    loop = asyncio.get_running_loop()
    asked = asyncio.Event()
    guest: run.Guest | None = None
    powered_off = False
    stopped = 0  # the exit code of a run stopped by a signal

    def interrupt(sig: signal.Signals) -> None:
        nonlocal powered_off, stopped
        if asked.is_set() and guest is not None and guest.running:
            guest.kill()  # a second Ctrl-C: power off now
            powered_off = True
        if sig == signal.SIGINT:
            stopped = INTERRUPTED
        asked.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt, sig)
    probe = asyncio.ensure_future(
        asyncio.to_thread(qemu.accel, launch.image / "kernel", launch.manifest["machine"])
    )
    await asyncio.wait(
        {probe, asyncio.ensure_future(asked.wait())}, return_when=asyncio.FIRST_COMPLETED
    )
    if asked.is_set():
        return _interrupted(stopped)  # before anything booted
    accel = probe.result()
    console = log.path
    guest = run.Guest(launch, run_dir, log, echo=_echo)
    try:
        await guest.start(accel)
        m = launch.manifest
        _say(
            f"Booting {launch.service} ({m['kernel']['label']}, {_mb(m['size_bytes'])}) "
            f"in {launch.memory_mb} MB under {accel}; console log {console}"
        )
        for f in launch.forwards:
            _say(f"Forward {f.proto} {f.host}:{f.port} -> guest port {f.guest_port}")
        _say(network.describe(launch.network))
        _say(f"The guest's own admin token is in {run_dir / TOKEN}")
        ended = asyncio.ensure_future(guest.wait())
        ready = asyncio.ensure_future(guest.ready.wait())
        stop = asyncio.ensure_future(asked.wait())
        await asyncio.wait({ended, ready, stop}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            _say(f"Guest {launch.service} up; admin on {launch.admin_url}/status")
            await asyncio.wait({ended, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not ended.done():
            _say("Stopping the guest cleanly (Ctrl-C again powers it off)")
            await guest.stop()
        for task in (ready, stop):
            task.cancel()
        await ended
    finally:
        guest.kill()
        if guest.process is not None:
            await guest.wait()
    if log.lost:  # the guest ran on, its lines shown here and not kept
        _say(f"Its console log {console} lost {log.lost} bytes of its lines ({log.why})")
    if guest.stopping and powered_off:  # not "stopped": its service was cut off mid-stop
        disk = "; its data disk's journal puts it right at the next boot" if launch.disk else ""
        _say(f"Guest powered off (Ctrl-C twice){disk}")
        return _interrupted(stopped)
    if guest.stopping:
        _say("Guest stopped")
        return _interrupted(stopped)
    code = guest.process.returncode if guest.process is not None else None
    last = guest.last_line
    if last.panic or last.failed or code:  # or qemu's own error (memory it cannot get)
        why = run.describe_exit(code or 0, last.text, last.panic, last.failed)
        _say(f"The guest stopped by itself: {why}; its console log is {console}")
    else:
        _say(f"The guest stopped by itself; its console log is {console}")
    return 1
