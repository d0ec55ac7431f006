"""Our SQLite's pure parts: which symbols it must give, which archives its source comes from,
and when an image takes Debian's library instead. The build itself and the guest's
interpreter on it: test_sqlite_guest.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from retreatkit.image import aptsource, debs, sqlitelib
from retreatkit.image.debs import PackageError
from retreatkit.image.elf import Elf

# a stand-in for libsqlite3.so.0 that gives one of the two symbols the extension asks for
LIBRARY = "int sqlite3_open_v2(void) { return 0; }\nint helper(void) { return 1; }\n"
EXTENSION = (
    "int sqlite3_open_v2(void); int sqlite3_close(void);\n"
    "int PyInit__sqlite3(void) { return sqlite3_open_v2() + sqlite3_close(); }\n"
)

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc builds the test objects")


def _compile(folder: Path) -> tuple[Path, Path]:
    """(a library named libsqlite3.so.0, an extension that loads it)."""
    (folder / "lib.c").write_text(LIBRARY)
    (folder / "ext.c").write_text(EXTENSION)
    lib = folder / sqlitelib.SONAME
    ext = folder / "_sqlite3.cpython-311-x86_64-linux-gnu.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", f"-Wl,-soname,{sqlitelib.SONAME}", "lib.c", "-o", lib.name],
        cwd=folder, check=True,
    )  # fmt: skip
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "ext.c", "-o", ext.name, "-L.", "-l:libsqlite3.so.0"],
        cwd=folder, check=True,
    )  # fmt: skip
    return lib, ext


@needs_gcc
def test_symbols_the_extension_asks_for_and_the_library_gives(tmp_path: Path) -> None:
    lib, ext = _compile(tmp_path)
    defined, undefined = Elf.read(ext).dynamic_symbols()
    assert "PyInit__sqlite3" in defined
    assert {"sqlite3_open_v2", "sqlite3_close"} <= undefined
    assert sqlitelib.wanted([ext, lib]) == {"sqlite3_open_v2", "sqlite3_close"}
    assert sqlitelib.missing(lib, sqlitelib.wanted([ext])) == ["sqlite3_close"]


@needs_gcc
def test_an_image_takes_debians_library_where_ours_lacks_a_symbol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    lib, ext = _compile(tmp_path)
    package = debs.Package(sqlitelib.BINARY, "3.40.1-2", tmp_path / "x.deb", (), tmp_path)
    debians = tmp_path / "debian.so"
    chosen, why = sqlitelib.choose(package, debians, [ext])
    assert (chosen.kind, chosen.label, chosen.path) == (
        "debian", "Debian libsqlite3-0 3.40.1-2", debians
    )  # fmt: skip
    assert why == "ours is not built for it: `retreatkit image kernel`"
    ours = sqlitelib.folder("3.40.1-2")
    ours.mkdir(parents=True)
    shutil.copyfile(lib, ours / sqlitelib.SONAME)
    chosen, why = sqlitelib.choose(package, debians, [ext])
    assert chosen.kind == "debian"
    assert why == (
        "ours lacks sqlite3_close, which the guest's _sqlite3 needs: `retreatkit image kernel`"
    )
    # another version's library is not this one's
    assert sqlitelib.expected("3.40.1-3")["kind"] == "debian"
    assert sqlitelib.expected("3.40.1-2")["kind"] == "own"
    (tmp_path / "lib.c").write_text(LIBRARY + "int sqlite3_close(void) { return 0; }\n")
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "lib.c", "-o", str(ours / sqlitelib.SONAME)],
        cwd=tmp_path, check=True,
    )  # fmt: skip
    chosen, why = sqlitelib.choose(package, debians, [ext])
    assert (chosen.kind, why) == ("own", "")
    assert chosen.label.startswith("retreatkit build of sqlite3 3.40.1-2 (options ")
    assert chosen.identity()["sha256"] == sqlitelib.expected("3.40.1-2")["sha256"]


def test_the_library_exports_only_what_is_asked_for() -> None:
    assert sqlitelib.version_script(["sqlite3_step", "sqlite3_close", "sqlite3_step"]) == (
        "{\nglobal:\n  sqlite3_close;\n  sqlite3_step;\nlocal: *;\n};\n"
    )


def test_options_leave_out_what_the_store_never_uses_and_keep_what_it_does() -> None:
    features = set(sqlitelib.FEATURES)
    assert {"-DSQLITE_OMIT_JSON", "-DSQLITE_OMIT_DEPRECATED", "-DSQLITE_OMIT_SHARED_CACHE",
            "-DSQLITE_OMIT_LOAD_EXTENSION"} <= features  # fmt: skip
    # Debian's extras are simply not enabled; math functions would need libm
    assert not [f for f in features if "FTS" in f or "RTREE" in f or "SESSION" in f]
    assert not [f for f in features if "MATH" in f]
    # the store needs these: WAL, ALTER TABLE (which leaving out virtual tables takes),
    # upserts, the pager's pragmas, many parameters, threads
    for kept in ("WAL", "ALTERTABLE", "VIRTUALTABLE", "UPSERT", "PAGER_PRAGMAS"):
        assert f"-DSQLITE_OMIT_{kept}" not in features
    assert "-DSQLITE_THREADSAFE=1" in features
    assert "-DSQLITE_MAX_VARIABLE_NUMBER=250000" in features
    assert "-DHAVE_USLEEP=1" in sqlitelib.PLATFORM  # busy waits shorter than a second


def test_the_source_package_and_version_of_a_binary_one() -> None:
    fields = {"Package": "libsqlite3-0", "Version": "3.40.1-2+deb12u2", "Source": "sqlite3"}
    assert sqlitelib.source_of(fields) == ("sqlite3", "3.40.1-2+deb12u2")
    fields["Source"] = "sqlite3 (3.40.1-2)"  # a binary-only upload: 3.40.1-2+b1
    assert sqlitelib.source_of(fields) == ("sqlite3", "3.40.1-2")
    del fields["Source"]
    assert sqlitelib.source_of(fields) == ("libsqlite3-0", "3.40.1-2+deb12u2")


DEB822 = """\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://archive.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
Enabled: no
URIs: http://off.example/debian
Suites: bookworm
Components: main

Types: deb-src
URIs: http://src-only.example/debian
Suites: bookworm
Components: main
"""


def test_the_systems_binary_archives_as_source_archives() -> None:
    assert aptsource.deb822_to_src(DEB822) == (
        "Types: deb-src\n"
        "URIs: http://archive.example/debian\n"
        "Suites: bookworm bookworm-updates\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb-src\n"
        "URIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\n"
        "Components: main\n\n"
    )
    assert (
        aptsource.one_line_to_src(
            "deb [signed-by=/k.gpg] http://archive.example/debian bookworm main # the archive\n"
            "deb-src http://archive.example/debian bookworm main\n"
            "# deb http://old.example/debian buster main\n"
        )
        == "deb-src [signed-by=/k.gpg] http://archive.example/debian bookworm main\n"
    )
    found = aptsource.src_sources(
        [("debian.sources", DEB822), ("sources.list", ""), ("third.list", "deb-src http://x/ y z")]
    )
    assert list(found) == ["src-debian.sources"]
    with pytest.raises(PackageError, match=r"apt's sources name no Debian archive"):
        aptsource.src_sources([("sources.list", "# nothing\n")])
