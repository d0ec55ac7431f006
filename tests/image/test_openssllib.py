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
from retreatkit.image.elf import Elf, archive_symbols

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
