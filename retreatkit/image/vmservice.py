"""The guest supervisor as a service: its admin routes, and a control socket for `retreatkit vm`.

On the process's admin endpoint (docs/admin-api.md): `GET /vm/guests`,
`POST /vm/guests/NAME/start|stop`, `POST /vm/guests/NAME/blocklists/reload` (a nameserver
guest's lists read again from this host's files and handed to it: guestlists.py), and
`GET /vm/guests/NAME/token` (the guest's own admin token, for the dashboard that watches
it: a read that needs the host's token, see admin/access.py). On the control socket, a
UNIX socket only this user can open (`<state>/vm/control.sock`), the same routes plus
`PUT /vm/guests/NAME` (define a guest), `PATCH /vm/guests/NAME` (change some keys of a
known guest's definition) and `GET /vm/guests/NAME`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from retreatkit import config, startup
from retreatkit.admin.token import TokenError
from retreatkit.image import inputs, locks, network, qemu, run
from retreatkit.image import spec as specs
from retreatkit.image.paths import cache_dir, private_dir, state_dir
from retreatkit.image.supervisor import (
    Definition,
    GuestError,
    GuestRunning,
    StateError,
    Supervisor,
    check_name,
)
from retreatkit.lanaddress import LanAddress

if TYPE_CHECKING:
    from retreatkit.mdns import LanAdvert
    from retreatkit.room import Folder

log = logging.getLogger("retreatkit.vm")
MAX_DEFINITION = 16 * 1024
FOLLOW_EVERY = 2.0  # seconds: how soon a guest stopped or started is (un)announced
IDLE_LINGER = 3.0  # seconds a background supervisor outlives its last guest (dashboards: 1 s)


def vm_dir() -> Path:
    return state_dir() / "vm"


def control_path() -> Path:
    return vm_dir() / "control.sock"


def _error(status: type[web.HTTPException], text: str) -> web.HTTPException:
    return status(text=text + "\n")


class Handlers:
    """The HTTP face of one Supervisor, for the admin endpoint and the control socket."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def _name(self, request: web.Request) -> str:
        name = request.match_info["name"]  # decoded: "..%2F" arrives as "../"
        try:
            check_name(name)
        except GuestError as exc:
            self.supervisor.settle()  # a supervisor started for this request ends
            raise _error(web.HTTPBadRequest, str(exc)) from None
        if name not in self.supervisor.guests:
            self.supervisor.settle()
            raise _error(
                web.HTTPNotFound, f"no guest named {name!r}; `retreatkit vm list` names them"
            )
        return name

    async def list_guests(self, request: web.Request) -> web.Response:
        return web.json_response({"guests": self.supervisor.items()})

    async def get_guest(self, request: web.Request) -> web.Response:
        return web.json_response(self.supervisor.item(self._name(request)))

    async def start_guest(self, request: web.Request) -> web.Response:
        name = self._name(request)
        try:
            await self.supervisor.start(name)
        except GuestRunning as exc:
            raise _error(web.HTTPConflict, str(exc)) from None
        except (ValueError, OSError, RuntimeError, TokenError) as exc:
            self.supervisor.settle()
            raise _error(web.HTTPBadRequest, f"cannot start {name}: {exc}") from None
        return web.json_response(self.supervisor.item(name))

    async def guest_token(self, request: web.Request) -> web.Response:
        name = self._name(request)
        try:
            token = self.supervisor.token(name)
        except TokenError as exc:
            raise _error(web.HTTPInternalServerError, str(exc)) from None
        return web.json_response({"token": token})

    async def reload_lists(self, request: web.Request) -> web.Response:
        from retreatkit.image.guestlists import GuestListsError
        from retreatkit.nameserver import reloaded

        name = self._name(request)
        try:
            states = await self.supervisor.reload_lists(name)
        except GuestError as exc:
            raise _error(web.HTTPConflict, str(exc)) from None
        except GuestListsError as exc:
            raise _error(web.HTTPBadGateway, f"guest {name}: {exc}") from None
        except (ValueError, TokenError) as exc:  # retreat.toml, the guest's token
            raise _error(web.HTTPInternalServerError, f"guest {name}: {exc}") from None
        log.info("admin (%s): guest %s: %s", request.remote, name, reloaded.line(states))
        return web.json_response({"blocklists": states})

    async def stop_guest(self, request: web.Request) -> web.Response:
        name = self._name(request)
        await self.supervisor.stop(name)
        return web.json_response(self.supervisor.item(name))

    async def remove_guest(self, request: web.Request) -> web.Response:
        name = self._name(request)
        try:
            self.supervisor.remove(name)
        except GuestRunning as exc:
            raise _error(web.HTTPConflict, str(exc)) from None
        self.supervisor.settle()
        return web.json_response({"removed": name})

    async def define_guest(self, request: web.Request) -> web.Response:
        """PUT defines a guest, new or stopped; PATCH changes some keys of a known one's."""
        patch = request.method == "PATCH"
        name = self._name(request) if patch else request.match_info["name"]
        raw = await request.content.read(MAX_DEFINITION + 1)
        try:
            check_name(name)
            if len(raw) > MAX_DEFINITION:
                raise GuestError("a guest definition is at most 16 KiB")
            try:
                doc = json.loads(raw)
            except RecursionError:  # arrays nested deeper than Python's recursion limit
                raise GuestError("a guest definition is a JSON object") from None
            if not isinstance(doc, dict):
                raise GuestError("a guest definition is a JSON object")
            if patch:
                self.supervisor.change(name, doc)
            else:
                self.supervisor.define(Definition.parse({**doc, "name": name}))
        except GuestRunning as exc:
            raise _error(web.HTTPConflict, str(exc)) from None
        except ValueError as exc:
            self.supervisor.settle()
            raise _error(web.HTTPBadRequest, str(exc)) from None
        except StateError as exc:  # the supervisor's disk, not the request: still a 500
            self.supervisor.settle()
            raise _error(web.HTTPInternalServerError, str(exc)) from None
        return web.json_response(self.supervisor.item(name))

    def admin_routes(self) -> list[web.RouteDef]:
        return [
            web.get("/vm/guests", self.list_guests),
            web.post("/vm/guests/{name}/start", self.start_guest),
            web.post("/vm/guests/{name}/stop", self.stop_guest),
            web.get("/vm/guests/{name}/token", self.guest_token),
            web.post("/vm/guests/{name}/blocklists/reload", self.reload_lists),
        ]

    def control_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_DEFINITION)
        app.router.add_routes(self.admin_routes())
        app.router.add_get("/vm/guests/{name}", self.get_guest)
        app.router.add_put("/vm/guests/{name}", self.define_guest)
        app.router.add_patch("/vm/guests/{name}", self.define_guest)
        app.router.add_delete("/vm/guests/{name}", self.remove_guest)
        return app


