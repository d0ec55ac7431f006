"""One guest under qemu: its configuration disk, its console kept on the host, a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime
import fcntl
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retreatkit.image import bootcache, build, bzimage, cpio, guestconfig, network, qemu
from retreatkit.image import spec as specs
from retreatkit.image.paths import private_dir

CONSOLE_MAX = 1024 * 1024  # then the log moves to console.log.1: bounded on disk
CONSOLES_PER_SERVICE = 100  # `image run`s of one service at once, each with its own log
STOP_SECONDS = 30.0  # a clean stop under emulation takes well under this
QEMU_AFTER_PASST = 2.0  # seconds: a qemu that ends by itself has ended by then
STOP_COMMAND = specs.STOP_COMMAND.encode() + b"\n"
# a stop written before the guest's console is open (while its kernel boots) is lost, and
# the guest was powered off 30 s later: said again each second until its echo is seen
STOP_AGAIN = 1.0
ECHOED = re.compile(re.escape(specs.STOP_COMMAND.encode()) + rb"\r?\n")  # the tty's echo
READY = b"Admin on http://"  # the guest's last start-up line
CHUNK = 4096
REASON_MAX = 160  # characters of a guest's last console line kept as why qemu ended
DEFAULT_DISK_SIZE = "4G"
PR_SET_PDEATHSIG = 1


class RunError(RuntimeError):
    """The guest cannot be started as asked: the message says why."""


@dataclass
class Launch:
    """Everything needed to boot an image: its folder, forwards, memory, disks."""

    image: Path
    forwards: list[qemu.Forward]
    memory_mb: int
    config: guestconfig.GuestConfig
    disk: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    disk_size: str = DEFAULT_DISK_SIZE  # when the disk is made
    network: str = "user"  # "passt" or "user": see network.py

    @classmethod
    def prepare(
        cls,
        image: Path,
        cfg: dict[str, Any],
        token: str,
        forwards: list[qemu.Forward],
        memory_mb: int,
        disk: Path | None = None,
        *,
        diskless: bool = False,
    ) -> Launch:
        """Check the image and render its configuration for this boot. `diskless`: an
        image that keeps data boots without its disk (a benchmark's first answer)."""
        manifest = build.load_manifest(image)
        service = manifest["service"]
        check_whole(image, manifest)
        if disk is not None and not manifest["disk"]:
            raise RunError(f"the {service} image keeps no data: it takes no --disk")
        if disk is None and manifest["disk"] and not diskless:
            # its store would be in the guest's memory, which has no room it can measure
            # (the initramfs's file system): the store kept nothing, and every download
            # failed (507, "the mirror's disk is full")
            raise RunError(
                f"the {service} image keeps its store on a data disk: pass --disk FILE (an"
                " ext4 disk, made there if missing)"
            )
        size = str(cfg["images"]["disk_size"])
        problem = disk_problem(disk, size) if disk is not None else None
        if problem is not None:
            raise RunError(problem)
        chosen = network.choose(str(cfg["images"]["network"]))
        config = guestconfig.render(
            service, cfg, token, disk is not None, network.keeps_clients(chosen)
        )
        forwards = complete_forwards(manifest, forwards)
        return cls(image, forwards, memory_mb, config, disk, manifest, size, chosen)

    @property
    def service(self) -> str:
        return str(self.manifest["service"])

    @property
    def admin_url(self) -> str:
        return admin_url(self.forwards)


def complete_forwards(manifest: dict[str, Any], forwards: list[qemu.Forward]) -> list[qemu.Forward]:
    """`forwards`, plus every port the image serves (and its admin port) that they do not
    name, on 127.0.0.1; port 0 becomes a free port."""
    wanted = [(proto, port) for proto, port in manifest["ports"]]
    wanted.append(("tcp", manifest["admin_port"]))
    given = {(f.proto, f.guest_port) for f in forwards}
    extra = [qemu.Forward(p, "127.0.0.1", 0, g) for p, g in wanted if (p, g) not in given]
    return qemu.bind_forwards([*forwards, *extra])


def config_problems(service: str, cfg: dict[str, Any]) -> list[str]:
    """What `retreatkit SERVICE` and `up` refuse in retreat.toml, for the guest of that
    service too: it booted with them (`[relay] per_ip = -1` refused every connection)."""
    from retreatkit import startup

    # the guest's store is on its own disk, whatever the host's [mirror] store names
    checked = {**cfg, "mirror": {**cfg["mirror"], "store": ""}}
    return startup.check_config(checked, [service], {})


def check_whole(image: Path, manifest: dict[str, Any]) -> None:
    """The kernel and initramfs are as large as the manifest says: a build or a copy cut
    short boots into a kernel panic that names neither."""
    for name in ("kernel", "initramfs"):
        try:
            size = (image / name).stat().st_size
        except OSError as exc:
            raise RunError(f"{image} is not a whole image: its {name}: {exc.strerror}") from None
        expected = manifest.get(name, {}).get("size_bytes")
        if size != expected:
            raise RunError(
                f"{image} is not a whole image: its {name} is {size} bytes where"
                f" {build.MANIFEST} says {expected}; build it again"
                f" (retreatkit image build {manifest['service']})"
            )


EXT4_MAGIC_AT = 1024 + 0x38  # s_magic in the superblock, which starts at byte 1024
EXT4_MAGIC = b"\x53\xef"


def check_disk(disk: Path) -> None:
    """A data disk the guest can mount and write: ext4 (ext2 and ext3 share the magic)
    and writable here, said before qemu starts rather than as a guest that fails at its
    mount or a line of qemu's."""
    try:
        with disk.open("r+b") as f:
            f.seek(EXT4_MAGIC_AT)
            magic = f.read(2)
    except OSError as exc:
        raise RunError(f"the disk {disk} cannot be written: {exc.strerror}") from None
    if magic != EXT4_MAGIC:
        raise RunError(
            f"the disk {disk} holds no ext4 file system: name a file that does not exist"
            " yet, and one is made there"
        )


def admin_url(forwards: list[qemu.Forward]) -> str:
    f = next(f for f in forwards if f.guest_port == specs.ADMIN_PORT and f.proto == "tcp")
    host = "127.0.0.1" if f.host in ("0.0.0.0", "") else f.host
    return f"http://{host}:{f.port}"


DISK_SIZE = re.compile(r"[1-9][0-9]{0,15}[KMGTkmgt]")  # as mke2fs reads a size, with a unit
DISK_LEAST = 64 << 20  # an ext4 with a journal, and room for a mirror's first packages
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def disk_problem(disk: Path, size: str) -> str | None:
    """What keeps `disk` from being a guest's data disk (made at `size` if missing), in a
    few words, before anything boots: mke2fs's own words came only as a guest started,
    after the other guests had."""
    if disk.exists():  # made already: its size is what it is
        try:
            check_disk(disk)
        except RunError as exc:
            return str(exc)
        return None
    if (problem := size_problem(size)) is not None:
        return problem
    if not disk.parent.is_dir():
        return f"the disk {disk} cannot be made: {disk.parent} is not a folder"
    if not os.access(disk.parent, os.W_OK):
        return f"the disk {disk} cannot be made: {disk.parent} is not writable"
    return None


def size_problem(size: str) -> str | None:
    """Why `size` is no size a data disk is made at, in a few words; None if it is one."""
    if not DISK_SIZE.fullmatch(size) or int(size[:-1]) * _UNITS[size[-1].upper()] < DISK_LEAST:
        return f"disk_size = {size!r} is not a size from 64M up (a number and K, M, G or T)"
    return None


MKE2FS_SECONDS = 120.0  # a few seconds on any disk; more is a file system that hangs


def make_disk(path: Path, size: str = DEFAULT_DISK_SIZE) -> None:
    """An empty ext4 disk image (sparse), made on the host: no root, no loop mount."""
    mke2fs = shutil.which("mke2fs") or next(
        (p for p in ("/usr/sbin/mke2fs", "/sbin/mke2fs") if Path(p).exists()), None
    )
    if mke2fs is None:
        raise RunError("mke2fs not found: apt-get install e2fsprogs")
    try:
        done = _mke2fs(mke2fs, path, size)
    except subprocess.TimeoutExpired:  # a stuck NFS mount, a dying USB stick
        path.unlink(missing_ok=True)
        raise RunError(
            f"cannot make the disk {path}: mke2fs took over {MKE2FS_SECONDS:.0f} s"
            " (is that file system stuck?)"
        ) from None
    if done.returncode != 0:
        path.unlink(missing_ok=True)
        # its last line says why; those before, on a full disk, each block it could not
        # write ("Warning: could not erase sector 2: ...")
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        why = lines[-1] if lines else f"mke2fs exit code {done.returncode}"
        raise RunError(f"cannot make the disk {path}: {why}")


def _mke2fs(mke2fs: str, path: Path, size: str) -> subprocess.CompletedProcess[str]:
    # inode tables and journal written now, so the guest's CPU does not do it later
    return subprocess.run(
        [
            mke2fs,
            "-q",
            "-t",
            "ext4",
            "-F",
            "-L",
            "retreatkit",
            "-i",
            "65536",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            str(path),
            size,
        ],
        capture_output=True,
        text=True,
        timeout=MKE2FS_SECONDS,
        check=False,
    )


# the guest's tty ends lines with CR LF (CRs are dropped, even when a read splits the
# pair); other control bytes, a terminal's escape sequences among them, are shown as "?"
_CONTROLS = bytes(c for c in range(32) if c not in (9, 10, 13)) + b"\x7f"
_SHOWN = bytes.maketrans(_CONTROLS, b"?" * len(_CONTROLS))
# and the C1 controls (U+0080-U+009F) in UTF-8: some terminals take U+009B as CSI
_C1 = re.compile(rb"\xc2[\x80-\x9f]")


def printable(data: bytes) -> bytes:
    return _C1.sub(b"?", data.translate(_SHOWN, b"\r"))


def split_c1(data: bytes) -> tuple[bytes, bytes]:
    """`data` as what can go out now and what waits for the next read: a C1 control's
    first byte at the end, which `printable` alone would pass and the next read complete."""
    return (data[:-1], data[-1:]) if data.endswith(b"\xc2") else (data, b"")


class LastLine:
    """The last line a guest's console showed that is not blank: when qemu gives up, its
    own error (stderr shares the console's pipe). Bounded whatever the guest prints."""

    def __init__(self) -> None:
        self._last = b""
        self._partial = b""
        self.panic = ""  # the kernel's reason, if it panicked (qemu then exits 0)
        self.failed = ""  # the guest's, if its /init or service failed (it resets: exit 0)

    def feed(self, data: bytes) -> None:
        *lines, partial = (self._partial + data).split(b"\n")
        self._partial = partial[-REASON_MAX * 4 :]
        for line in lines:
            _, found, why = line.partition(PANIC)
            if found and not self.panic:
                self.panic = why.decode(errors="replace").strip()[:REASON_MAX]
            if line.startswith(FAILED) and not self.failed:
                self.failed = line[len(FAILED) :].decode(errors="replace").strip()[:REASON_MAX]
        for line in reversed(lines):
            if line.strip():
                self._last = line[-REASON_MAX * 4 :]
                break

    @property
    def text(self) -> str:
        line = self._partial if self._partial.strip() else self._last
        text = line.decode(errors="replace").strip()
        return text if len(text) <= REASON_MAX else "..." + text[3 - REASON_MAX :]


PANIC = b"Kernel panic - not syncing: "
FAILED = b"retreatkit: the guest failed: "  # init.main's last word before the reset
# qemu catches SIGTERM, SIGINT and SIGHUP, says so and exits 0, as a guest powering off does
CAUGHT = re.compile(r"qemu[\w.-]*: terminating on signal (\d+)")


def describe_exit(code: int, last_line: str, panic: str = "", failed: str = "") -> str:
    """How qemu ended, in a few words: killed by a signal, the guest's kernel panicked
    (out of memory, most often), the guest failed (its service could not run), or qemu's
    exit code, with its last line when it failed (why it could not run the guest)."""
    if code < 0:
        return f"killed by signal {-code}"
    caught = CAUGHT.match(last_line) if code == 0 else None
    if caught:
        return f"killed by signal {caught[1]}"
    if panic:
        hint = "; give it more memory" if "memory" in panic.lower() else ""
        return f"the guest's kernel panicked: {panic}{hint}"
    if failed and code == 0:
        return f"the guest failed: {failed}"
    if code != 0 and last_line:
        return f"qemu exit code {code}: {last_line}"
    return f"qemu exit code {code}"


def boot_line(when: datetime.datetime) -> bytes:
    """The host's line in a console log where a boot starts: one log holds many boots."""
    return f"--- boot at {when.isoformat(timespec='seconds')} ---".encode()


class ConsoleLog:
    """The guest's console, appended to a file that moves aside at CONSOLE_MAX."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._held = -1
        self.lost = 0  # bytes of the console the log could not take (its disk full)
        self.why = ""  # the system's word for the last of those
        self._unsaid = 0  # of those, lost since the log last said so

    def hold(self) -> bool:
        """Take the log for this guest alone (a lock beside it, released when the process
        ends however it ends): False when another guest's run holds it, whose lines would
        otherwise interleave with this one's."""
        lock = self._lock()
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            # the holder before may have removed the lock between our open and our flock
            # (`release`): that lock is nobody's, so take the one at the path now
            try:
                same = os.path.samestat(os.fstat(fd), lock.stat())
            except FileNotFoundError:
                same = False
            if same:
                self._held = fd
                return True
            os.close(fd)

    def _lock(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def release(self) -> None:
        """The lock removed while still held, so none is left beside the log; a run
        killed outright leaves it, and the next takes it over."""
        if self._held >= 0:
            with contextlib.suppress(OSError):
                self._lock().unlink()
            os.close(self._held)
            self._held = -1

    def mark(self, line: bytes) -> None:
        """A line of the host's own, on a line of its own: the last boot may have ended
        mid-line (a killed qemu)."""
        self.write((b"" if self._ends_a_line() else b"\n") + line + b"\n")

    def _ends_a_line(self) -> bool:
        try:
            with self.path.open("rb") as log:
                if log.seek(0, os.SEEK_END) == 0:
                    return True
                log.seek(-1, os.SEEK_END)
                return log.read(1) == b"\n"
        except FileNotFoundError:
            return True

    def keep(self, data: bytes) -> None:
        """The guest's console as it comes. A log that cannot take it (a full disk) loses
        it, counted, rather than stop the reading: a console nobody reads stalls qemu's
        serial port, and with it the guest at its next line. The log says what it lost
        once it takes lines again, in one write with them."""
        said = b""
        if self._unsaid:
            said = f"\n--- {self._unsaid} bytes of console lost: {self.why} ---\n".encode()
        try:
            self.write(said + data)
        except OSError as exc:
            self.lost += len(data)
            self._unsaid += len(data)
            self.why = exc.strerror or str(exc)
        else:
            self._unsaid = 0

    def write(self, data: bytes) -> None:
        """`data` appended whole, or not at all (OSError): a full disk takes the bytes up to
        the end of its last page and refuses the rest, which kept a piece of a line that
        the count of lost bytes took for lost, and a piece of the note that says so."""
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_size + len(data) > CONSOLE_MAX:
                self.path.replace(self.path.with_name(self.path.name + ".1"))
        # this user's alone, as everything else a guest leaves on the host: what a guest
        # prints is its own business, and a log others can read would be the first place
        # a secret that slipped onto its console is looked for
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            end = os.fstat(fd).st_size  # one writer: the log is held (hold)
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(fd, view) :]
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)


