"""Several named guests, as Albatross keeps unikernels: start, stop, restart on exit, stats.

A guest's definition (image, forwards, memory, disk, restart policy, configuration file)
lives in `<state>/vm/<name>/guest.json` beside its console log, how it last ended, its
restarts since a start was last asked for and its own admin token, so all of it outlives
the process that supervised it.

Each guest's admin endpoint takes a token of its own (`<state>/vm/<name>/admin-token`,
mode 0600), never the host's: a guest is the part of the kit that meets the internet (the
mirror parses what upstreams send), and one taken over would otherwise hold the token that
starts and stops every guest and sets every service's log level on the host.

What befalls a guest is logged on `retreatkit.vm`: a start, its admin answering and a stop
asked for at INFO; an exit nobody asked for (a kernel panic among them), a restart and
giving up at WARNING. Each record is also a line for the organiser (`serve.SAID`): stderr
and `<state>/vm/supervisor.log` show it bare, the admin endpoint's `/logs` and so the
dashboard's Logs screen show it under the `vm` service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from retreatkit import config
from retreatkit.admin.token import TokenError, load_or_create
from retreatkit.image import build, qemu, run
from retreatkit.image import spec as specs
from retreatkit.image.paths import private_dir
from retreatkit.serve import SAID

log = logging.getLogger("retreatkit.vm")
LAST_EXIT = "last-exit"  # beside guest.json: how the guest last ended
TOKEN = "admin-token"  # noqa: S105 - the file, beside guest.json, of the guest's own token
RESTARTS = "restarts"  # beside guest.json: restarts since a start was last asked for
MAX_EXIT_NOTE = 1024  # bytes read back of it (describe_exit keeps it one short line)

NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")  # whole: a name is a folder and a URL part
NAME_RULE = "a guest name is 1-32 of a-z, 0-9 and -, starting with a letter or digit"
QUICK_EXIT = 10.0  # a guest that dies sooner than this after its start waits before the next
QUICK_TRIES = 5  # quick exits in a row, then it is not started again
FIRST_WAIT = 1.0  # seconds before the start after the first quick exit; doubled each time


class GuestError(ValueError):
    """A guest name or definition the caller got wrong: the message says what to send."""


class StateError(RuntimeError):
    """The supervisor's state folder cannot keep what it was given (its disk full): the
    message says where."""


class GuestRunning(GuestError):
    """Starting or redefining a guest that runs: one answer to both."""

    def __init__(self, entry: Supervised) -> None:
        name = entry.definition.name
        super().__init__(
            f"guest {name} is {entry.state}: stop it first (retreatkit vm stop {name})"
        )


def check_name(name: object) -> str:
    """`name` if it is a guest name; else GuestError, the name shown escaped and cut."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise GuestError(f"bad guest name {name!r:.40}: {NAME_RULE}")
    return name


@dataclass
class Definition:
    name: str
    image: str  # an image folder, absolute
    forwards: list[str]  # tcp|udp:HOST:PORT:GUESTPORT, ports fixed when defined
    memory_mb: int = 128
    disk: str | None = None
    restart: bool = False  # start it again whenever it exits on its own
    config: str | None = None  # retreat.toml the guest's configuration is rendered from
    records: dict[str, str] = field(default_factory=dict)  # local names a nameserver adds

    @classmethod
    def parse(cls, doc: dict[str, Any]) -> Definition:
        """A definition from JSON a client sent (anything at all) or a saved guest.json."""
        try:
            defn = cls(**doc)
        except TypeError as exc:
            raise GuestError(f"bad guest definition: {exc}") from None
        check_name(defn.name)
        kinds = (
            ("image", defn.image, str), ("disk", defn.disk, str | None),
            ("config", defn.config, str | None), ("restart", defn.restart, bool),
            ("forwards", defn.forwards, list), ("records", defn.records, dict),
        )  # fmt: skip
        for key, value, kind in kinds:
            if not isinstance(value, kind):
                raise GuestError(f"bad guest definition: {key} cannot be {value!r:.60}")
        problem = specs.memory_problem(defn.memory_mb, "memory_mb", bounded=False)  # see define
        if problem is not None:
            raise GuestError(problem)
        if not all(isinstance(t, str) for t in defn.forwards):
            raise GuestError("bad guest definition: forwards are tcp|udp:HOST:PORT:GUESTPORT")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in defn.records.items()):
            raise GuestError("bad guest definition: records are names and addresses")
        for text in defn.forwards:
            qemu.Forward.parse(text)
        return defn


