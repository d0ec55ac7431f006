"""Our OpenSSL's pure parts: the version script, what the ELF reader finds of symbol versions
and archive indexes, which symbols an image's modules ask for, and when an image takes
Debian's libraries instead. The link itself and the guest's interpreter on it:
test_openssl_guest.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from retreatkit.image import debs, linking, openssllib
from retreatkit.image.elf import Elf, ElfError, archive_symbols

needs_gcc = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("gcc", "ar")), reason="gcc builds the test objects"
)

LIBRARY = "int a(void) { return 1; }\nint b(void) { return 2; }\nint c(void) { return 3; }\n"
LIBRARY_MAP = "LIB_1 {\n global: a;\n local: *;\n};\nLIB_2 {\n global: b;\n} LIB_1;\n"
EXTENSION = "int a(void); int b(void);\nint PyInit__ssl(void) { return a() + b(); }\n"


def test_a_version_script_gives_each_symbol_under_its_version_and_hides_the_rest() -> None:
    nodes = [("OPENSSL_3.0.0", None), ("OPENSSL_3.0.3", "OPENSSL_3.0.0"),
             ("OPENSSL_3.0.9", "OPENSSL_3.0.3")]  # fmt: skip
    versions = {"SSL_new": "OPENSSL_3.0.0", "OPENSSL_strcasecmp": "OPENSSL_3.0.3",
                "BIO_free": "OPENSSL_3.0.0"}  # fmt: skip
    assert openssllib.version_script(versions, nodes) == (
        "OPENSSL_3.0.0 {\n global:\n  BIO_free;\n  SSL_new;\n local: *;\n};\n"
        "OPENSSL_3.0.3 {\n global:\n  OPENSSL_strcasecmp;\n} OPENSSL_3.0.0;\n"
        # a version nothing asks for is still defined: an object may name it
        "OPENSSL_3.0.9 {\n} OPENSSL_3.0.3;\n"
    )


def _gcc(folder: Path, *args: str) -> None:
    subprocess.run(["gcc", *args], cwd=folder, check=True, capture_output=True)


@needs_gcc
def test_the_versions_an_object_defines_and_gives_its_symbols_under(tmp_path: Path) -> None:
    (tmp_path / "lib.c").write_text(LIBRARY)
    (tmp_path / "lib.map").write_text(LIBRARY_MAP)
    _gcc(tmp_path, "-shared", "-fPIC", "-Wl,-soname,libt.so.1", "-Wl,--version-script=lib.map",
         "lib.c", "-o", "libt.so.1")  # fmt: skip
    lib = Elf.read(tmp_path / "libt.so.1")
    assert lib.version_nodes() == [("LIB_1", None), ("LIB_2", "LIB_1")]
    # c is hidden; the versions' own symbols are not among what it gives
    assert lib.symbol_versions() == {"a": "LIB_1", "b": "LIB_2"}
    (tmp_path / "ext.c").write_text(EXTENSION)
    (tmp_path / "libt.so").symlink_to("libt.so.1")
    _gcc(tmp_path, "-shared", "-fPIC", "ext.c", "-o", "_ssl.so", "-L.", "-lt")
    ext = tmp_path / "_ssl.so"
    assert openssllib.wanted([ext], "libt.so.1", {"a", "b", "z"}) == {"a", "b"}
    assert openssllib.wanted([ext], "libother.so.1", {"a", "b"}) == set()
    # an executable made without versions defines none
    assert Elf.read(ext).version_nodes() == []
    assert Elf.read(ext).symbol_versions() == {}


@needs_gcc
def test_the_symbols_a_static_archives_index_says_it_defines(tmp_path: Path) -> None:
    (tmp_path / "one.c").write_text("int one(void) { return 1; }\nstatic int hidden;\n")
    (tmp_path / "two.c").write_text(
        "int two = 2;\nint one(void);\nint three(void) { return one(); }\n"
    )
    _gcc(tmp_path, "-c", "one.c", "two.c")
    subprocess.run(["ar", "rcs", "libx.a", "one.o", "two.o"], cwd=tmp_path, check=True)
    assert archive_symbols((tmp_path / "libx.a").read_bytes()) == {"one", "two", "three"}
    # `ar S`: no index, so nothing is known to be given
    subprocess.run(["ar", "rcS", "liby.a", "one.o"], cwd=tmp_path, check=True)
    assert archive_symbols((tmp_path / "liby.a").read_bytes()) == set()
    assert archive_symbols(b"not an archive") == set()


def test_an_image_takes_debians_openssl_when_relinking_cannot_be_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(name: str, version: str | None = None) -> debs.Package:
        raise debs.PackageError(f"apt-get download {name}={version} failed: no network")

    monkeypatch.setattr(debs, "package", offline)
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")
    package = debs.Package("libssl3", "3.0.22-1", tmp_path / "x.deb", (), tmp_path)
    paths = {soname: tmp_path / soname for soname in openssllib.SONAMES}
    chosen = openssllib.choose(package, paths, [])
    assert chosen.kind == "debian"
    assert chosen.paths == paths
    assert chosen.label == (
        "Debian libssl3 3.0.22-1 (relinking failed:"
        " apt-get download libssl-dev=3.0.22-1 failed: no network)"
    )
    assert chosen.identity() == {"kind": "debian", "label": chosen.label}


def test_without_gcc_an_image_takes_debians_openssl_and_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "ld" else tool)
    package = debs.Package("libssl3", "3.0.22-1", tmp_path / "x.deb", (), tmp_path)
    chosen = openssllib.choose(package, {}, [])
    assert chosen.label == "Debian libssl3 3.0.22-1 (no ld to relink it: apt-get install gcc)"
    assert linking.TOOLS == ("gcc", "ld")


def test_a_symbol_given_under_another_version_than_debians_is_a_gap() -> None:
    theirs = {"SSL_new": "OPENSSL_3.0.0", "OPENSSL_strcasecmp": "OPENSSL_3.0.3"}
    ours = {"SSL_new": "OPENSSL_3.0.0", "OPENSSL_strcasecmp": "OPENSSL_3.0.0"}
    assert openssllib.version_gaps(ours, theirs, {"SSL_new"}) == set()
    assert openssllib.version_gaps(ours, theirs, set(theirs)) == {"OPENSSL_strcasecmp"}
    assert openssllib.version_gaps({}, theirs, {"SSL_new"}) == {"SSL_new"}


def _ar_index(name: bytes, width: int, symbols: list[bytes]) -> bytes:
    """An archive holding only its index, as GNU ar writes one."""
    body = len(symbols).to_bytes(width, "big") + b"\0" * width * len(symbols)
    body += b"".join(s + b"\0" for s in symbols)
    header = name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) * 2 + b"0".ljust(8)
    return b"!<arch>\n" + header + str(len(body)).encode().ljust(10) + b"`\n" + body


def test_archive_indexes_of_both_widths_and_broken_ones() -> None:
    assert archive_symbols(_ar_index(b"/", 4, [b"one", b"two"])) == {"one", "two"}
    assert archive_symbols(_ar_index(b"/SYM64/", 8, [b"three"])) == {"three"}
    broken = _ar_index(b"/", 4, [b"one", b"two"])
    with pytest.raises(ElfError) as caught:
        archive_symbols(broken[:56] + b"twelve    " + broken[66:])
    assert str(caught.value) == "unreadable archive index (its size is not a number)"
    with pytest.raises(ElfError) as caught:
        archive_symbols(broken[:-8])  # cut inside its names
    assert str(caught.value) == "unreadable archive index (cut short)"


@needs_gcc
def test_symbol_versions_that_point_outside_the_file_are_an_elf_error(tmp_path: Path) -> None:
    (tmp_path / "lib.c").write_text(LIBRARY)
    (tmp_path / "lib.map").write_text(LIBRARY_MAP)
    _gcc(tmp_path, "-shared", "-fPIC", "-Wl,--version-script=lib.map", "lib.c", "-o", "l.so")
    lib = Elf.read(tmp_path / "l.so")
    verdef = next(s for s in lib.sections if s.name == ".gnu.version_d")
    data = bytearray(lib.data)
    data[verdef.offset + 12 : verdef.offset + 16] = (1 << 31).to_bytes(4, "little")  # vd_aux
    broken = Elf(bytes(data), "l.so")
    with pytest.raises(ElfError) as caught:
        broken.version_nodes()
    assert str(caught.value).startswith("l.so: unreadable symbol versions (")
    with pytest.raises(ElfError):
        broken.symbol_versions()


@needs_gcc
def test_a_link_that_fails_gives_debians_libraries_and_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libssl-dev's archives unreadable: the build goes on with Debian's, saying why."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "lib.c").write_text(LIBRARY)
    (tmp_path / "lib.map").write_text(LIBRARY_MAP)
    paths = {}
    for soname in openssllib.SONAMES:
        _gcc(tmp_path, "-shared", "-fPIC", f"-Wl,-soname,{soname}",
             "-Wl,--version-script=lib.map", "lib.c", "-o", soname)  # fmt: skip
        paths[soname] = tmp_path / soname
    dev = tmp_path / "dev"
    (dev / "usr" / "lib" / "x86_64-linux-gnu").mkdir(parents=True)
    for name in ("libssl.a", "libcrypto.a"):
        (dev / "usr" / "lib" / "x86_64-linux-gnu" / name).write_bytes(b"not an archive\n")

    def fetched(name: str, version: str | None = None) -> debs.Package:
        return debs.Package(name, version or "1", tmp_path / f"{name}.deb", (), dev)

    monkeypatch.setattr(debs, "package", fetched)
    package = debs.Package("libssl3", "3.0.22-1", tmp_path / "libssl3.deb", (), tmp_path)
    chosen = openssllib.choose(package, paths, [])
    assert chosen.kind == "debian"
    assert chosen.label.startswith(
        "Debian libssl3 3.0.22-1 (relinking failed: linking libssl.so.3 failed: "
    )
    assert "\n" not in chosen.label
    # a Debian library that is not ELF: the same, not a traceback
    (tmp_path / "libssl.so.3").write_bytes(b"#!/bin/sh\n")
    chosen = openssllib.choose(package, paths, [])
    assert chosen.label == (
        f"Debian libssl3 3.0.22-1 (relinking failed: {tmp_path / 'libssl.so.3'}"
        " is not a 64-bit little-endian ELF object)"
    )
