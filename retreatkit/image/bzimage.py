"""The kernel inside a bzImage, for qemu to start directly (PVH) instead of the bzImage's
own decompressor.

Under emulation our kernel spent 0.2 s unpacking itself before its first line; the host
does it in milliseconds. qemu starts an ELF kernel at the entry its PVH note names (the x86
HVM direct boot ABI, which our kernel's CONFIG_PVH gives it). Layout: the kernel's x86
boot protocol (Documentation/x86/boot.rst): the setup header at 0x1f1, `payload_offset`
and `payload_length` (protocol 2.08) locating the compressed kernel after the setup
sectors; the compressed data ends with its uncompressed size (4 bytes, little-endian).
"""

from __future__ import annotations

import lzma
import struct
from pathlib import Path

from retreatkit.image import cpio
from retreatkit.image.elf import Elf, ElfError

HEADER_MAGIC_AT, HEADER_MAGIC = 0x202, b"HdrS"
PAYLOAD_AT = 0x248  # payload_offset, payload_length (u32 each)
XZ_MAGIC = b"\xfd7zXZ\x00"
XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point qemu starts the kernel at
KERNEL_MAX = 64 << 20  # our kernel unpacks to 14 MB; a payload past this is not ours


def payload(bzimage: bytes) -> bytes | None:
    """The compressed kernel a bzImage carries, or None if this is no bzImage we know."""
    if bzimage[HEADER_MAGIC_AT : HEADER_MAGIC_AT + 4] != HEADER_MAGIC:
        return None
    (version,) = struct.unpack_from("<H", bzimage, 0x206)
    if version < 0x208 or len(bzimage) < PAYLOAD_AT + 8:
        return None
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, PAYLOAD_AT)
    start = (setup_sects + 1) * 512 + offset
    if start + length > len(bzimage):
        return None
    return bzimage[start : start + length]


def unxz(data: bytes) -> bytes | None:
    """A kernel payload compressed with xz (CONFIG_KERNEL_XZ), uncompressed: None if it is
    not, or if it does not unpack to the size it ends with."""
    if not data.startswith(XZ_MAGIC) or len(data) < 8:
        return None
    (size,) = struct.unpack("<I", data[-4:])
    if size > KERNEL_MAX:
        return None
    unpacker = lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=cpio.XZ_MEMLIMIT)
    try:
        out = unpacker.decompress(data[:-4], size + 1)  # one byte more shows a lie
    except lzma.LZMAError:
        return None
    return out if unpacker.eof and len(out) == size else None


def starts_direct(kernel: bytes) -> bool:
    """An ELF kernel qemu can start at its PVH entry."""
    try:
        return any(
            name == "Xen" and kind == XEN_ELFNOTE_PHYS32_ENTRY
            for name, kind, _ in Elf(kernel, "the kernel").notes()
        )
    except (ElfError, struct.error, ValueError):
        return False


def direct_kernel(bzimage: Path, into: Path) -> bool:
    """Write the kernel inside `bzimage` to `into` if qemu can start it directly; False
    (nothing written) if not: Debian's kernel (LZ4), or ours built without CONFIG_PVH."""
    packed = payload(bzimage.read_bytes())
    kernel = unxz(packed) if packed is not None else None
    if kernel is None or not starts_direct(kernel):
        return False
    into.write_bytes(kernel)
    return True
