"""The guest's SQLite: our own small build (built once and cached), else Debian's library.

Debian's libsqlite3.so.0 serves every program on a system: 1.4 MB with full-text search,
R-trees, sessions, JSON and the rest. A guest has one user of it, the standard library's
`_sqlite3` extension, and the mirror's store behind that. Ours is built from Debian's
source package of exactly the version the image would take (`aptsource`: its patches
applied, every file checked against the signed archive), compiled -Os as one file with what
the store never uses left out, and gives only the symbols `_sqlite3` asks for, so the
linker drops the rest: 0.54 MB, 0.26 MB in the image's xz (Debian's: 0.61 MB), and it needs
no libm.

The guest's Python loads `_sqlite3` with RTLD_NOW: one symbol it names that the library
lacks and `import sqlite3` fails. So the build refuses a library that lacks one, and an
image takes ours only where it gives every symbol the image's own `_sqlite3` asks for,
else Debian's, and says which.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import resource
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from retreatkit.image import aptsource, debs, linking, locks
from retreatkit.image.elf import Elf
from retreatkit.image.paths import cache_dir

BINARY = "libsqlite3-0"  # the Debian package an image takes the library from
SONAME = "libsqlite3.so.0"
PREFIX = "sqlite3_"  # SQLite's public API: what `_sqlite3` asks the library for
TOOLS = ("apt-get", "dpkg-source", "make", "gcc", "tclsh", "strip")

# What Debian's configure finds on glibc: said here rather than probed, so the build
# does not depend on the machine it runs on. HAVE_USLEEP matters: without it a busy
# connection's waits (busy_timeout) are whole seconds. HAVE_MALLOC_USABLE_SIZE stays
# off, as Debian's patch 10-665363 keeps it.
PLATFORM = (
    "-DHAVE_USLEEP=1",
    "-DHAVE_FDATASYNC=1",
    "-DHAVE_GMTIME_R=1",
    "-DHAVE_LOCALTIME_R=1",
    "-DHAVE_ISNAN=1",
    "-DHAVE_STRCHRNUL=1",
    "-DHAVE_PREAD=1",
    "-DHAVE_PWRITE=1",
    "-DHAVE_UTIME=1",
    "-DHAVE_MALLOC_H=1",
)
# Debian's choices (debian/rules) that change what a program sees, kept: deleted content
# overwritten, no lookaside (less memory per connection), serialized threading (the
# store's connections are used from more than one thread), URIs, schema retries, and
# statements with up to 250000 parameters (the store's `where key in (?, ...)`).
DEBIAN = (
    "-DSQLITE_SECURE_DELETE",
    "-DSQLITE_OMIT_LOOKASIDE=1",
    "-DSQLITE_LIKE_DOESNT_MATCH_BLOBS",
    "-DSQLITE_THREADSAFE=1",
    "-DSQLITE_USE_URI=1",
    "-DSQLITE_MAX_SCHEMA_RETRY=25",
    "-DSQLITE_MAX_VARIABLE_NUMBER=250000",
)
# Left out: Debian's FTS3/4/5, R-tree, sessions, dbstat, column metadata and math
# functions are simply not enabled (no libm needed); these remove what is on by default.
# None is in the store's schema or SQL (mirror/store.py, eviction.py, bundle.py); a
# statement that used one would fail in the guest alone ("no such function",
# "syntax error"), so one the store starts to use is taken off this list. Loading
# extensions and shared cache, which `_sqlite3` names, answer with an error (STUBS).
OMIT = (
    "-DSQLITE_DEFAULT_MEMSTATUS=0",  # no allocation statistics: nothing reads them
    "-DSQLITE_OMIT_DEPRECATED",
    "-DSQLITE_OMIT_SHARED_CACHE",
    "-DSQLITE_OMIT_LOAD_EXTENSION",
    "-DSQLITE_OMIT_JSON",
    "-DSQLITE_OMIT_COMPILEOPTION_DIAGS",
    "-DSQLITE_OMIT_GET_TABLE",
    "-DSQLITE_OMIT_TCL_VARIABLE",
    "-DSQLITE_OMIT_UTF16",  # Python speaks UTF-8 to SQLite; the store's files are UTF-8
    "-DSQLITE_OMIT_EXPLAIN",
    "-DSQLITE_OMIT_INTROSPECTION_PRAGMAS",  # pragma function_list and the like
    # (not SQLITE_OMIT_VIRTUALTABLE: it takes ALTER TABLE with it, which the store
    # needs for stores made before a column was added)
    "-DSQLITE_OMIT_TRIGGER",
    "-DSQLITE_OMIT_WINDOWFUNC",  # `over (...)`: 12 KB of the image
    "-DSQLITE_OMIT_FOREIGN_KEY",
    "-DSQLITE_OMIT_ANALYZE",
    "-DSQLITE_OMIT_AUTOINCREMENT",
    "-DSQLITE_OMIT_GENERATED_COLUMNS",
)
FEATURES = DEBIAN + OMIT  # given to the parser generator too: they change the grammar
CFLAGS = (
    "-Os", "-DNDEBUG", "-fPIC", "-ffunction-sections", "-fdata-sections",
    *linking.NO_UNWIND_CFLAGS,  # nothing in a guest unwinds (linking.py)
)  # fmt: skip
# -z defs: a symbol no object defines fails the link, not the guest's import
LDFLAGS = (
    "-shared",
    f"-Wl,-soname,{SONAME}",
    "-Wl,--gc-sections",
    "-Wl,--no-eh-frame-hdr",
    "-Wl,-z,defs",
    "-Wl,-z,relro,-z,now",
    "-Wl,--version-script=exports.map",
)
# what `_sqlite3` names but the options above remove: a clear error, as a build
# without them answers
STUBS = r"""
#ifdef SQLITE_OMIT_LOAD_EXTENSION
SQLITE_API int sqlite3_enable_load_extension(sqlite3 *db, int onoff){
  (void)db;
  return onoff ? SQLITE_ERROR : SQLITE_OK;
}
SQLITE_API int sqlite3_load_extension(
  sqlite3 *db, const char *zFile, const char *zProc, char **pzErrMsg
){
  (void)db; (void)zFile; (void)zProc;
  if( pzErrMsg ) *pzErrMsg = sqlite3_mprintf("loading extensions is left out of this SQLite");
  return SQLITE_ERROR;
}
#endif
#ifdef SQLITE_OMIT_SHARED_CACHE
SQLITE_API int sqlite3_enable_shared_cache(int enable){
  return enable ? SQLITE_ERROR : SQLITE_OK;
}
#endif
"""


class SqliteError(RuntimeError):
    """Our SQLite cannot be built or does not fit the guest: the message says why."""


@dataclass(frozen=True)
class Library:
    kind: str  # "own" or "debian"
    label: str
    path: Path

    def identity(self) -> dict[str, str | None]:
        """What an image's record keeps of it: Debian's is named by its package version
        (among the image's packages), ours by its bytes too."""
        sha = hashlib.sha256(self.path.read_bytes()).hexdigest() if self.kind == "own" else None
        return {"kind": self.kind, "label": self.label, "sha256": sha}


def options_key() -> str:
    """One hash over how the library is built: a change to any gives another cache entry."""
    recipe = json.dumps([PLATFORM, FEATURES, CFLAGS, LDFLAGS, STUBS])
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def version_script(symbols: Iterable[str]) -> str:
    """A linker version script that exports `symbols` and hides every other."""
    names = "".join(f"  {name};\n" for name in sorted(set(symbols)))
    return f"{{\nglobal:\n{names}local: *;\n}};\n"


def wanted(objects: Iterable[Path]) -> set[str]:
    """The SQLite symbols the objects that load SQLite ask the loader for."""
    found: set[str] = set()
    for path in objects:
        elf = Elf.read(path)
        if SONAME in elf.needed():
            found.update(s for s in elf.dynamic_symbols()[1] if s.startswith(PREFIX))
    return found


def missing(library: Path, wants: set[str]) -> list[str]:
    """What of `wants` the library does not give, sorted."""
    return sorted(wants - Elf.read(library).dynamic_symbols()[0])


def lacking(name: str, gaps: list[str]) -> str:
    return f"{name} lacks {linking.some(gaps)}, which the guest's _sqlite3 needs"


def source_of(fields: dict[str, str]) -> tuple[str, str]:
    """(source package, its version) of a binary package's control fields: `Source` names
    it, with its version when that differs from the binary's (a binary-only upload)."""
    match = re.fullmatch(r"\s*([^\s(]+)\s*(?:\(\s*([^\s)]+)\s*\))?\s*", fields.get("Source", ""))
    if match is None:
        return fields["Package"], fields["Version"]
    return match[1], match[2] or fields["Version"]


def folder(version: str) -> Path:
    return cache_dir() / "sqlite" / f"{version}-{options_key()}"


def own(version: str) -> Library | None:
    """Our library for Debian's `version` of libsqlite3-0 and these options, if built."""
    path = folder(version) / SONAME
    if not path.exists():
        return None
    return Library("own", f"retreatkit build of sqlite3 {version} (options {options_key()})", path)


def debian(package: debs.Package, path: Path) -> Library:
    return Library("debian", f"Debian {package.label}", path)


def expected(version: str | None) -> dict[str, str | None]:
    """The identity of the library an image taking libsqlite3-0 `version` would ship
    (ours if built; whether it fits the image's `_sqlite3` is for the build to find)."""
    if version is not None and (found := own(version)) is not None:
        return found.identity()
    return {"kind": "debian", "label": f"Debian {BINARY} {version}", "sha256": None}


def choose(package: debs.Package, path: Path, objects: Iterable[Path]) -> tuple[Library, str]:
    """Ours when built for this package's version and it gives all `objects` ask of
    SQLite, else Debian's; and why not ours ("" when ours)."""
    found = own(package.version)
    if found is None:
        return debian(package, path), "ours is not built for it: `retreatkit image kernel`"
    gaps = missing(found.path, wanted(objects))
    if gaps:
        return debian(package, path), f"{lacking('ours', gaps)}: `retreatkit image kernel`"
    return found, ""


def build(say: Callable[[str], None], force: bool = False) -> Library:
    """Build our library for the version of libsqlite3-0 an image would take now; cache
    it. One build at a time per cache: a second caller waits and takes the first's."""
    from retreatkit.image import sysroot  # the guest's interpreter, whose _sqlite3 we serve

    interp = sysroot.interpreter()
    extensions = sorted((interp.stdlib / "lib-dynload").glob("_sqlite3.*.so"))
    wants = wanted(extensions)
    if not wants:
        raise SqliteError(f"no _sqlite3 extension that loads {SONAME} in {interp.stdlib}")
    package = debs.package(BINARY)
    base = cache_dir() / "sqlite"
    base.mkdir(parents=True, exist_ok=True)

    def waiting() -> None:
        say("Another build of SQLite is under way: waiting for it")

    with locks.waited(base / ".lock", waiting) as other:
        found = own(package.version)  # another build's is what was asked for
        if found is not None and (other or not force) and not missing(found.path, wants):
            say(f"SQLite ready: {found.path} ({_sizes(found.path)}, cached)")
            return found
        return _build_locked(say, package, wants)


def _sizes(path: Path) -> str:
    data = path.read_bytes()
    return f"{len(data) / 1e6:.2f} MB, {len(lzma.compress(data, preset=9)) / 1e6:.2f} MB in xz"


def _check_tools() -> None:
    absent = [t for t in TOOLS if shutil.which(t) is None]
    if absent:
        raise SqliteError(
            f"building SQLite needs {', '.join(absent)}"
            " (apt-get install dpkg-dev build-essential tcl)"
        )


def _step(args: list[str], cwd: Path, log: Path, what: str) -> None:
    with log.open("ab") as out:
        try:
            done = subprocess.run(
                args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False,
                stdin=subprocess.DEVNULL, env={**os.environ, "LC_ALL": "C"}, timeout=1800,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise SqliteError(f"{what} took over 30 minutes (its log: {log})") from None
        except OSError as exc:
            raise SqliteError(f"{what} could not run {args[0]}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        tail = log.read_text("utf-8", "replace").strip().splitlines()[-3:]
        raise SqliteError(f"{what} failed: {' | '.join(tail)}")


def _build_locked(say: Callable[[str], None], package: debs.Package, wants: set[str]) -> Library:
    _check_tools()
    started = time.monotonic()
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    source, version = source_of(debs.control_fields(package.deb))
    work = cache_dir() / "sqlite" / "build"
    shutil.rmtree(work, ignore_errors=True)
    say(f"Fetching the source of {source} {version} (for {package.label})")
    dsc = aptsource.fetch(source, version, work / "apt", work / "source")
    tree = aptsource.unpack(dsc, work / "tree")
    log = work / "build.log"
    say(f"Building SQLite (log in {log})")
    _step(["./configure", "--disable-tcl", "--disable-readline"], tree, log, "configure")
    # the amalgamation, its parser generated for these options
    features = " ".join(FEATURES)
    _step(["make", "sqlite3.c", "OPT_FEATURE_FLAGS=", f"OPTS={features}"], tree, log, "make")
    (tree / "retreatkit-sqlite3.c").write_text(f'#include "sqlite3.c"\n{STUBS}')
    (tree / "exports.map").write_text(version_script(wants))
    compile_ = ["gcc", *CFLAGS, *PLATFORM, *FEATURES, *LDFLAGS, "retreatkit-sqlite3.c"]
    compiled = work / "compile.log"
    _step([*compile_, "-o", SONAME], tree, compiled, "compiling SQLite")
    # a function the options leave declared but never defined: a combination of them
    # SQLite does not support, even where the linker dropped every call to it
    said = compiled.read_text("utf-8", "replace")
    unsupported = re.findall(r"'(\w+)' used but never defined", said)
    if unsupported:
        raise SqliteError(
            f"the options in sqlitelib.py leave {', '.join(sorted(set(unsupported)))} undefined"
        )
    _step(["strip", "--strip-unneeded", SONAME], tree, log, "strip")
    gaps = missing(tree / SONAME, wants)
    if gaps:
        raise SqliteError(lacking("our SQLite", gaps) + ": an option in sqlitelib.OMIT removes it")
    final = folder(package.version)
    final.mkdir(parents=True, exist_ok=True)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime
    record = {
        "source": [source, version],
        "dsc_sha256": hashlib.sha256(dsc.read_bytes()).hexdigest(),
        "compile": [*compile_, "-o", SONAME],
        "exports": sorted(wants),
        "needed": Elf.read(tree / SONAME).needed(),
        "cpu_seconds": round(seconds, 1),
    }
    (final / "build.json").write_text(json.dumps(record, indent=1) + "\n")
    shutil.copyfile(tree / SONAME, final / f"{SONAME}.partial")
    (final / f"{SONAME}.partial").replace(final / SONAME)
    shutil.rmtree(work, ignore_errors=True)
    built = own(package.version)
    assert built is not None
    say(
        f"SQLite ready: {built.path} ({_sizes(built.path)}) in {time.monotonic() - started:.0f} s"
        f" ({seconds:.0f} s of CPU)"
    )
    return built
