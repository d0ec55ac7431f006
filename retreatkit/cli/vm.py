"""`retreatkit vm`: named guests under a supervisor, as `albatross-client` drives albatrossd.

The supervisor is `retreatkit up` (with `[images] run`) or `retreatkit vm serve`; when
none runs, `vm start` starts one in the background, which ends with its last guest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from typing import Any

import aiohttp

from retreatkit import config, loop, serve, units, version
from retreatkit.cli.image import UsageError, guest_memory, one_line
from retreatkit.image import qemu, vmservice
from retreatkit.image.paths import private_dir
from retreatkit.image.supervisor import GuestError, Supervisor, check_name

READY_SECONDS = 30.0  # for a supervisor started in the background to open its socket
FOLLOW_SECONDS = 0.5


class VmError(RuntimeError):
    """What the supervisor refused or could not do, in one line."""


def main(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    command = args.vm_command
    try:
        # what can be checked here is, before a supervisor is started or asked
        if getattr(args, "name", None) is not None:
            _check_name(args.name)
        if command == "start" and (args.image is not None or args.memory is not None):
            args.memory = guest_memory(args, cfg)  # without IMAGE, only what was given
        for forward in getattr(args, "forward", []):
            qemu.Forward.parse(forward)  # a ValueError: one line, exit code 1 (as image run)
        if command == "serve":
            return _serve(args)
        if command == "console":
            if args.lines < 0:  # [-(-3):] showed all but the first 3 lines
                raise UsageError(f"-n {args.lines}: a number of lines, 0 or more")
            return _console(args)
        return asyncio.run(_client(args, cfg))
    except VmError as exc:
        print(f"retreatkit: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # `console -f` ends so, as `tail -f` does: nothing to say. A start goes on in the
        # supervisor, which the Ctrl-C did not reach: said, or it reads as undone
        if command == "start":
            print(
                f"retreatkit: interrupted; guest {args.name} may go on starting under the"
                f" supervisor (retreatkit vm list shows it; retreatkit vm stop {args.name}"
                " stops it)",
                file=sys.stderr,
            )
        elif command != "console":
            print("retreatkit: interrupted", file=sys.stderr)
        return 130


def _check_name(name: str) -> None:
    try:
        check_name(name)
    except GuestError as exc:
        raise UsageError(str(exc)) from None


SUPERVISOR_LOG_MAX = 10_000_000  # bytes, past which a supervisor starts a new log
FAILED = "failed: "  # a background supervisor's word to `vm start` when it cannot start
WORD_MAX = 4096


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _serve(args: argparse.Namespace) -> int:
    admin_at = config.host_port(args.admin or "127.0.0.1:0")
    service = vmservice.VmService(until_idle=args.until_idle)
    serve.setup_logging()

    def say(line: str) -> None:
        # a background one's stderr is supervisor.log: its disk full, it supervises all the
        # same, and the client says why what it asks cannot be kept
        with contextlib.suppress(OSError):
            _say(line)
        if args.ready_fd is not None and line.startswith("Admin on "):
            tell(b"ready\n")

    def tell(word: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(args.ready_fd, word)
            os.close(args.ready_fd)
        args.ready_fd = None  # its number may be another file's from now on

    try:
        return loop.run(lambda: serve.serve([service], admin_at, say))
    except Exception as exc:
        # before it was ready: the `vm start` waiting says why, where this one's log may
        # have no room for it (the state disk full: "see supervisor.log", found empty)
        if args.ready_fd is not None:
            tell(f"{FAILED}{one_line(exc)}\n".encode(errors="replace"))
        raise


def _spawn_supervisor() -> None:
    """A supervisor in the background, detached from this terminal; we wait for its word."""
    log = private_dir(vmservice.vm_dir()) / "supervisor.log"
    with contextlib.suppress(OSError):  # bounded on disk: the last one's log moves aside
        if log.stat().st_size > SUPERVISOR_LOG_MAX:
            log.replace(log.with_name(log.name + ".1"))
    read, write = os.pipe()
    argv = version.command("vm", "serve", "--until-idle", "--ready-fd", str(write))
    with log.open("ab") as out:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                         pass_fds=(write,), start_new_session=True)  # fmt: skip
    os.close(write)
    with os.fdopen(read, "rb") as ready:
        word = ready.readline(WORD_MAX)
    if word.startswith(FAILED.encode()):
        why = word[len(FAILED) :].decode(errors="replace").strip()
        raise VmError(f"the supervisor did not start: {why}")
    if word != b"ready\n":
        raise VmError(f"the supervisor did not start; see {log}")


async def _request(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    connector = aiohttp.UnixConnector(path=str(vmservice.control_path()))
    timeout = aiohttp.ClientTimeout(total=300)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        session.request(method, f"http://supervisor{path}", json=body) as response,
    ):
        if response.status != 200:
            raise VmError((await response.text()).strip())
        return await response.json()


def _saved() -> list[dict[str, Any]]:
    """Guests as their definitions on disk say, when no supervisor runs."""
    folder = vmservice.vm_dir()
    return Supervisor(folder).items() if folder.exists() else []


async def _client(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    running = vmservice.socket_in_use(vmservice.control_path())
    command = args.vm_command
    if command == "list":
        guests = (await _request("GET", "/vm/guests"))["guests"] if running else _saved()
        print(table(guests))
        return 0
    if command == "stats":
        if running:
            item = await _request("GET", f"/vm/guests/{args.name}")
        else:
            item = next((g for g in _saved() if g["name"] == args.name), None)
            if item is None:
                raise VmError(f"no guest named {args.name!r}; `retreatkit vm list` names them")
        print(stats(item))
        return 0
    if command == "remove":
        if running:
            await _request("DELETE", f"/vm/guests/{args.name}")
        else:
            folder = vmservice.vm_dir()
            supervisor = Supervisor(folder) if folder.exists() else None
            if supervisor is None or args.name not in supervisor.guests:
                raise VmError(f"no guest named {args.name!r}; `retreatkit vm list` names them")
            supervisor.remove(args.name)
        _say(f"Guest {args.name} removed")
        return 0
    if command == "stop":
        if not running:
            if args.name in {g["name"] for g in _saved()}:  # stopped: as asked, exit 0
                _say(f"Guest {args.name} is not running (no supervisor is)")
                return 0
            raise VmError(f"no guest named {args.name!r}; `retreatkit vm list` names them")
        before = (await _request("GET", f"/vm/guests/{args.name}"))["state"]
        await _request("POST", f"/vm/guests/{args.name}/stop")  # a failed one is stopped too
        if before in ("running", "restarting"):
            _say(f"Guest {args.name} stopped")
        else:  # stopped, as asked (exit 0), but not by this command
            _say(f"Guest {args.name} is not running")
        return 0
    if not running:
        await asyncio.to_thread(_spawn_supervisor)
    if args.image is not None:
        definition = {"image": str(args.image.resolve()), **_options(args)}
        await _request("PUT", f"/vm/guests/{args.name}", definition)
    else:  # a known guest: the options given change its definition, the others keep theirs
        changes = {k: v for k, v in _options(args).items() if v not in (None, False, [])}
        if changes:
            await _request("PATCH", f"/vm/guests/{args.name}", changes)
    item = await _request("POST", f"/vm/guests/{args.name}/start")
    _say(f"Guest {item['name']} ({item['service']}) starting; admin on {item['admin']}/status")
    return await _until_up(args.name)


START_WAIT = 180.0  # seconds: a guest boots in a few under emulation, slower on a busy host


async def _until_up(name: str) -> int:
    """Wait for the guest to be up (its admin endpoint answers) or to fail: a start that
    failed (a port taken, a guest out of memory) must not read as a success."""
    deadline = time.monotonic() + START_WAIT
    while True:
        item = await _request("GET", f"/vm/guests/{name}")
        if item.get("up"):
            _say_forwards(item)
            _say(f"Guest {name} up; admin on {item['admin']}/status")
            return 0
        if item["state"] in ("failed", "stopped"):
            raise VmError(f"guest {name} did not start: {item['last_exit'] or item['state']}")
        if time.monotonic() > deadline:
            if item.get("pid"):
                _say_forwards(item)
            _say(f"Guest {name} is still starting: `retreatkit vm list` shows how it goes")
            return 0
        await asyncio.sleep(0.25)


def _say_forwards(item: dict[str, Any]) -> None:
    """Where each forwarded port is, said once its qemu runs (and so holds them): said
    before, a port another program held read as forwarded, then as why the start failed."""
    for forward in item["forwards"]:
        _say(f"Forward {_forward(forward)}")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """`vm start`'s options as definition keys (None, False or [] where not given)."""
    return {
        "forwards": args.forward,
        "memory_mb": args.memory,
        "disk": str(args.disk.resolve()) if args.disk else None,
        "restart": args.restart,
        "config": str(args.sub_config.resolve()) if args.sub_config else None,
    }


