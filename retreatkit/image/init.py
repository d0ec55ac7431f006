"""PID 1 of a guest: set up the machine, run the one service, shut down cleanly.

No shell, no busybox: the kernel starts `/init`, a two-line script for the guest's
Python, which calls `main()` here. Mount, module loading, the network and the reboot
are system calls made through ctypes; the network uses the classic ioctls (netdevice(7),
route(4)). Whatever happens, the guest ends by a reboot, which qemu (run with
-no-reboot) turns into its own exit: whoever runs qemu decides whether to boot it again.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import struct
import sys
from pathlib import Path

from retreatkit.image import guestconfig
from retreatkit.image import spec as specs

SYS_FINIT_MODULE = 313  # x86_64
LINUX_REBOOT_CMD_RESTART = 0x01234567
LINUX_REBOOT_CMD_CAD_OFF = 0
MS_NOATIME = 1024
SIOCSIFADDR, SIOCSIFNETMASK, SIOCSIFFLAGS, SIOCADDRT = 0x8916, 0x891C, 0x8914, 0x890B
IFF_UP, IFF_RUNNING = 0x1, 0x40
RTF_UP, RTF_GATEWAY = 0x1, 0x2
CONFIG_DISK, DATA_DISK = "/dev/vda", "/dev/vdb"
MODULES = Path("/lib/modules")  # a Debian kernel's modules, in load order (see build)

libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source: str, target: str, fstype: str, flags: int = 0) -> None:
    Path(target).mkdir(parents=True, exist_ok=True)
    _check(libc.mount(source.encode(), target.encode(), fstype.encode(), flags, None), target)


def load_modules() -> None:
    order = MODULES / "order"
    if not order.exists():
        return  # our own kernel has every driver built in
    for name in order.read_text().split():
        fd = os.open(MODULES / name, os.O_RDONLY)
        try:
            if libc.syscall(SYS_FINIT_MODULE, fd, b"", 0) != 0:
                errno = ctypes.get_errno()
                if errno != 17:  # EEXIST: built in after all
                    raise OSError(errno, f"loading {name}: {os.strerror(errno)}")
        finally:
            os.close(fd)


def _ifreq(name: str, payload: bytes) -> bytes:
    return struct.pack("16s", name.encode()) + payload.ljust(24, b"\0")


def _sockaddr(address: str) -> bytes:
    return struct.pack("=H2s4s8s", socket.AF_INET, b"", socket.inet_aton(address), b"")


def network() -> None:
    """lo up, eth0 at qemu user networking's fixed address, default route via its gateway."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, SIOCSIFFLAGS, _ifreq("lo", struct.pack("H", IFF_UP | IFF_RUNNING)))
        fcntl.ioctl(s, SIOCSIFADDR, _ifreq("eth0", _sockaddr(specs.GUEST_ADDRESS)))
        fcntl.ioctl(s, SIOCSIFNETMASK, _ifreq("eth0", _sockaddr(specs.GUEST_NETMASK)))
        fcntl.ioctl(s, SIOCSIFFLAGS, _ifreq("eth0", struct.pack("H", IFF_UP | IFF_RUNNING)))
        # struct rtentry: pad, dst, gateway, genmask, flags, then fields left zero
        route = struct.pack(
            "@L16s16s16sH",
            0,
            _sockaddr("0.0.0.0"),
            _sockaddr(specs.HOST_FROM_GUEST),
            _sockaddr("0.0.0.0"),
            RTF_UP | RTF_GATEWAY,
        )
        fcntl.ioctl(s, SIOCADDRT, route.ljust(120, b"\0"))
        # passt learns the guest's hardware address from the guest's first frame, and
        # until then cannot bring it a client's: a datagram to the discard port (RFC 863)
        # has the kernel ask for the gateway's address at once. qemu's own network drops it
        with contextlib.suppress(OSError):
            s.sendto(b"", (specs.HOST_FROM_GUEST, 9))
    Path("/etc").mkdir(exist_ok=True)
    Path("/etc/resolv.conf").write_text(f"nameserver {specs.DNS_FROM_GUEST}\n")
    Path("/etc/hosts").write_text("127.0.0.1 localhost\n")


WATERMARK_BOOST = Path("/proc/sys/vm/watermark_boost_factor")


def no_watermark_boost() -> None:
    """After memory of one kind had to be taken from another's blocks, the kernel raises
    its free-memory watermarks for a while (by up to 150%, 4 MB of a 64 MB guest) to
    defragment. Our guest's files are an initramfs it can never evict: with the mirror's
    heap, the boosted minimum was more than could be freed, and the kernel panicked
    ("System is deadlocked on memory") in about one boot in seven at 64 MB. One process
    has nothing to defragment for."""
    try:
        WATERMARK_BOOST.write_text("0")
    except OSError as exc:  # a kernel without /proc/sys boots as before, nearer its floor
        print(f"retreatkit: watermark boost left on: {exc.strerror}", file=sys.stderr)


def boot() -> guestconfig.GuestConfig:
    mount("proc", "/proc", "proc")
    mount("sysfs", "/sys", "sysfs")
    mount("devtmpfs", "/dev", "devtmpfs")
    no_watermark_boost()
    libc.reboot(LINUX_REBOOT_CMD_CAD_OFF)  # Ctrl-Alt-Del becomes SIGINT: a clean stop
    load_modules()
    network()
    with open(CONFIG_DISK, "rb") as disk:
        doc = guestconfig.read(disk)
    files = Path(specs.FILES_DIR)
    files.mkdir(parents=True, exist_ok=True)
    for name, data in doc.files.items():
        (files / name).write_bytes(data)
    if Path(DATA_DISK).exists():
        mount(DATA_DISK, specs.DATA_MOUNT, "ext4", MS_NOATIME)
    return doc


def shutdown() -> None:
    """Everything written reaches the disk, the disk is unmounted, then the machine resets."""
    os.sync()
    if os.path.ismount(specs.DATA_MOUNT):
        if libc.umount2(specs.DATA_MOUNT.encode(), 0) == 0:
            print("retreatkit: data disk unmounted cleanly", file=sys.stderr, flush=True)
        else:
            print("retreatkit: data disk still busy; synced only", file=sys.stderr, flush=True)
    libc.reboot(LINUX_REBOOT_CMD_RESTART)


def main() -> None:
    code = 1
    try:
        doc = boot()
        from retreatkit.image import standins

        # before the service's imports bring prometheus_client (and aiohttp)
        standins.load(specs.spec(doc.service).first)
        from retreatkit.image import guest

        code = guest.run(doc.service, doc.config, doc.token)
    except BaseException as exc:
        import traceback  # only a failing guest needs it

        traceback.print_exc()
        print(f"retreatkit: the guest failed: {exc}", file=sys.stderr, flush=True)
    finally:
        print(f"retreatkit: guest stopping (exit code {code})", file=sys.stderr, flush=True)
        shutdown()
