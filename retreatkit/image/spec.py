"""What each service image holds and exposes: its ports, disk, and what it leaves out."""

from __future__ import annotations

import os
from dataclasses import dataclass

from retreatkit.image import standins

KERNELS = ("auto", "own", "debian")  # [images] kernel: ours when built, ours, Debian's cloud
ADMIN_PORT = 8080  # the admin endpoint inside every guest
STOP_COMMAND = "shutdown"  # a line on the guest's console: the host asks for a clean stop
DATA_MOUNT = "/var/lib/retreatkit"  # where the guest mounts its data disk
FILES_DIR = "/etc/retreatkit/files"  # files the configuration carries (blocklists)
# qemu's user networking (slirp): the guest's address, and the host's loopback and
# resolver as the guest reaches them
GUEST_ADDRESS = "10.0.2.15"
GUEST_NETMASK = "255.255.255.0"
HOST_FROM_GUEST = "10.0.2.2"
DNS_FROM_GUEST = "10.0.2.3"

# The least guest memory an image runs in: the relay and the nameserver up in full (their
# admin endpoint answering too) in 56 MB, ten boots in ten each; in 48 they answer, then
# panic out of memory as their admin endpoint loads after the first answer, every time.
# The mirror runs in 64. When the mirror's files took 22 MB (held in memory: the initramfs
# is its root), they and its interpreter's 22 MB left the kernel little: in 60 MB it ran out
# of memory at its start and panicked ("System is deadlocked on memory") every time, and in
# 64 in 4 boots of 28 on one day (none of 30 on another) while the kernel's watermark boost
# could hold back 4 MB; /init turns that off (init.py), and 34 boots in 34 answered. Its
# files now take 17 MB and it starts in 56 (bench/images.py's floor), but 64 stays its
# least: that is where its downloads are tested (tests/e2e/test_images.py).
# Below 48 none even answers, each its own way: at 40 MB the kernel deadlocks on memory and
# panics, at 32 the initramfs does not unpack and the guest hangs, lower the kernel
# resets without a word, and at 1 MB qemu refuses the initramfs. So less is refused
# before anything starts.
LEAST_MEMORY_MB = 56
LEAST_BY_SERVICE = {"mirror": 64}  # above the least of all: refused below it by name


def host_memory_mb() -> int:
    """This host's physical memory, in MB."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20


def memory_problem(
    memory_mb: object, given_as: str, service: str | None = None, *, bounded: bool = True
) -> str | None:
    """Why guest memory `memory_mb` (given as `given_as`) cannot boot, in one line; with
    `service` (when the image is known), against that image's own floor; `bounded`, also
    against this host's memory."""
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int):
        return f"{given_as} {memory_mb!r:.20}: guest memory is a whole number of MB"
    if memory_mb < LEAST_MEMORY_MB:
        return (
            f"{given_as} {memory_mb}: a guest needs at least {LEAST_MEMORY_MB} MB"
            " (no image runs in less)"
        )
    # A guest's memory comes from the host's: more than the host has is a slip (bytes or
    # KB given as MB), which qemu refused in three lines of its own, the last shown alone
    if bounded and memory_mb > (most := host_memory_mb()):
        shown = str(memory_mb)  # argparse, json and TOML refuse ints of over 4300 digits
        shown = shown if len(shown) <= 24 else shown[:21] + "..."
        return f"{given_as} {shown}: more than this host's {most} MB of memory"
    least = LEAST_BY_SERVICE.get(service or "", LEAST_MEMORY_MB)
    if memory_mb < least:
        return (
            f"{given_as} {memory_mb}: the {service} image needs at least {least} MB"
            " (in less it runs out of memory as it starts)"
        )
    return None


@dataclass(frozen=True)
class Spec:
    service: str
    ports: tuple[tuple[str, int], ...]  # (protocol, port in the guest)
    disk: bool = False  # keeps data on a virtio-blk disk
    tls: bool = False  # talks to HTTPS upstreams: ships ssl and CA certificates
    leave_out: tuple[str, ...] = ()  # modules the guest never imports, even if allowed to
    whole: tuple[str, ...] = ()  # packages shipped whole: they import parts of themselves late
    first: tuple[str, ...] = ()  # imported before it answers, beside stand-ins (standins.py)
    deflate: bool = False  # the Python zip deflated: 3 MB less guest RAM, 0.44 MB more image
    # packages whose __init__ imports each name when first read (image/lazyinit.py)
    lazy: tuple[str, ...] = ()

    @property
    def tcp_port(self) -> int:
        return next(port for proto, port in self.ports if proto == "tcp")


# Images without TLS leave out ssl and OpenSSL (libcrypto alone is 4.7 MB); prometheus_client
# gets a stand-in (image/standins.py). uvloop's speed matters little to a guest with one
# virtual CPU and costs 1.6 MB: the guest runs the stdlib loop.
# frozenlist's C++ extension would bring libstdc++; its pure-Python twin serves. The
# compressors and uuid's C part bring libraries nothing here uses (imports of them are
# guarded where the standard library makes them).
# aiohttp's websocket reader has a pure-Python twin too, and no guest speaks websocket.
COMMON_LEAVE_OUT = (
    "uvloop",
    "zeroconf",
    "textual",
    "rich",
    "cryptography",
    "spake2",
    "frozenlist._frozenlist",
    "bz2",
    "_bz2",
    "lzma",
    "_lzma",
    "_uuid",
    "aiohttp._websocket.reader_c",
    "aiohttp._websocket.mask",
)
NO_TLS_LEAVE_OUT = COMMON_LEAVE_OUT + standins.LEFT_OUT
# The mirror reads apt's Packages.xz and .bz2 indexes: it keeps the compressors.
# aiohttp's C parser and writer, and multidict's, yarl's and propcache's C parts, have
# pure-Python twins each package falls back to. As .so files they are 1.5 MB of the
# guest's memory (the most a 64 MB mirror can spare) and 0.06 MB of its image.
MIRROR_LEAVE_OUT = (
    *(m for m in COMMON_LEAVE_OUT if m not in ("bz2", "_bz2", "lzma", "_lzma")),
    "aiohttp._http_parser",
    "aiohttp._http_writer",
    "multidict._multidict",
    "yarl._quoting_c",
    "propcache._helpers_c",
)
SPECS = {
    "relay": Spec("relay", (("tcp", 9000),), leave_out=NO_TLS_LEAVE_OUT),
    "mirror": Spec(
        "mirror",
        (("tcp", 8000),),
        disk=True,
        tls=True,
        leave_out=MIRROR_LEAVE_OUT,
        # its server imported before it answers; aiohttp's client (sessions, connectors)
        # only once the mirror makes its upstream session, after its first answers
        first=("aiohttp.web",),
        lazy=("aiohttp",),
        # stored, the zip is 0.5 MB less image and 3.3 MB more memory: in 64 MB the guest
        # then panicked out of memory at its first download, once in five
        deflate=True,
    ),
    # dnspython imports the class of each record type when it first meets one
    "nameserver": Spec(
        "nameserver",
        (("udp", 53), ("tcp", 53)),
        leave_out=NO_TLS_LEAVE_OUT,
        whole=("dns.rdtypes",),
        first=("dns._features",),
    ),
}


def spec(service: str) -> Spec:
    try:
        return SPECS[service]
    except KeyError:
        raise ValueError(f"no image for {service!r}; one of {', '.join(SPECS)}") from None