def own_console(given: Path | None, folder: Path, service: str) -> ConsoleLog:
    """The console log of one `retreatkit image run`, held for it alone: `given` (--console)
    or it is refused; by default `SERVICE.log` in `folder`, else, while another run of the
    same service holds that, the first of `SERVICE-2.log`, `SERVICE-3.log`, ... free."""
    if given is not None:
        log = ConsoleLog(given)
        if not log.hold():
            raise RunError(
                f"the console log {given} is in use by another guest; pass another --console FILE"
            )
        return log
    private_dir(folder)
    for n in range(1, CONSOLES_PER_SERVICE + 1):
        log = ConsoleLog(folder / (f"{service}.log" if n == 1 else f"{service}-{n}.log"))
        if log.hold():
            return log
    raise RunError(
        f"{CONSOLES_PER_SERVICE} guests of the {service} image run already, each with its"
        f" console log in {folder}; pass --console FILE"
    )


def boot_files(launch: Launch) -> tuple[Path, Path]:
    """The kernel and initramfs qemu boots, unpacked on the host where it can (kept in
    bootcache): emulated, the guest unpacked them slowly (bzimage.py, cpio.unpack say how
    much)."""
    limit = launch.memory_mb << 20

    def unpack(source: Path, into: Path) -> bool:
        cpio.unpack(source, into, limit)
        return True

    def named(part: str) -> str | None:  # as built (a manifest may predate the hashes)
        value = launch.manifest[part].get("sha256")
        return value if isinstance(value, str) else None

    part = "kernel"  # the one being unpacked, for the error
    try:
        vmlinux = bootcache.unpacked(
            launch.image / "kernel", "vmlinux", bzimage.direct_kernel, named("kernel")
        )
        part = "initramfs"
        initramfs = bootcache.unpacked(
            launch.image / "initramfs", "cpio", unpack, named("initramfs")
        )
        assert initramfs is not None  # `unpack` always unpacks
        if initramfs.stat().st_size > limit:  # unpacked for a guest with more memory
            raise cpio.UnpackError("unpacks to more than the guest's memory")
    except bootcache.NotAsNamed as exc:
        raise RunError(
            f"{launch.image} is not the image it was built as: its {part} is not the one"
            f" {build.MANIFEST} names ({exc}); build it again"
            f" (retreatkit image build {launch.manifest['service']})"
        ) from None
    except (cpio.UnpackError, OSError) as exc:
        if isinstance(exc, cpio.UnpackError):
            raise RunError(
                f"{launch.image} is not a whole image: its initramfs {exc}; build it again"
                f" (retreatkit image build {launch.manifest['service']})"
            ) from None
        why = exc.strerror or exc
        raise RunError(f"could not unpack the image into {bootcache.folder()}: {why}") from None
    # Debian's kernel (or ours without PVH) boots as the bzImage: it unpacks itself
    return (vmlinux or launch.image / "kernel"), initramfs