@dataclass
class Restarts:
    """When a guest that exited on its own starts again: at once after a run of
    QUICK_EXIT s or more; after 1, 2, 4 and 8 s when it dies sooner; and after QUICK_TRIES
    quick exits in a row never, so a guest that cannot start (its port taken, its image
    broken) neither spins the host nor cycles forever. Pure: the caller says how long
    each start lived."""

    first_wait: float = FIRST_WAIT
    quick: float = QUICK_EXIT
    tries: int = QUICK_TRIES
    in_a_row: int = 0  # quick exits since the last start that lived

    def after_exit(self, lived: float) -> float | None:
        """Seconds to wait before the next start, or None: give up."""
        if lived >= self.quick:
            self.in_a_row = 0
            return 0.0
        self.in_a_row += 1
        if self.in_a_row >= self.tries:
            return None
        return self.first_wait * (1 << (self.in_a_row - 1))

    def given_up(self) -> str:
        return f"{self.in_a_row} exits in a row within {self.quick:.0f} s of the start"


@dataclass
class Supervised:
    definition: Definition
    state: str = "stopped"  # running, stopped, restarting, failed
    restarts: int = 0
    guest: run.Guest | None = None
    service: str = "?"
    admin: str | None = None
    last_exit: str | None = None
    given_up: str | None = None  # why it is not restarted although it should be
    keeper: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        """Running or about to run again: what a start or a new definition must not touch."""
        return self.state in ("running", "restarting")


def proc_stats(pid: int) -> tuple[int, float]:
    """(resident bytes, CPU seconds) of a live process, from /proc."""
    rss = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    cpu = 0.0
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, cpu