def _forward(text: str) -> str:
    proto, host, port, guest = text.split(":")
    return f"{proto} {host}:{port} -> guest port {guest}"


def _running(g: dict[str, Any]) -> bool:
    """A qemu process is there: uptime and memory mean something (a stopped guest's would
    read 0 s and 0.0 MB, as if it ran with nothing)."""
    return bool(g.get("pid"))


def table(guests: list[dict[str, Any]]) -> str:
    rows = [("NAME", "SERVICE", "STATE", "UPTIME", "RESTARTS", "MEMORY", "CPU", "ADMIN",
             "LAST EXIT")]  # fmt: skip
    for g in guests:
        up = _running(g)
        rows.append((g["name"], g["service"], g["state"],
                     f"{g['uptime_seconds']:.0f} s" if up else "-", str(g["restarts"]),
                     units.size(g["memory_bytes"]) if up else "-", f"{g['cpu_seconds']:.1f} s",
                     g["admin"] or "-", g["last_exit"] or "-"))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)  # fmt: skip


def stats(g: dict[str, Any]) -> str:
    up = _running(g)
    lines = [
        ("name", g["name"]),
        ("service", g["service"]),
        ("state", g["state"]),
        ("pid", str(g["pid"] or "-")),
        ("uptime", f"{g['uptime_seconds']:.1f} s" if up else "- (not running)"),
        ("restarts", str(g["restarts"])),
        (
            "memory",
            f"{units.size(g['memory_bytes'])} (qemu resident; the guest has {g['memory_mb']} MB)"
            if up
            else f"- (not running; the guest is given {g['memory_mb']} MB)",
        ),
        ("cpu", f"{g['cpu_seconds']:.2f} s"),
        ("forwards", ", ".join(_forward(f) for f in g["forwards"])),
        ("admin", f"{g['admin']}/status" if g["admin"] else "-"),
        ("last exit", g["last_exit"] or "-"),
        ("console", g["console"]),
    ]
    return "\n".join(f"{k}: {v}" for k, v in lines)


def _console(args: argparse.Namespace) -> int:
    log = vmservice.vm_dir() / args.name / "console.log"
    if not log.exists():
        raise VmError(f"no console log for {args.name!r} (has it ever started?)")
    lines = log.read_bytes().splitlines(keepends=True)[-args.lines :] if args.lines else []
    sys.stdout.buffer.write(b"".join(lines))
    sys.stdout.flush()
    if not args.follow:
        return 0
    stream = log.open("rb")
    stream.seek(0, os.SEEK_END)
    try:
        while True:  # like tail -F: read what arrived, follow the log when it moves aside
            chunk = stream.read()
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                continue
            with contextlib.suppress(OSError):
                if log.stat().st_ino != os.fstat(stream.fileno()).st_ino:
                    stream.close()
                    stream = log.open("rb")
                    continue
            time.sleep(FOLLOW_SECONDS)
    finally:
        stream.close()
