"""qemu's command line for a guest, its port forwards, and whether KVM really works here."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from retreatkit.image.paths import cache_dir
from retreatkit.lanaddress import bind_error

QEMU = "qemu-system-x86_64"
KVM_PROBE_SECONDS = 8.0  # a kernel reaches its root-mount panic in < 1 s on working KVM


class QemuError(RuntimeError):
    """qemu is missing or cannot run this guest."""


@dataclass(frozen=True)
class VirtioDevice:
    """Virtio 1.2 §5 device IDs, and the transitional PCI IDs (§4.1.2.1) qemu's pc gives."""

    kind: str
    virtio_id: int
    pci_id: int
    pci_class: int


NET = VirtioDevice("net", 1, 0x1000, 0x020000)
BLK = VirtioDevice("blk", 2, 0x1001, 0x010000)
RNG = VirtioDevice("rng", 4, 0x1005, 0x00FF00)
VIRTIO_VENDOR = 0x1AF4


def modaliases(machine: str, devices: list[VirtioDevice]) -> list[str]:
    """What the guest's devices announce, for a kernel that loads drivers as modules."""
    found = []
    for d in devices:
        if machine == "pc":
            cls = d.pci_class
            found.append(
                f"pci:v{VIRTIO_VENDOR:08X}d{d.pci_id:08X}sv{VIRTIO_VENDOR:08X}sd{d.virtio_id:08X}"
                f"bc{cls >> 16:02X}sc{(cls >> 8) & 0xFF:02X}i{cls & 0xFF:02X}"
            )
        found.append(f"virtio:d{d.virtio_id:08X}v{VIRTIO_VENDOR:08X}")
    return found


@dataclass(frozen=True)
class Forward:
    """A host address forwarded to a guest port (by passt, or qemu's user networking)."""

    proto: str  # "tcp" or "udp"
    host: str
    port: int
    guest_port: int

    @classmethod
    def parse(cls, text: str) -> Forward:
        """`tcp|udp:HOST:PORT:GUESTPORT`, HOST an IPv4 address (empty: 127.0.0.1).

        qemu's hostfwd takes an IPv4 address and no name (inet_aton), nor does passt
        resolve one; and HOST goes into qemu's `-netdev user,...` as it is, where a comma
        in it would add options of the sender's choosing.
        """
        parts = text.split(":")
        if len(parts) != 4 or parts[0] not in ("tcp", "udp"):
            raise ValueError(f"expected tcp|udp:HOST:PORT:GUESTPORT, got {text!r:.80}")
        proto, host, port, guest = parts
        digits = (port + guest).isascii() and port.isdigit() and guest.isdigit()  # not "²"
        if not digits or int(port) > 65535 or int(guest) > 65535:
            raise ValueError(f"expected tcp|udp:HOST:PORT:GUESTPORT, got {text!r:.80}")
        if int(guest) == 0:  # PORT 0 is any free port; a guest's port 0 is none at all
            raise ValueError(
                f"expected tcp|udp:HOST:PORT:GUESTPORT with GUESTPORT a port the guest serves"
                f" (1-65535), got {text!r:.80}"
            )
        try:
            address = ipaddress.IPv4Address(host or "127.0.0.1")
        except ValueError:
            raise ValueError(
                f"expected tcp|udp:HOST:PORT:GUESTPORT with HOST an IPv4 address"
                f" (127.0.0.1, 0.0.0.0, one of this host's), got {text!r:.80}"
            ) from None
        return cls(proto, str(address), int(port), int(guest))

    def __str__(self) -> str:
        return f"{self.proto}:{self.host}:{self.port}:{self.guest_port}"


def free_port(host: str, protos: tuple[str, ...] = ("tcp",)) -> int:
    """A port free for every protocol in `protos`, released for qemu to bind. It is drawn
    below the kernel's ephemeral range: a port 0 bind would hand out one that the next
    outgoing connection or port-0 server on this host may take before qemu binds it."""
    kinds = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}
    low = min(_ephemeral_low(), 65536)
    for _ in range(200):
        port = secrets.randbelow(low - 10000) + 10000 if low > 11000 else 0
        with contextlib.ExitStack() as stack:
            try:
                for proto in protos:
                    sock = stack.enter_context(socket.socket(socket.AF_INET, kinds[proto]))
                    sock.bind((host, port))
                    port = sock.getsockname()[1]
            except OSError:
                continue
            return port
    raise QemuError(f"no free port on {host}")


