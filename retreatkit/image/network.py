"""How a guest reaches the LAN: passt where it is installed, else qemu's user networking.

qemu's user networking (slirp) forwards a host port by opening a new connection inside
the guest from 10.0.2.2: every client looks the same to the service, so no bound per
client holds and the nameserver cannot refuse the world. passt (passt.top, Debian's
`passt`) forwards at layer 4 and keeps the client's address; only clients on the host's
own loopback arrive from the gateway, 10.0.2.2, as they do with slirp. The guest sees
the same network either way: 10.0.2.15/24, the host at 10.0.2.2, a resolver at
10.0.2.3, so one image boots under both.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from retreatkit.image import spec as specs
from retreatkit.image import strays
from retreatkit.image.qemu import Forward

CHOICES = ("auto", "passt", "user")
START_SECONDS = 10.0  # passt makes its socket in milliseconds; this bounds a stuck one
# passt's line once qemu may connect: it says "bound" before it listens, this after
READY = "You can now start qemu"
LOG_MAX = 64 * 1024  # bytes of passt's lines kept in the guest's folder
REASON_MAX = 160


class NetworkError(RuntimeError):
    """The network asked for cannot be had: the message says what to do."""


def choose(setting: str, found: str | None = None) -> str:
    """ "passt" or "user" for `[images] network`; `found` is passt's path (looked up when
    not given)."""
    if setting not in CHOICES:
        raise NetworkError(f"[images] network must be one of {', '.join(CHOICES)}, not {setting!r}")
    if setting == "user":
        return "user"
    if _passt(found):
        return "passt"
    if setting == "passt":
        raise NetworkError(
            '[images] network = "passt" but passt is not installed (apt-get install passt)'
        )
    return "user"


def describe(network: str, found: str | None = None) -> str:
    """The line `image run` and `up` print about the guest's network; `found` as for
    `choose`."""
    if network == "passt":
        return "Network: passt; the guest sees each client's own address"
    return (
        "Network: qemu's user networking; every client arrives from 10.0.2.2"
        f" ({to_keep_clients(found)} to keep their addresses)"
    )


def to_keep_clients(found: str | None = None) -> str:
    """What gives guests their clients' addresses: passt, or the setting that takes it
    where it is installed and was not chosen."""
    return 'set [images] network = "auto"' if _passt(found) else "install passt"


def _passt(found: str | None) -> str:
    """passt's path: `found` when given, else looked up ("" when not installed)."""
    return found if found is not None else (shutil.which("passt") or "")


def keeps_clients(network: str) -> bool:
    """Whether the guest sees each client's own address."""
    return network == "passt"


def passt_argv(socket: Path, forwards: Sequence[Forward], runas: str | None) -> list[str]:
    """passt in the foreground for one qemu (it ends when qemu does), the guest's network
    as slirp lays it out, and the forwards from the host's addresses they name."""
    args = [
        shutil.which("passt") or "passt",
        "--foreground",
        "--one-off",
        "--ipv4-only",
        "--socket", str(socket),
        "--address", specs.GUEST_ADDRESS,
        "--netmask", "24",
        "--gateway", specs.HOST_FROM_GUEST,
        "--dns-forward", specs.DNS_FROM_GUEST,
        "--no-dhcp",  # the guest's /init sets its address itself
    ]  # fmt: skip
    if runas is not None:
        args += ["--runas", runas]
    for f in forwards:
        host = "" if f.host in ("", "0.0.0.0") else f"{f.host}/"
        flag = "--tcp-ports" if f.proto == "tcp" else "--udp-ports"
        args += [flag, f"{host}{f.port}:{f.guest_port}"]
    return args


def socket_dir() -> tuple[Path, str | None]:
    """A new folder for passt's socket (under the temporary folder: a socket's path is
    at most 107 bytes), and the user passt should run as. Started as root, passt gives up
    root for `nobody` before it makes its socket, so the folder is then nobody's."""
    folder = Path(tempfile.mkdtemp(prefix=strays.PREFIX))
    if os.geteuid() != 0:
        return folder, None
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        folder.rmdir()
        raise NetworkError("passt runs as the user nobody, and this host has none") from None
    os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    return folder, "nobody"


class Passt:
    """One passt for one qemu: started first, its socket handed to qemu, ended with it."""

    def __init__(self, run_dir: Path, forwards: Sequence[Forward]) -> None:
        self.run_dir = run_dir
        self.forwards = list(forwards)
        self.process: asyncio.subprocess.Process | None = None
        self.folder: Path | None = None
        self.log = run_dir / "passt.log"
        self.logged = 0
        self._drain: asyncio.Future[None] | None = None
        self.marked: Path | None = None  # strays' note of this passt

    async def start(self, preexec: Callable[[], None] | None = None) -> Path:
        """passt's socket, once qemu may connect to it. NetworkError, in passt's own last
        words, when it ends first (a port already taken) or does not start."""
        # a passt left by a killed supervisor may hold these ports
        await asyncio.to_thread(strays.sweep)
        self.folder, runas = socket_dir()
        sock = self.folder / "passt.sock"
        self.process = await asyncio.create_subprocess_exec(
            *passt_argv(sock, self.forwards, runas),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=preexec,
        )
        try:
            self.marked = strays.mark(sock, self.process.pid)
            async with asyncio.timeout(START_SECONDS):
                await self._ready()
        except TimeoutError:
            await self.close()
            raise NetworkError(f"passt made no socket in {START_SECONDS:g} s") from None
        except OSError as exc:  # its mark: a full or unwritable state folder
            await self.close()
            why = exc.strerror or exc
            raise NetworkError(f"cannot note passt in {strays.marks_dir()}: {why}") from None
        except BaseException:
            await self.close()
            raise
        self._drain = asyncio.ensure_future(self._keep_log())
        return sock

    async def _ready(self) -> None:
        """Until passt says its socket listens; its lines go to its log on the way."""
        assert self.process is not None and self.process.stderr is not None
        last = "it said nothing"
        while line := await self.process.stderr.readline():
            text = self._note(line)
            if READY in text:
                return
            if text and "syslog" not in text:  # no system logger here: passt says so
                last = text[:REASON_MAX]
        raise NetworkError(f"passt ended at its start: {last}")

    def _note(self, line: bytes) -> str:
        if self.logged < LOG_MAX:
            self.logged += len(line)
            with contextlib.suppress(OSError), self.log.open("ab") as log:
                log.write(line)
        return line.decode("utf-8", "replace").strip()

    async def _keep_log(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self._note(line)

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    async def close(self) -> None:
        """After qemu: passt ends by itself when qemu leaves (--one-off); make sure."""
        if self.process is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 2.0)
            self.kill()
            await self.process.wait()
        if self._drain is not None:
            with contextlib.suppress(Exception):
                await self._drain
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
        if self.marked is not None:
            strays.unmark(self.marked)
            self.marked = None
