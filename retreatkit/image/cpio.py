"""The initramfs: an xz-compressed cpio "newc" archive written in Python, the same bytes each time.

Format: Documentation/driver-api/early-userspace/buffer-format.rst in the kernel tree.
Each entry is a 110-byte ASCII header (magic 070701, then thirteen 8-digit hex fields),
the NUL-terminated name padded to 4 bytes, the data padded to 4 bytes; a `TRAILER!!!`
entry ends the archive. Entries are written sorted, directories before their contents,
owned by root, with mtime 0 and inode numbers in order, so the same tree gives the same
bytes (reproducible builds).
"""

from __future__ import annotations

import io
import lzma
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MAGIC = b"070701"


@dataclass(frozen=True)
class Entry:
    mode: int  # file type and permission bits
    data: bytes = b""  # file contents, or a symlink's target
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device node


def file(data: bytes, executable: bool = False) -> Entry:
    return Entry(stat.S_IFREG | (0o755 if executable else 0o644), data)


def symlink(target: str) -> Entry:
    return Entry(stat.S_IFLNK | 0o777, target.encode())


def chardev(major: int, minor: int, mode: int = 0o600) -> Entry:
    return Entry(stat.S_IFCHR | mode, rdev=(major, minor))


def directory(mode: int = 0o755) -> Entry:
    return Entry(stat.S_IFDIR | mode)


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, entry: Entry, name: bytes) -> bytes:
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, *entry.rdev, len(name) + 1, 0)
    return MAGIC + b"".join(b"%08X" % f for f in fields)


def with_parents(tree: dict[str, Entry]) -> dict[str, Entry]:
    """`tree` plus a directory entry for every parent folder it lacks."""
    full = dict(tree)
    for path in tree:
        for parent in PurePosixPath(path).parents:
            if str(parent) not in (".", "/"):
                full.setdefault(str(parent), directory())
    return full


def archive(tree: dict[str, Entry]) -> bytes:
    """The uncompressed newc archive of `tree` (paths relative to the root, no leading /)."""
    out = io.BytesIO()
    # sorting by path components puts every directory before what it holds
    full = with_parents(tree)
    paths = sorted(full, key=lambda p: PurePosixPath(p).parts)
    for ino, path in enumerate(paths, start=1):
        entry = full[path]
        name = path.encode()
        out.write(_header(ino, entry, name) + name + b"\0")
        out.write(_pad(110 + len(name) + 1))
        out.write(entry.data + _pad(len(entry.data)))
    trailer = b"TRAILER!!!"
    out.write(_header(0, Entry(0), trailer) + trailer + b"\0")
    out.write(_pad(110 + len(trailer) + 1))
    return out.getvalue()


# xz with the x86 filter: the mirror's 22 MB archive is 7.77 MB, where zstd -19 gave 8.58 MB
# (and --ultra -22 under 0.1% less). The host unpacks it before each boot (`unpack`), so
# the guest never runs the slower decompressor. A kernel unpacking it itself allocates the
# whole dictionary in the guest's memory: 2 MiB costs 80 KB of image against 8 MiB, and
# leaves 6 MiB more to a 64 MB guest booted from it as it is. The kernel's decoder checks
# CRC32 or nothing (Documentation/staging/xz.rst).
XZ_FILTERS = (
    {"id": lzma.FILTER_X86},
    {"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": 2 << 20},
)


def initramfs(tree: dict[str, Entry]) -> bytes:
    """The archive of `tree`, xz-compressed as the kernel reads it."""
    return lzma.compress(
        archive(tree), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=list(XZ_FILTERS)
    )


class UnpackError(ValueError):
    """The initramfs does not unpack: the message says why."""


UNPACK_CHUNK = 1 << 20
# what a decoder may allocate: ours need 2 MiB of dictionary (the kernel's build, 32 MiB);
# a header asking for gigabytes is refused in one line, not a MemoryError
XZ_MEMLIMIT = 128 << 20


def unpack(compressed: Path, into: Path, limit: int) -> int:
    """The archive inside `compressed` (as `initramfs` made it) written to `into`, and any
    archives after it as they are (the kernel reads a series of them): the bytes written.

    What qemu hands the guest: under emulation the guest's kernel spent 1.1 s unpacking the
    mirror's 22 MB before /init ran, where the host takes a fraction of a second and the
    kernel then only copies the archive (0.3 s). More than `limit` bytes would not fit the
    guest's memory: refused as soon as they are seen, and `into` left empty, so no stream
    fills the host's disk.
    """
    with compressed.open("rb") as source, into.open("wb") as out:
        try:
            return _unpack(source, out, limit)
        except UnpackError:
            out.truncate(0)
            raise


def _unpack(source: io.BufferedReader, out: io.BufferedWriter, limit: int) -> int:
    unxz = lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=XZ_MEMLIMIT)
    total = read = 0
    try:
        while not unxz.eof:
            chunk = b""
            if unxz.needs_input:
                chunk = source.read(UNPACK_CHUNK)
                if not chunk:
                    break
                read += len(chunk)
            data = unxz.decompress(chunk, UNPACK_CHUNK)  # bounded: a small file can say a lot
            total += len(data)
            if total > limit:
                raise UnpackError("unpacks to more than the guest's memory")
            out.write(data)
    except lzma.LZMAError as exc:
        raise UnpackError(f"does not unpack ({exc})") from None
    if not unxz.eof:  # a stream cut short (xz checks each block's CRC32 and its index)
        raise UnpackError(f"does not unpack (it ends after {total} bytes, cut short)")
    rest = unxz.unused_data
    stream_end = read - len(rest)
    rest = rest or source.read(UNPACK_CHUNK)  # the stream may end where a read did
    # the kernel takes an archive only at an offset that is a multiple of 4 (a series pads
    # with zeros between archives, which it skips): where the stream ended, mod 4
    rest = bytes((stream_end - total) % 4) + rest if rest else rest
    while rest:
        total += len(rest)
        if total > limit:
            raise UnpackError("unpacks to more than the guest's memory")
        out.write(rest)
        rest = source.read(UNPACK_CHUNK)
    return total
