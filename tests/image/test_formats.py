"""The image builder's formats, in process: cpio newc, ELF, .deb, the guest configuration."""

from __future__ import annotations

import io
import ipaddress
import lzma
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retreatkit.image import cpio, debs, guestconfig, payload
from retreatkit.image.elf import Elf, ElfError
from retreatkit.image.sysroot import resolve_in


def read_newc(data: bytes) -> dict[str, cpio.Entry]:
    """An independent reader of what the kernel unpacks (buffer-format.rst)."""
    out: dict[str, cpio.Entry] = {}
    at = 0
    while True:
        assert data[at : at + 6] == b"070701"
        fields = [int(data[at + 6 + 8 * i : at + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, namesize = fields[1], fields[6], (fields[9], fields[10]), fields[11]
        name = data[at + 110 : at + 110 + namesize - 1].decode()
        at += 110 + namesize
        at += -at % 4
        body = data[at : at + size]
        at += size + (-size % 4)
        if name == "TRAILER!!!":
            return out
        out[name] = cpio.Entry(mode, body, rdev)


names = st.lists(
    st.text(alphabet="abcdefgh-_.", min_size=1, max_size=8).filter(lambda s: s not in (".", "..")),
    min_size=1,
    max_size=3,
).map("/".join)


@given(st.dictionaries(names, st.binary(max_size=300), max_size=12))
def test_archive_reads_back_with_every_parent(files: dict[str, bytes]) -> None:
    # a file may not also be another file's folder
    tree = {
        p: cpio.file(d) for p, d in files.items() if not any(q.startswith(p + "/") for q in files)
    }
    back = read_newc(cpio.archive(tree))
    for path, entry in tree.items():
        assert back[path] == entry
        parent = path.rpartition("/")[0]
        if parent:
            assert stat.S_ISDIR(back[parent].mode)
    paths = list(back)
    for i, path in enumerate(paths):  # every folder before what it holds
        assert all(not path.startswith(later + "/") for later in paths[i + 1 :])


def test_same_tree_same_bytes_whatever_the_order() -> None:
    a = {"usr/bin/python3.11": cpio.file(b"\x7fELF", True), "init": cpio.file(b"#!x\n", True),
         "dev/console": cpio.chardev(5, 1), "lib64/ld.so": cpio.symlink("/lib/ld.so")}  # fmt: skip
    b = dict(reversed(list(a.items())))
    assert cpio.initramfs(a) == cpio.initramfs(b)
    packed = cpio.initramfs(a)
    # what the kernel's decoder takes: one xz stream, CRC32 checks (the kernel checks no
    # other), the x86 filter then LZMA2 with a 2 MiB dictionary (what it allocates)
    assert packed.startswith(b"\xfd7zXZ\x00\x00\x01")  # stream flags: CRC32
    block = packed[12:]
    assert block[1] == 0x01  # block flags: two filters, no sizes
    assert block[2:4] == b"\x04\x00"  # the x86 filter, no properties
    assert block[4:7] == b"\x21\x01\x12"  # LZMA2, dictionary 2 MiB (property 18)
    back = read_newc(lzma.decompress(packed))
    assert back["dev/console"].rdev == (5, 1)
    assert stat.S_ISCHR(back["dev/console"].mode)
    assert back["lib64/ld.so"] == cpio.symlink("/lib/ld.so")


def test_unpack_gives_qemu_the_archive_itself_and_refuses_what_is_not_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = {"init": cpio.file(b"#!x\n", True), "usr/lib/big": cpio.file(bytes(3 << 20))}
    tree_archive = cpio.archive(tree)
    packed = tmp_path / "initramfs"
    packed.write_bytes(cpio.initramfs(tree))
    out = tmp_path / "initramfs.cpio"
    assert cpio.unpack(packed, out, 8 << 20) == len(cpio.archive(tree))
    assert out.read_bytes() == cpio.archive(tree)
    with pytest.raises(cpio.UnpackError, match=r"^unpacks to more than the guest's memory$"):
        cpio.unpack(packed, out, 2 << 20)  # refused as it is seen, nothing left written
    assert out.stat().st_size == 0
    # an archive after it (a test's extra CA certificate) goes on as it is, for the kernel,
    # which takes one only at a multiple of 4 bytes: the zeros padding it there still do
    extra = cpio.archive({"etc/ssl/certs/x.0": cpio.file(b"pem")})
    # xz streams are whole multiples of 4; a stream ending elsewhere (another compressor's,
    # or one followed by a stray byte of padding the kernel skips) still needs care
    frame = cpio.initramfs(tree) + b"\0"
    padding = bytes(-len(frame) % 4)
    packed.write_bytes(frame + padding + extra)
    written = cpio.unpack(packed, out, 8 << 20)
    zeros = written - len(tree_archive) - len(extra)
    assert out.read_bytes() == tree_archive + bytes(zeros) + extra
    assert (len(tree_archive) + zeros) % 4 == 0
    with pytest.raises(cpio.UnpackError, match=r"^unpacks to more than the guest's memory$"):
        cpio.unpack(packed, out, written - 1)
    with monkeypatch.context() as m:  # the frame ends where a read ends: the rest still goes
        m.setattr(cpio, "UNPACK_CHUNK", len(frame))
        assert cpio.unpack(packed, out, 8 << 20) == written
    assert out.read_bytes().endswith(extra)
    packed.write_bytes(b"not xz at all")
    with pytest.raises(cpio.UnpackError, match=r"^does not unpack \(.+\)$"):
        cpio.unpack(packed, out, 8 << 20)
    whole = cpio.initramfs(tree)
    packed.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(
        cpio.UnpackError, match=r"^does not unpack \(it ends after \d+ bytes, cut sh"
    ):
        cpio.unpack(packed, out, 8 << 20)
    packed.write_bytes(b"")
    with pytest.raises(cpio.UnpackError, match=r"^does not unpack \(.+\)$"):
        cpio.unpack(packed, out, 8 << 20)
    # a header asking for a 3 GiB dictionary: refused, not a MemoryError where memory is
    # short (the decoder allocates what the header says)
    packed.write_bytes(huge_dictionary(cpio.archive(tree)))
    with pytest.raises(cpio.UnpackError, match=r"^does not unpack \(Memory usage limit"):
        cpio.unpack(packed, out, 8 << 20)


def huge_dictionary(data: bytes) -> bytes:
    """`data` in xz whose block header says its dictionary is 3 GiB (LZMA2 property 39)."""
    filters = [{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 20}]
    xz = bytearray(
        lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=filters)
    )
    at = xz.index(b"\x21\x01", 12) + 2  # the LZMA2 filter's one property byte
    xz[at] = 39
    end = 12 + (xz[12] + 1) * 4  # the block header, then its own CRC32
    xz[end - 4 : end] = struct.pack("<I", zlib.crc32(bytes(xz[12 : end - 4])))
    return bytes(xz)


def test_elf_reads_a_real_library() -> None:
    libc = next(
        Path(p)
        for p in ("/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6")
        if Path(p).exists()
    )
    elf = Elf.read(libc)
    assert elf.soname() == "libc.so.6"
    assert "ld-linux-x86-64.so.2" in elf.needed()
    with pytest.raises(ElfError, match="not a 64-bit little-endian ELF object"):
        Elf(b"#!/bin/sh\n" + b"\0" * 64, "script")


def ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return out


def tar_gz(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def deb(data: bytes) -> bytes:
    control = tar_gz(
        {"./control": b"Package: demo\nVersion: 1.0-1\nDepends: libc6 (>= 2.36), a | b\n"}
    )
    return ar({"debian-binary": b"2.0\n", "control.tar.gz": control, "data.tar.gz": data})


def test_deb_unpacks_in_python(tmp_path: Path) -> None:
    package = tmp_path / "demo_1.0-1_amd64.deb"
    package.write_bytes(deb(tar_gz({"./usr/lib/x/libdemo.so.1.0": b"lib"},
                                   {"./usr/lib/x/libdemo.so.1": "libdemo.so.1.0"})))  # fmt: skip
    fields = debs.control_fields(package)
    assert fields["Version"] == "1.0-1"
    assert debs.parse_depends(fields["Depends"]) == (("libc6",), ("a", "b"))
    debs.unpack(package, tmp_path / "tree")
    found = resolve_in(tmp_path / "tree", Path("/usr/lib/x/libdemo.so.1"))  # type: ignore[arg-type]
    assert found is not None and found.read_bytes() == b"lib"


def test_a_hostile_package_writes_nothing_outside(tmp_path: Path) -> None:
    package = tmp_path / "evil.deb"
    package.write_bytes(deb(tar_gz({"./../../outside": b"x"})))
    with pytest.raises(debs.PackageError, match="points outside the package"):
        debs.unpack(package, tmp_path / "tree")
    assert not (tmp_path / "outside").exists()


def test_symlinks_resolve_inside_the_tree_only(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "real.so").write_bytes(b"ok")
    (tmp_path / "lib" / "abs.so").symlink_to("/lib/real.so")  # absolute: from the tree's root
    (tmp_path / "lib" / "out.so").symlink_to("../../../../etc/passwd")
    assert resolve_in(tmp_path, Path("/lib/abs.so")) == tmp_path / "lib" / "real.so"  # type: ignore[arg-type]
    assert resolve_in(tmp_path, Path("/lib/out.so")) is None  # type: ignore[arg-type]


def test_guest_configuration_round_trip_and_bounds() -> None:
    doc = guestconfig.GuestConfig("relay", {"relay": {"listen": "0.0.0.0:9000"}}, "tok",
                                  {"0-block.txt": b"||ads.test^\n"})  # fmt: skip
    raw = doc.encode()
    assert len(raw) % 512 == 0
    assert guestconfig.read(io.BytesIO(raw)) == doc
    with pytest.raises(guestconfig.GuestConfigError, match="not a retreatkit guest configuration"):
        guestconfig.read(io.BytesIO(b"\0" * 512))
    evil = raw.replace(b'"0-block.txt"', b'"../evil.txt"')
    with pytest.raises(guestconfig.GuestConfigError, match="bad file name"):
        guestconfig.read(io.BytesIO(evil))


def test_render_reaches_the_hosts_loopback_and_carries_lists(tmp_path: Path) -> None:
    from retreatkit import config

    blocklist = tmp_path / "ads.txt"
    blocklist.write_text("ads.example.test\n")
    cfg = config.load(None)
    cfg["nameserver"].update(
        upstreams=["127.0.0.1:5353", "192.0.2.1"],
        blocklists=[str(blocklist), "http://localhost:8000/lists/x"],
        mirror="http://127.0.0.1:8000",
    )
    doc = guestconfig.render("nameserver", cfg, "tok", disk=False)
    section = doc.config["nameserver"]
    assert section["listen"] == "0.0.0.0:53"
    assert section["upstreams"] == ["10.0.2.2:5353", "192.0.2.1:53"]
    assert section["blocklists"] == [
        "/etc/retreatkit/files/0-ads.txt",
        "http://10.0.2.2:8000/lists/x",
    ]
    assert section["mirror"] == "http://10.0.2.2:8000"
    assert doc.files == {"0-ads.txt": b"ads.example.test\n"}
    assert doc.config["admin"]["listen"] == "0.0.0.0:8080"
    cfg["nameserver"]["upstreams"] = []
    assert guestconfig.render("nameserver", cfg, "t", False).config["nameserver"]["upstreams"] == [
        "10.0.2.3:53"  # qemu's own resolver, which asks the host's
    ]
    cfg["nameserver"]["blocklists"] = [str(tmp_path / "missing.txt")]
    with pytest.raises(guestconfig.GuestConfigError, match=r"cannot read blocklist .*missing\.txt"):
        guestconfig.render("nameserver", cfg, "t", False)


def test_render_looks_the_nameservers_upstream_names_up_on_the_host() -> None:
    """As the nameserver on the host would: names only the host knows work in the guest,
    one on the host's loopback is 10.0.2.2, and no boot waits on a query through qemu's
    resolver. A name that does not resolve here now is left for the guest to look up."""
    from retreatkit import config

    here = socket.gethostname()
    try:
        found = socket.getaddrinfo(here, 53, socket.AF_INET, socket.SOCK_DGRAM)[0][4][0]
    except socket.gaierror:
        pytest.skip(f"this machine's host name {here!r} does not resolve")
    seen = "10.0.2.2" if ipaddress.ip_address(found).is_loopback else found
    cfg = config.load(None)
    cfg["nameserver"].update(
        upstreams=[f"{here}:5353", "bogus.invalid", "[2001:db8::1]:5300", "192.0.2.1"],
        forward={"corp.example": "localhost:5354", "lab.example": [here, "127.0.0.1"]},
    )
    section = guestconfig.render("nameserver", cfg, "t", False).config["nameserver"]
    assert section["upstreams"] == [
        f"{seen}:5353", "bogus.invalid:53", "[2001:db8::1]:5300", "192.0.2.1:53"
    ]  # fmt: skip
    assert section["forward"] == {
        "corp.example": "10.0.2.2:5354",
        "lab.example": [f"{seen}:53", "10.0.2.2:53"],
    }


def test_console_bytes_are_shown_not_obeyed() -> None:
    from retreatkit.image.run import printable, split_c1

    assert printable(b"ok\r\n\x1b]0;owned\x07\x1b[2J\tdone\r\n") == b"ok\n?]0;owned??[2J\tdone\n"
    assert printable("naïve\n".encode()) == "naïve\n".encode()
    # C1 controls, which some terminals obey (U+009B is CSI), written as UTF-8
    assert printable("\u009b2J\u0085x\u00a0€\n".encode()) == "?2J?x\u00a0€\n".encode()
    # one split between two reads waits for the next: the pair never goes out whole
    assert split_c1(b"ok \xc2") == (b"ok ", b"\xc2")
    out, held = split_c1(b"ok \xc2")
    assert printable(out) + printable(held + b"\x9b2J") == b"ok ?2J"
    assert split_c1("é€".encode()) == ("é€".encode(), b"")


@pytest.mark.parametrize("deflate", [False, True])
def test_the_python_zip_imports_stored_or_deflated(tmp_path: Path, deflate: bool) -> None:
    members = {"guestmod.py": b"ANSWER = 42\n" + b"# padding\n" * 200, "b/__init__.py": b""}
    data = payload.zipped(members, deflate)
    assert data == payload.zipped(dict(reversed(members.items())), deflate)  # same bytes
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        kinds = {i.compress_type for i in archive.infolist()}
    assert kinds == {zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED}
    (tmp_path / "python.zip").write_bytes(data)
    done = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
         "import guestmod, b; print(guestmod.ANSWER)", str(tmp_path / "python.zip")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == "42"