def _ephemeral_low(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def bind_forwards(forwards: list[Forward]) -> list[Forward]:
    """Port 0 becomes a free port; the same host port for UDP and TCP stays the same."""
    chosen: dict[tuple[str, int], int] = {}
    out = []
    for f in forwards:
        if f.port == 0:
            key = (f.host, f.guest_port)
            if key not in chosen:
                protos = tuple(
                    sorted(
                        {g.proto for g in forwards if (g.host, g.guest_port) == key and g.port == 0}
                    )
                )
                chosen[key] = free_port(f.host, protos)
            f = Forward(f.proto, f.host, chosen[key], f.guest_port)
        out.append(f)
    return out


def _overlap(a: Forward, b: Forward) -> bool:
    wild = "0.0.0.0"
    return (a.proto, a.port) == (b.proto, b.port) and (a.host == b.host or wild in (a.host, b.host))


def forward_problem(forwards: Sequence[Forward]) -> str | None:
    """What keeps these forwards from being made, in one line, before passt or qemu
    starts: a host port named twice, or one another program holds. passt said so in its
    own words ("Overlapping port specifier", "Failed to bind any port"); qemu's user
    networking said it after the boot's first lines, in several of its own, and the run
    ended as "The guest stopped by itself"."""
    for i, a in enumerate(forwards):
        for b in forwards[:i]:
            if a.port and _overlap(a, b):
                return (
                    f"{a.proto} port {a.port} is forwarded twice (to guest ports"
                    f" {b.guest_port} and {a.guest_port}): forward one of them from another port"
                )
    for f in forwards:
        why = _bind_problem(f) if f.port else None
        if why is not None:
            return why
    return None


def _bind_problem(f: Forward) -> str | None:
    exc = bind_error(f.proto, socket.AF_INET, (f.host, f.port))
    if exc is None:
        return None
    where = f"{f.proto} {f.host}:{f.port} (to guest port {f.guest_port})"
    other = f"forward another port to guest port {f.guest_port}"
    if exc.errno == errno.EADDRINUSE:
        return f"{where} is in use by another program: free it, or {other}"
    if exc.errno == errno.EACCES:
        return f"{where}: port {f.port} needs root or CAP_NET_BIND_SERVICE, or {other}"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{where}: {f.host} is not an address of this host"
    return f"{where} cannot be forwarded: {exc.strerror}"


def qemu_binary() -> str:
    found = shutil.which(QEMU)
    if found is None:
        raise QemuError(
            f"{QEMU} not found: apt-get install --no-install-recommends qemu-system-x86"
        )
    return found


# Under emulation the kernel spends about 0.4 s timing itself: the delay-loop calibration
# (lpj= skips it; delays use the TSC once it is up, so the figure need not be exact) and
# a check of the local APIC timer that fails on qemu's emulated one anyway, after which
# the kernel ticks from the PIT (noapictimer goes there at once).
TCG_ARGS = "lpj=1000000 noapictimer"


def kernel_args(machine: str, accel: str = "tcg") -> str:
    base = "console=ttyS0 quiet panic=-1"
    if accel == "tcg":
        base = f"{base} {TCG_ARGS}"
    if machine == "microvm":
        # no ACPI: qemu names the virtio-mmio devices on the command line; a triple fault
        # is microvm's reset (it has no keyboard controller), and the PIT times the TSC
        return f"{base} acpi=off reboot=t"
    return base


def argv(
    machine: str,
    kernel: Path,
    initramfs: Path | None,
    *,
    memory_mb: int,
    accel: str,
    forwards: Sequence[Forward] = (),
    disks: Sequence[tuple[Path, bool]] = (),
    console_log: Path | None = None,
    append: str = "",
    passt: Path | None = None,
) -> list[str]:
    """The command line: no defaults, no reboot (a guest reset ends qemu), serial on stdio;
    the network through passt's socket when given, else qemu's user networking, which
    makes the forwards itself."""
    microvm = machine == "microvm"
    suffix = "device" if microvm else "pci"
    chardev = "stdio,id=con,signal=off"
    if console_log is not None:
        chardev += f",logfile={console_log},logappend=on"
    args = [
        qemu_binary(),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-M",
        "microvm,pit=on,rtc=on,acpi=off" if microvm else "pc",
        "-accel",
        accel,
        "-m",
        f"{memory_mb}M",
        "-smp",
        "1",
        "-chardev",
        chardev,
        "-serial",
        "chardev:con",
        "-kernel",
        str(kernel),
        "-append",
        f"{kernel_args(machine, accel)} {append}".strip(),
    ]
    if initramfs is not None:
        args += ["-initrd", str(initramfs)]
    if passt is not None:  # passt makes the forwards
        netdev = f"stream,id=net0,server=off,addr.type=unix,addr.path={passt}"
    else:
        fwd = "".join(f",hostfwd={f.proto}:{f.host}:{f.port}-:{f.guest_port}" for f in forwards)
        netdev = f"user,id=net0{fwd}"
    rom = "" if microvm else ",romfile="
    args += ["-netdev", netdev, "-device", f"virtio-net-{suffix},netdev=net0{rom}"]
    args += [
        "-object",
        "rng-random,id=rng0,filename=/dev/urandom",
        "-device",
        f"virtio-rng-{suffix},rng=rng0",
    ]
    for number, (path, readonly) in enumerate(disks):
        # a write the host cannot make (its disk full) is the guest's I/O error, which the
        # guest reports and lives through: qemu's default pauses the guest without a word
        ro = ",readonly=on" if readonly else ",werror=report,rerror=report"
        args += [
            "-drive",
            f"file={path},if=none,id=disk{number},format=raw{ro}",
            "-device",
            f"virtio-blk-{suffix},drive=disk{number}",
        ]
    return args


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def accel(kernel: Path, machine: str) -> str:
    """`kvm` if a timed boot of this kernel under KVM reaches its first panic, else `tcg`.

    /dev/kvm can exist and still not run a guest (a paravirtual KVM that hangs stock
    kernels): only a real boot tells. The verdict is kept until the host reboots.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    digest = hashlib.sha256(kernel.read_bytes()).hexdigest()[:16]
    verdict = cache_dir() / "accel" / f"{_boot_id()}-{digest}"
    if verdict.exists():
        return verdict.read_text().strip()
    args = argv(machine, kernel, None, memory_mb=64, accel="kvm")
    try:
        done = subprocess.run(
            args,
            capture_output=True,
            timeout=KVM_PROBE_SECONDS,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        works = b"Kernel panic" in done.stdout
    except subprocess.TimeoutExpired:
        works = False
    result = "kvm" if works else "tcg"
    verdict.parent.mkdir(parents=True, exist_ok=True)
    verdict.write_text(result + "\n")
    return result
