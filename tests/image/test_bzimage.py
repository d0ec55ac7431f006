"""The kernel inside a bzImage, taken out for qemu to start at its PVH entry."""

from __future__ import annotations

import lzma
import struct
from pathlib import Path

from retreatkit.image import bzimage
from retreatkit.image.elf import Elf


def elf_with_notes(*notes: tuple[bytes, int, bytes]) -> bytes:
    """A 64-bit ELF file holding one PT_NOTE segment of `notes` (owner, type, desc)."""
    body = b""
    for owner, kind, desc in notes:
        name = owner + b"\0"
        body += struct.pack("<III", len(name), len(desc), kind)
        body += name + bytes(-len(name) % 4) + desc + bytes(-len(desc) % 4)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<QQ", header, 0x20, 64, 0)  # program headers right after; no sections
    struct.pack_into("<HHHHH", header, 0x36, 56, 1, 64, 0, 0)
    segment = struct.pack("<IIQQQQQQ", 4, 4, 64 + 56, 0, 0, len(body), len(body), 4)
    return bytes(header) + segment + body


PVH = (b"Xen", bzimage.XEN_ELFNOTE_PHYS32_ENTRY, struct.pack("<Q", 0x1000480))


def make_bzimage(payload: bytes, setup_sects: int = 3, version: int = 0x20F) -> bytes:
    """A bzImage as the boot protocol lays it out: setup sectors, then the compressed
    kernel at payload_offset within the protected-mode part."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    offset = 0x300  # the decompressor's own code comes first
    struct.pack_into("<II", setup, 0x248, offset, len(payload))
    return bytes(setup) + bytes(offset) + payload + bytes(100)


def packed(kernel: bytes) -> bytes:
    """As the kernel's build compresses it (scripts/xz_wrap.sh): an xz stream with the x86
    filter and CRC32 checks, then the size (4 bytes, LE)."""
    filters = [{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2}]
    xz = lzma.compress(kernel, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=filters)
    return xz + struct.pack("<I", len(kernel))


def test_a_kernel_with_a_pvh_entry_is_taken_out_whole(tmp_path: Path) -> None:
    kernel = elf_with_notes((b"GNU", 3, bytes(20)), PVH)
    image = tmp_path / "kernel"
    image.write_bytes(make_bzimage(packed(kernel)))
    assert bzimage.direct_kernel(image, tmp_path / "vmlinux")
    assert (tmp_path / "vmlinux").read_bytes() == kernel
    assert (b"Xen", 18) in [(n.encode(), k) for n, k, _ in Elf(kernel).notes()]


def test_what_qemu_cannot_start_directly_stays_a_bzimage(tmp_path: Path) -> None:
    without_pvh = elf_with_notes((b"GNU", 3, bytes(20)), (b"Linux", 1, b"\0"))
    whole = packed(elf_with_notes(PVH))
    cases = {
        "no PVH entry (built without CONFIG_PVH)": make_bzimage(packed(without_pvh)),
        "LZ4, as Debian's kernel": make_bzimage(b"\x02\x21\x4c\x18" + bytes(64)),
        "zstd, as ours was": make_bzimage(b"\x28\xb5\x2f\xfd" + bytes(64)),
        "a size past any kernel of ours": make_bzimage(whole[:-4] + struct.pack("<I", 1 << 30)),
        "cut short": make_bzimage(whole[: len(whole) // 2] + whole[-4:]),
        "a size that is not what it unpacks to": make_bzimage(whole[:-4] + b"\x01\0\0\0"),
        "boot protocol before 2.08": make_bzimage(whole, version=0x207),
        "no boot header": bytes(4096),
        "payload past the end": make_bzimage(whole)[:1500],
        "not an ELF inside": make_bzimage(packed(b"MZ" + bytes(200))),
    }
    for why, data in cases.items():
        (tmp_path / "kernel").write_bytes(data)
        out = tmp_path / "vmlinux"
        assert not bzimage.direct_kernel(tmp_path / "kernel", out), why
        assert not out.exists(), why