def socket_in_use(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


class _Collector(Collector):
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Any:
        yield GaugeMetricFamily("vm_guests_running", "guests running", value=self.supervisor.active)
        yield CounterMetricFamily(
            "vm_guest_restarts", "guest restarts", value=self.supervisor.restarted
        )


def guests_for_up(
    cfg: dict[str, Any],
    config_path: Path | None,
    address: str | LanAddress,
    announce: bool = True,
) -> VmService:
    """The guests `retreatkit up` runs for `[images] run`: each on its service's configured
    address (forwarded to the guest), restarted when it exits, its image built at each
    start unless one built from the same inputs is there (image/inputs.py); `address` is
    what the LAN names relay.retreat.lan and mirror.retreat.lan after; `announce`: the
    relay's and the mirror's forwards are announced on the LAN."""
    from retreatkit.image import upconfig

    images = cfg["images"]
    problems = upconfig.problems(cfg)  # `up` said them all already, before it got here
    if problems:
        raise config.ConfigError(problems[0])
    chosen = network.choose(str(images["network"]))
    folder = Path(images["dir"]) if images["dir"] else cache_dir() / "images"
    lan = address if isinstance(address, LanAddress) else LanAddress(address, "chosen")
    own = startup.own_names(cfg, lan)
    definitions = []
    for service in images["run"]:
        image = specs.spec(service)
        forwards = upconfig.forwards(cfg, service)
        disk = str(upconfig.mirror_disk(cfg)) if image.disk else None
        definitions.append(
            Definition(
                name=service, image=str(folder / service), forwards=forwards,
                memory_mb=int(images["memory"]), disk=disk, restart=True,
                config=str(config_path.resolve()) if config_path else None,
                records=own if service == "nameserver" else {},
            )
        )  # fmt: skip
    return VmService(
        definitions, build_kernel=images["kernel"], network=chosen, announce=announce,
        disk_size=str(images["disk_size"]),
    )  # fmt: skip


async def build_apart(out: Path, kernel: str) -> int:
    """Build the image `out` (its folder is named after its service) in a process of its
    own, which a stop kills at once: a build in a thread ran on after Ctrl-C, and the
    process could not end before it did. Returns the image's size in bytes."""
    argv = [sys.executable, "-m", "retreatkit.cli.main", "image", "build", out.name,
            "-o", str(out.parent), "--kernel", kernel]  # fmt: skip
    child = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, err = await child.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()
        raise
    lines = err.decode(errors="replace").splitlines()
    if child.returncode != 0:  # its own one-line reason comes last, after its program's name
        why = lines[-1].removeprefix("retreatkit: ") if lines else ""
        raise RuntimeError(why or f"the build exited with {child.returncode}")
    manifest = json.loads((out / "manifest.json").read_bytes())
    size: int = manifest["size_bytes"]
    return size


def _when(built_at: float | None) -> str:
    """`at 2026-07-01 09:30 `: when an image was built, in local time, if known."""
    if built_at is None:
        return ""
    return f"at {time.strftime('%Y-%m-%d %H:%M', time.localtime(built_at))} "


def _about(seconds: float | None) -> str:
    """` (about 30 s)`: what the last build of an image took, to the nearest 5 s."""
    if seconds is None:
        return ""  # its first build here: nothing to go by
    return f" (about {max(5, round(seconds / 5) * 5)} s)"


def exposure_warning(definition: Definition, chosen: str) -> str | None:
    """The nameserver refuses clients outside the LAN; a guest behind qemu's user
    networking sees every client at 10.0.2.2 and cannot, so the forward's host address is
    what keeps the world out. Say so when it is a wildcard or a public address."""
    if definition.name != "nameserver" or network.keeps_clients(chosen):
        return None
    for forward in definition.forwards:
        f = qemu.Forward.parse(forward)
        host = ipaddress.IPv4Address(f.host)  # parse takes no other
        if host.is_unspecified or host.is_global:
            return (
                f"Guest nameserver: forwarded from {f.host}:{f.port}, it answers "
                "anyone who reaches this host (a guest cannot tell the LAN from the internet); "
                "set [nameserver] listen to a LAN address of this host, or "
                f"{network.to_keep_clients()}"
            )
    return None


class VmService:
    """Supervises guests in this process; `autostart` names guests to start with it, and
    `until_idle` ends the process once no guest is left running (`retreatkit vm serve`).
    With `announce`, the relay and the mirror among the autostart guests are announced on
    the LAN by zeroconf at the host side of their forwards, as `up` announces those it runs
    in-process: a guest cannot announce itself, its network is not the LAN."""

    name = "vm"

    def __init__(
        self,
        autostart: list[Definition] | None = None,
        until_idle: bool = False,
        build_kernel: str | None = None,
        network: str = "user",
        announce: bool = False,
        disk_size: str = run.DEFAULT_DISK_SIZE,
    ) -> None:
        self.autostart = list(autostart or [])
        self.disk_size = disk_size  # of an autostart guest's disk, when it is made
        self.announce = announce
        self._adverts: dict[str, LanAdvert] = {}  # guest name -> its announcement
        self._follow: asyncio.Task[None] | None = None
        self.network = network  # the autostart guests', for what start() says
        self.until_idle = until_idle
        self.build_kernel = build_kernel  # when set, build each autostart image first
        self.supervisor: Supervisor | None = None
        self._handlers: Handlers | None = None
        self._runner: web.AppRunner | None = None
        self._started = 0.0
        self._stopped: list[str] = []  # the guests that ran when it was told to stop
        self._ending: asyncio.TimerHandle | None = None  # the end once idle, not yet come

    async def start(self, registry: CollectorRegistry, say: Callable[[str], None]) -> None:
        self._started = time.monotonic()
        folder = private_dir(vm_dir())
        on_idle = self._idle if self.until_idle else None
        supervisor = self.supervisor = Supervisor(folder, on_idle)
        self._handlers = Handlers(supervisor)
        registry.register(_Collector(supervisor))
        path = control_path()
        # under a lock: supervisors started at once (`vm start`s at once, each starting
        # one) each found the socket free, and the later one took it from the earlier
        with locks.held(path.with_name("control.lock"), 0o600):  # a moment: its socket made
            answered = socket_in_use(path)
            if not answered:
                path.unlink(missing_ok=True)  # a supervisor's that was killed
                self._runner = web.AppRunner(self._handlers.control_app(), access_log=None)
                await self._runner.setup()
                await web.UnixSite(self._runner, str(path)).start()
                path.chmod(0o600)
        if not answered:
            say(f"Supervisor control socket {path}")
        elif self.until_idle and not self.autostart:
            # one started by `vm start`: its guest goes to the other, it has none to run
            say(f"Another supervisor answers on {path}: this one, with no guest to run, ends")
            supervisor.settle()
        else:
            say(f"Another supervisor answers on {path}: `retreatkit vm` will not see these guests")
        if self.autostart:
            say(network.describe(self.network))
        try:
            priors: dict[Path, inputs.Prior] = {}
            if self.build_kernel is not None:  # what earlier starts built: one apt query
                wanted = [(Path(d.image), d.name) for d in self.autostart]
                priors = await asyncio.to_thread(inputs.priors, wanted, self.build_kernel)
            for definition in self.autostart:
                try:
                    await self._autostart(definition, priors.get(Path(definition.image)), say)
                except (RuntimeError, ValueError) as exc:  # serve() says an OSError in one line
                    raise OSError(f"the {definition.name} guest: {exc}") from None
        except BaseException:  # cut short (Ctrl-C while images build): what it began stops
            await self.stop()
            raise
        if self.announce:
            self._follow = asyncio.ensure_future(self._follow_guests())

    async def _follow_guests(self) -> None:
        """The relay and the mirror guests announced while they run (or restart), and
        withdrawn once stopped or given up: a relay guest stopped from the dashboard stayed
        announced, and attendees' bob met a refused connection there."""
        from retreatkit.mdns import SERVICES, service_advert  # zeroconf only where used

        while True:
            for name, (host, port) in self.attendee_addresses().items():
                entry = self.supervisor.guests.get(name) if self.supervisor else None
                live = entry is not None and entry.state in ("running", "restarting")
                advert = self._adverts.get(name)
                if name in SERVICES and live and advert is None:
                    self._adverts[name] = advert = service_advert(name)
                    advert.start(host, port)  # as the in-process service's: never on loopback
                elif advert is not None and not live:
                    del self._adverts[name]
                    await advert.stop()
            await asyncio.sleep(FOLLOW_EVERY)

    async def _autostart(
        self, definition: Definition, prior: inputs.Prior | None, say: Callable[[str], None]
    ) -> None:
        supervisor = self.supervisor
        assert supervisor is not None
        if self.build_kernel is not None:
            out = Path(definition.image)
            prior = prior or inputs.NONE
            if prior.reusable:
                say(f"Using the {definition.name} image built {_when(prior.built_at)}({out})")
            else:
                say(f"Building the {definition.name} image{_about(prior.seconds)}...")
                size = await build_apart(out, self.build_kernel)
                say(f"Image {out} built ({size / 1e6:.1f} MB)")
        supervisor.define(definition)
        if (warning := exposure_warning(definition, self.network)) is not None:
            say(warning)
        await supervisor.start(definition.name)  # which says so

    def folders_written(self) -> list[Folder]:
        """Where its autostart guests are built and the folder of each data disk not made
        yet (room.py); their console logs are in the state folder, checked for every
        service."""
        from retreatkit.room import FEW_FILES, IMAGE_NEEDS, Folder  # only where checked

        needs = IMAGE_NEEDS * len(self.autostart)
        images = sorted({Path(d.image).parent for d in self.autostart})
        out = [Folder(folder, "the images folder", "[images] dir", needs) for folder in images]
        for definition in self.autostart:
            if definition.disk is not None and not Path(definition.disk).exists():
                # asked only for a start here (a read-only or full folder said as the
                # others are): make_disks then finds out whether the disk itself fits
                what = f"the folder of the {definition.name} guest's disk"
                out.append(Folder(Path(definition.disk).parent, what, "[images] disk", FEW_FILES))
        return out

    def make_disks(self) -> list[str]:
        """Each autostart guest's data disk not made yet, made now, before any service
        starts: mke2fs writes its journal and inode tables (86 MB for a 4G disk on ext4,
        2 MB on a tmpfs), which no fixed need foretells, and a disk it could not make was
        said only once the services before it had started, and stopped again."""
        problems = []
        for definition in self.autostart:
            disk = Path(definition.disk) if definition.disk is not None else None
            if disk is not None and not disk.exists():
                try:
                    run.make_disk(disk, self.disk_size)
                except run.RunError as exc:
                    problems.append(f"the {definition.name} guest: {exc}")
        return problems

    def attendee_addresses(self) -> dict[str, tuple[str, int]]:
        """Where attendees reach each service this process runs as a guest (`up`'s guests
        are named after their services): the host side of its service port's forward,
        with the port fixed when the guest was defined."""
        found: dict[str, tuple[str, int]] = {}
        for definition in self.autostart:
            image = specs.SPECS.get(definition.name)
            if image is None:
                continue
            wanted = image.ports[0]
            entry = self.supervisor.guests.get(definition.name) if self.supervisor else None
            for forward in (entry.definition if entry else definition).forwards:
                f = qemu.Forward.parse(forward)
                if (f.proto, f.guest_port) == wanted:
                    found[definition.name] = (f.host, f.port)
        return found

    def _idle(self) -> None:
        # a few dashboard polls more: a dashboard then reads how the last guest ended and
        # that nothing runs, so the silence after reads "ended", not "cannot connect"
        if self._ending is None:
            self._ending = asyncio.get_running_loop().call_later(IDLE_LINGER, self._end_if_idle)

    def _end_if_idle(self) -> None:
        self._ending = None
        if self.supervisor is not None and self.supervisor.active:
            return  # a guest was started meanwhile
        log.info("no guest left running; the supervisor stops")
        os.kill(os.getpid(), signal.SIGTERM)

    async def stop(self) -> None:
        if self._ending is not None:  # stopping already: no second SIGTERM
            self._ending.cancel()
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow
        for advert in self._adverts.values():  # goodbyes on the LAN before the guests go
            await advert.stop()
        self._adverts.clear()
        if self.supervisor is not None:
            self._stopped = sorted(n for n, e in self.supervisor.guests.items() if e.running)
            await self.supervisor.close()
        if self._runner is not None:
            await self._runner.cleanup()
            with contextlib.suppress(OSError):
                control_path().unlink()

    async def hangup(self) -> list[str]:
        """SIGHUP (serve.py): each nameserver guest's blocklists read again from this
        host's files and handed to it; a line for each guest saying what it reloaded."""
        from retreatkit.image.guestlists import GuestListsError
        from retreatkit.nameserver import reloaded

        supervisor = self.supervisor
        if supervisor is None:
            return []
        lines = []
        for name, entry in sorted(supervisor.guests.items()):
            if entry.service != "nameserver" or entry.state == "stopped":
                continue
            try:
                states = await supervisor.reload_lists(name)
            except (GuestListsError, ValueError, TokenError) as exc:  # GuestError among them
                lines.append(f"guest {name}: blocklists not reloaded: {exc}")
            else:
                lines.append(f"guest {name}: {reloaded.line(states)}")
        return lines or ["vm: no nameserver guest runs, no blocklist to reload"]

    def stopped_as(self) -> str:
        """`vm (guest relay)`: what stopped with the supervisor, named for `Stopped:`."""
        if not self._stopped:
            return self.name
        noun = "guest" if len(self._stopped) == 1 else "guests"
        return f"{self.name} ({noun} {', '.join(self._stopped)})"

    def status(self) -> dict[str, Any]:
        if self.supervisor is None:
            return {"up": False}
        return {
            "up": True,
            "uptime_seconds": round(time.monotonic() - self._started, 1),
            "guests": len(self.supervisor.guests),
            "guests_running": self.supervisor.active,
            "restarts": self.supervisor.restarted,
            "ends_when_idle": self.until_idle,  # a background one: gone with its last guest
            "warnings": self.supervisor.warnings(),
        }

    def admin_routes(self) -> list[web.RouteDef]:
        """GET /vm/guests and the start/stop actions, on the process's admin endpoint."""
        assert self._handlers is not None
        return self._handlers.admin_routes()