class Supervisor:
    def __init__(
        self,
        root: Path,
        on_idle: Callable[[], None] | None = None,
        restarts: Callable[[], Restarts] = Restarts,
    ) -> None:
        self.root = root
        self.on_idle = on_idle  # called when the last running guest has ended
        self.restarts = restarts  # a fresh policy for each start asked for
        self.guests: dict[str, Supervised] = {}
        self.restarted = 0  # restarts this supervisor made (a counter: never goes down)
        for saved in sorted(root.glob("*/guest.json")) if root.exists() else []:
            with contextlib.suppress(OSError, ValueError, GuestError):
                entry = self._add(Definition.parse(json.loads(saved.read_text())))
                entry.last_exit = _read_exit(saved.with_name(LAST_EXIT))
                entry.restarts = _read_count(saved.with_name(RESTARTS))

    def _add(self, definition: Definition) -> Supervised:
        entry = self.guests.get(definition.name)
        if entry is None:
            entry = self.guests[definition.name] = Supervised(definition)
        else:
            entry.definition = definition
        forwards = [qemu.Forward.parse(f) for f in definition.forwards]
        entry.admin = run.admin_url(forwards)
        with contextlib.suppress(ValueError):
            entry.service = build.load_manifest(Path(definition.image))["service"]
        return entry

    def folder(self, name: str) -> Path:
        return private_dir(self.root / name)

    def token(self, name: str) -> str:
        """The guest's own admin token, made at its first start (TokenError if it cannot be
        made or read safely, as the host's own)."""
        return load_or_create(self.folder(name) / TOKEN)

    def get(self, name: str) -> Supervised:
        if name not in self.guests:
            raise KeyError(name)
        return self.guests[name]

    def define(self, definition: Definition) -> Supervised:
        """Add or replace a definition (ports 0 become fixed ones now); saved to disk."""
        entry = self.guests.get(definition.name)
        if entry is not None and entry.running:
            raise GuestRunning(entry)
        definition.image = str(Path(definition.image).resolve())
        manifest = build.load_manifest(Path(definition.image))
        # the image's own floor (the mirror's is above the least of all) and this host's
        # memory, checked here and not in parse, so a guest saved before still loads as it was
        problem = specs.memory_problem(definition.memory_mb, "memory_mb", manifest["service"])
        if problem is not None:
            raise GuestError(problem)
        given = [qemu.Forward.parse(f) for f in definition.forwards]
        # every port fixed now: a restarted guest is where its clients left it
        definition.forwards = [str(f) for f in run.complete_forwards(manifest, given)]
        self._save(definition)
        return self._add(definition)

    def _save(self, definition: Definition) -> None:
        """`guest.json` replaced whole or not at all: written in place, a full disk cut it
        to nothing, and the next supervisor knew no such guest."""
        saved = self.root / definition.name / "guest.json"
        partial = saved.with_name("guest.json.partial")
        new = not saved.parent.exists()
        try:
            self.folder(definition.name)
            partial.write_text(json.dumps(asdict(definition), indent=1, sort_keys=True) + "\n")
            partial.replace(saved)
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
                if new:
                    saved.parent.rmdir()
            why = exc.strerror or exc
            raise StateError(
                f"cannot keep guest {definition.name}'s definition in {saved}: {why}"
            ) from None

    def remove(self, name: str) -> None:
        """Forget a stopped guest: its definition and its folder (console log and all)."""
        entry = self.get(name)
        if entry.running:
            raise GuestRunning(entry)
        del self.guests[name]
        shutil.rmtree(self.root / name, ignore_errors=True)

    def change(self, name: str, changes: dict[str, Any]) -> Supervised:
        """A known guest's definition with `changes` (the options `vm start NAME` was given
        without an image), checked and saved as `define` does; the rest stays as it was."""
        merged = {**asdict(self.get(name).definition), **changes, "name": name}
        return self.define(Definition.parse(merged))

    def _launch(self, definition: Definition) -> run.Launch:
        cfg = config.load(Path(definition.config) if definition.config else None)
        service = self.guests[definition.name].service
        problems = run.config_problems(service, cfg) if service in specs.SPECS else []
        if problems:  # its image's service: what it boots with, checked as `up` checks it
            where = f"{definition.config}: " if definition.config else ""
            raise run.RunError(f"{where}{'; '.join(problems)}")
        named = cfg["nameserver"]["records"]
        named.update({k: v for k, v in definition.records.items() if k not in named})
        disk = Path(definition.disk) if definition.disk else None
        forwards = [qemu.Forward.parse(f) for f in definition.forwards]
        token = self.token(definition.name)
        return run.Launch.prepare(
            Path(definition.image), cfg, token, forwards, definition.memory_mb, disk
        )

    async def start(self, name: str) -> Supervised:
        entry = self.get(name)
        if entry.running:
            raise GuestRunning(entry)
        qemu.qemu_binary()  # errors here reach the caller
        before = entry.state, entry.given_up
        entry.state, entry.given_up = "running", None  # a second start meanwhile is refused
        try:
            # in a thread: rendering reads blocklists and looks names up (guestconfig)
            launch = await asyncio.to_thread(self._launch, entry.definition)
        except BaseException:
            entry.state, entry.given_up = before
            raise
        if entry.state != "running":  # stopped meanwhile: it stays stopped
            self.settle()
            return entry
        # a start asked for counts restarts afresh, as its restart policy starts afresh
        self._count_restarts(entry, 0)
        entry.keeper = asyncio.ensure_future(self._keep(entry, launch))
        _tell(logging.INFO, f"Guest {name} starting; admin on {entry.admin}/status")
        return entry

    async def _keep(self, entry: Supervised, launch: run.Launch) -> None:
        """Run the guest until it is done; whatever ends that, the guest is left stopped
        or failed with its reason, never "running" with no qemu (its stop would wait on
        this task's error, and a supervisor meant to end with its last guest never would)."""
        try:
            await self._run_until_done(entry, launch)
        except Exception as exc:
            if entry.guest is not None:
                entry.guest.kill()
            self._ended(entry, f"could not start: {_why(exc)}")
            if entry.state != "stopped":  # a stop asked for meanwhile says so itself
                entry.state = "failed"
                _tell(logging.WARNING, f"Guest {entry.definition.name} failed ({entry.last_exit})")
        finally:
            self.settle()

    async def _run_until_done(self, entry: Supervised, launch: run.Launch) -> None:
        name = entry.definition.name
        folder = self.folder(name)
        console = run.ConsoleLog(folder / "console.log")
        policy = self.restarts()
        while True:
            kernel = launch.image / "kernel"
            guest = entry.guest = run.Guest(launch, folder / "run", console)
            entry.state = "running"
            began = time.monotonic()
            try:
                accel = await asyncio.to_thread(qemu.accel, kernel, launch.manifest["machine"])
                await guest.start(accel)
                ready = asyncio.ensure_future(self._announce(name, guest, entry.admin))
                code = await guest.wait()
                ready.cancel()
                last = guest.last_line
                self._ended(entry, run.describe_exit(code, last.text, last.panic, last.failed))
            except Exception as exc:  # any of them: the guest must not be left "running"
                guest.kill()
                self._ended(entry, f"could not start: {_why(exc)}")
            if guest.stopping:
                entry.state = "stopped"
                return
            if not entry.definition.restart:
                entry.state = "failed"
                _tell(logging.WARNING, f"Guest {name} stopped by itself ({entry.last_exit})")
                return
            wait = policy.after_exit(time.monotonic() - began)
            if wait is None:
                entry.state, entry.given_up = "failed", policy.given_up()
                _tell(logging.WARNING, f"Guest {name} exited ({entry.last_exit});"
                      f" {entry.given_up}: not restarted")  # fmt: skip
                return
            self._count_restarts(entry, entry.restarts + 1)
            self.restarted += 1
            entry.state = "restarting"
            _tell(
                logging.WARNING,
                f"Guest {name} exited ({entry.last_exit}); restart {entry.restarts}",
            )
            if wait:
                await asyncio.sleep(wait)  # a guest dying at boot must not spin the host
            try:
                # retreat.toml may have changed
                launch = await asyncio.to_thread(self._launch, entry.definition)
            except Exception as exc:  # a TokenError among them: left "restarting" for good
                entry.state = "failed"
                self._ended(entry, f"could not start: {_why(exc)}")
                _tell(logging.WARNING, f"Guest {name} not restarted ({entry.last_exit})")
                return

    def _ended(self, entry: Supervised, how: str) -> None:
        """How the guest ended, kept beside its definition: `vm list` says it after the
        supervisor that saw it is gone."""
        entry.last_exit = how
        with contextlib.suppress(OSError):
            (self.folder(entry.definition.name) / LAST_EXIT).write_text(how + "\n")

    def _count_restarts(self, entry: Supervised, count: int) -> None:
        """The guest's restarts, kept beside its definition as how it ended is."""
        entry.restarts = count
        with contextlib.suppress(OSError):
            (self.folder(entry.definition.name) / RESTARTS).write_text(f"{count}\n")

    async def _announce(self, name: str, guest: run.Guest, admin: str | None) -> None:
        await guest.ready.wait()
        _tell(logging.INFO, f"Guest {name} up; admin on {admin}/status")

    async def reload_lists(self, name: str) -> list[dict[str, Any]]:
        """A nameserver guest's blocklists read again from this host's files and handed
        to it (guestlists.py): its state of each list, named as retreat.toml names it.
        GuestError if it is no nameserver that is up; GuestListsError if it does not
        answer; ConfigError or TokenError as a start would meet them."""
        from retreatkit.image import guestlists  # its HTTP client: only when asked

        entry = self.get(name)
        if entry.service != "nameserver":
            raise GuestError(f"guest {name} runs the {entry.service}: it has no blocklists")
        guest = entry.guest
        up = entry.state == "running" and guest is not None and guest.ready.is_set()
        if not up or entry.admin is None:
            raise GuestError(f"guest {name} is not up ({entry.state}): it reads the list"
                             " files when it starts")  # fmt: skip
        path = Path(entry.definition.config) if entry.definition.config else None
        cfg = await asyncio.to_thread(config.load, path)
        token = self.token(name)
        return await guestlists.reload(entry.admin, token, cfg["nameserver"]["blocklists"])

    async def stop(self, name: str) -> Supervised:
        entry = self.get(name)
        keeper, guest = entry.keeper, entry.guest
        asked = entry.running
        if guest is not None:
            guest.stopping = True
            await guest.stop()
        entry.state = "stopped"
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        if asked:
            _tell(logging.INFO, f"Guest {name} stopped")
        return entry

    async def close(self) -> None:
        await asyncio.gather(
            *(self.stop(n) for n, e in self.guests.items() if e.state != "stopped"),
            return_exceptions=True,
        )

    def settle(self) -> None:
        """Tell `on_idle` if nothing runs (after a guest that could not start)."""
        if self.on_idle is not None and not self.active:
            self.on_idle()

    def warnings(self) -> list[str]:
        """A line for each guest that should run and does not (for /status)."""
        out = []
        for name, entry in sorted(self.guests.items()):
            if entry.state == "failed":
                why = f" ({entry.given_up}: not restarted)" if entry.given_up else ""
                out.append(f"guest {name} failed: {entry.last_exit}{why}")
        return out

    @property
    def active(self) -> int:
        return sum(1 for e in self.guests.values() if e.running)

    def item(self, name: str) -> dict[str, Any]:
        """One guest as docs/admin-api.md lists it."""
        entry = self.get(name)
        guest = entry.guest
        live = guest is not None and guest.running and entry.state == "running"
        pid = guest.pid if live and guest is not None else None
        memory, cpu = proc_stats(pid) if pid is not None else (0, 0.0)
        uptime = time.monotonic() - guest.started if live and guest is not None else 0.0
        return {
            "name": name,
            "service": entry.service,
            "image": entry.definition.image,
            "state": entry.state,
            "up": live and guest is not None and guest.ready.is_set(),  # its admin answered
            "pid": pid,
            "uptime_seconds": round(uptime, 1),
            "restarts": entry.restarts,
            "memory_bytes": memory,
            "cpu_seconds": round(cpu, 2),
            "forwards": entry.definition.forwards,
            "address": served_at(entry.service, entry.definition.forwards),
            "admin": entry.admin,
            "memory_mb": entry.definition.memory_mb,
            "restart": entry.definition.restart,
            "last_exit": entry.last_exit,
            "console": str(self.root / name / "console.log"),
        }

    def items(self) -> list[dict[str, Any]]:
        return [self.item(n) for n in sorted(self.guests)]


def served_at(service: str, forwards: list[str]) -> str | None:
    """`HOST:PORT` of the forward to the guest's service port: where the dashboard says
    the guest's service is (it said the address of `up`'s guest of that service for every
    guest of the image)."""
    image = specs.SPECS.get(service)
    for text in forwards if image is not None else []:
        with contextlib.suppress(ValueError):
            f = qemu.Forward.parse(text)
            if image is not None and (f.proto, f.guest_port) == image.ports[0]:
                return f"{f.host}:{f.port}"
    return None


def _read_exit(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            return f.read(MAX_EXIT_NOTE).decode("utf-8", "replace").strip() or None
    except OSError:
        return None


def _read_count(path: Path) -> int:
    try:
        with path.open("rb") as f:
            text = f.read(32).decode("ascii").strip()
    except (OSError, UnicodeError):
        return 0
    return int(text) if text.isdigit() else 0


def _why(exc: Exception) -> str:
    """Why a start failed, in one line: the message of an error meant for the user (each
    says what to do), else the error's kind with it."""
    if isinstance(exc, (OSError, ValueError, RuntimeError, TokenError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _tell(level: int, line: str) -> None:
    log.log(level, line, extra=SAID)