def _die_with_parent() -> None:
    """In the child before exec: if we die unexpectedly, the kernel kills qemu too, rather
    than leave a guest holding its ports with nobody to stop it (prctl(2))."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Guest:
    """A running qemu for one Launch; `stop()` asks the guest to shut down cleanly."""

    def __init__(
        self,
        launch: Launch,
        run_dir: Path,
        console: ConsoleLog,
        echo: Callable[[bytes], None] | None = None,
    ) -> None:
        self.launch = launch
        self.run_dir = run_dir
        self.console = console
        self.echo = echo
        self.process: asyncio.subprocess.Process | None = None
        self.started = 0.0  # time.monotonic() of the qemu start
        self.ready = asyncio.Event()
        self.stopping = False
        self.last_line = LastLine()
        self._tail = b"\n"  # the console's last bytes, until READY is among them
        self.heard = asyncio.Event()  # the guest's console echoed the stop: it will read it
        self._asked = False  # a stop was written: the console is looked at for its echo
        self._heard_tail = b""
        self._pump: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self.passt: network.Passt | None = None

    async def start(self, accel: str) -> None:
        launch = self.launch
        # at each start, restarts too: a port another program took meanwhile is the same
        # one line, and a guest restarted on exit tries again as after any failed start
        problem = qemu.forward_problem(launch.forwards)
        if problem is not None:
            raise RunError(problem)
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        config_disk = self.run_dir / "config.disk"
        launch.config.write(config_disk)
        disks: list[tuple[Path, bool]] = [(config_disk, True)]
        if launch.disk is not None:
            if not launch.disk.exists():
                make_disk(launch.disk, launch.disk_size)
            disks.append((launch.disk, False))
        # before passt starts: a failure here leaves nothing running
        kernel, initramfs = await asyncio.to_thread(boot_files, launch)
        sock = None
        if launch.network == "passt":
            self.passt = network.Passt(self.run_dir, launch.forwards)
            sock = await self.passt.start(_die_with_parent)
        args = qemu.argv(
            launch.manifest["machine"],
            kernel,
            initramfs,
            memory_mb=launch.memory_mb,
            accel=accel,
            forwards=launch.forwards,
            disks=disks,
            passt=sock,
        )
        self.started = time.monotonic()
        try:
            self._mark_boot()
            # its own session: a Ctrl-C at the terminal reaches us, and we stop it cleanly
            self.process = await asyncio.create_subprocess_exec(
                *args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except BaseException:
            if self.passt is not None:
                await self.passt.close()
            raise
        self._pump = asyncio.ensure_future(self._read_console())
        if self.passt is not None:
            self._watch = asyncio.ensure_future(self._watch_network(self.passt))

    def _mark_boot(self) -> None:
        """The boot's first line in the console log: a log that cannot take it (its disk
        full) is said before qemu starts, not as a guest without a log."""
        try:
            self.console.mark(boot_line(datetime.datetime.now().astimezone()))
        except OSError as exc:
            why = exc.strerror or exc
            raise RunError(f"cannot write the console log {self.console.path}: {why}") from None

    async def _read_console(self) -> None:
        """Copy the console to its log (and the terminal), in bounded chunks: what a guest
        prints is not trusted, neither its line lengths nor its escape sequences."""
        assert self.process is not None and self.process.stdout is not None
        held = b""
        while data := await self.process.stdout.read(CHUNK):
            out, held = split_c1(held + data)
            self._show(printable(out))
        if held:
            self._show(printable(held))

    def _show(self, chunk: bytes) -> None:
        self.console.keep(chunk)
        self.last_line.feed(chunk)
        if self.echo is not None:
            self.echo(chunk)
        if self._asked and not self.heard.is_set():
            self._heard_tail = (self._heard_tail + chunk)[-CHUNK:]
            if ECHOED.search(self._heard_tail):
                self.heard.set()
        if not self.ready.is_set():
            self._tail = (self._tail + chunk)[-CHUNK:]
            at = self._tail.find(b"\n" + READY)
            if at >= 0 and b"\n" in self._tail[at + 1 :]:  # the whole line is out
                self.ready.set()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def wait(self) -> int:
        assert self.process is not None
        code = await self.process.wait()
        if self._pump is not None:
            await self._pump  # the console up to qemu's last word
        if self.passt is not None:
            await self.passt.close()
        if self._watch is not None and self._watch is not asyncio.current_task():
            self._watch.cancel()
        return code

    async def _watch_network(self, passt: network.Passt) -> None:
        """passt ended under a running guest: nobody reaches it any more, though qemu runs
        on. Shut it down, so whoever runs it sees it end (and restarts it if asked)."""
        assert passt.process is not None and self.process is not None
        await passt.process.wait()
        try:  # passt ends as qemu does (--one-off): qemu's own end is not passt's fault
            await asyncio.wait_for(asyncio.shield(self.process.wait()), QEMU_AFTER_PASST)
            return
        except TimeoutError:
            pass
        if self.running and not self.stopping and not self.last_line.failed:
            self.last_line.failed = "its network ended: passt exited"
            await self._shut_down(STOP_SECONDS)

    async def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Ask for a clean shutdown on the console; power it off if it does not come."""
        self.stopping = True
        await self._shut_down(timeout)

    async def _shut_down(self, timeout: float) -> None:
        if not self.running:
            return
        assert self.process is not None and self.process.stdin is not None
        self._asked = True
        ended = asyncio.ensure_future(self.process.wait())
        try:
            async with asyncio.timeout(timeout):
                while not ended.done():
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        self.process.stdin.write(STOP_COMMAND)
                        await self.process.stdin.drain()
                    heard = asyncio.ensure_future(self.heard.wait())
                    await asyncio.wait((ended, heard), timeout=STOP_AGAIN,
                                       return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                    heard.cancel()
                    if self.heard.is_set():
                        await ended
                await self.wait()
        except TimeoutError:
            self.kill()
            await self.wait()
        finally:
            ended.cancel()

    def kill(self) -> None:
        if self.running:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        if self.passt is not None:
            self.passt.kill()
