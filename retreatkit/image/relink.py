"""The guest's interpreter relinked from Debian's static libpython, with only the built-in
modules its service loads, and libm's and zlib's pieces linked in.

Debian's `/usr/bin/pythonX.Y` carries every built-in module Debian chose (pyexpat, cmath,
syslog, ...) and needs libm.so.6, libz.so.1 and libexpat.so.1: 1.3 MB of libraries of which
the interpreter uses a few functions. `libpythonX.Y-dev` ships the same interpreter as a
static archive and the `config.c` naming its built-ins; linked again with a `config.c` that
names only the modules the probe saw loaded as built-in, against the static libm and zlib
of the very versions the image ships, the binary needs libc.so.6 alone, and those libraries
leave any image where nothing else needs them.

The archive is Debian's profile-guided build without its link-time optimisation (that
happened in the binary's own link only), so the relinked interpreter runs pure Python some
5% slower; the image's start is bound by unpacking and importing, not by that.

Nothing of the host's C library goes in: crt1.o, libc.so.6, libc_nonshared.a, libm.a and
libz.a come from the packages of the image's versions; the host gives gcc, binutils and
libgcc. The binary is cached by everything it is made from; the same inputs give the same
bytes (the link is stripped, so no path or time lands in it). It has no unwind tables
(linking.py): 0.5 MB of the binary, 0.14 MB of an image.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from retreatkit.image import debs, linking
from retreatkit.image.paths import cache_dir
from retreatkit.image.sysroot import MULTIARCH, Interpreter

TOOLS = linking.TOOLS
# what every start of the interpreter imports before any code of ours runs (a bare
# `python -I -S -c pass`), and the two modules pylifecycle.c links whether named or not
ALWAYS = frozenset({
    "posix", "_io", "_abc", "_codecs", "_signal", "_thread", "_weakref", "time",
    "faulthandler", "_tracemalloc",
})  # fmt: skip
# config.c's entries for the modules of Modules/Setup sit between these two lines; the
# ones after the second (marshal, _imp, sys, ...) live in the core and always stay
FIRST_MARKER = "/* -- ADDMODULE MARKER 1 -- */"
SECOND_MARKER = "/* -- ADDMODULE MARKER 2 -- */"
ENTRY = re.compile(r'^\s*\{"([\w.]+)", \w+\},\s*$')

# Python's own main (Programs/python.c; Debian's python.o is LTO bytecode that only the
# gcc which made it can read), and what glibc's libm.a takes from inside a static libc:
# frexp and ldexp under their internal names, and the CPU features its ifunc resolvers
# read. A dynamic program has no such table (ld.so keeps it private), so the resolvers
# read zeros and choose the baseline SSE2 versions, which every x86-64 CPU runs.
MAIN_C = """\
#include <Python.h>
int main(int argc, char **argv) { return Py_BytesMain(argc, argv); }
"""
LIBM_C = """\
#include <math.h>
double __frexp(double x, int *e) { return frexp(x, e); }
double __ldexp(double x, int e) { return ldexp(x, e); }
unsigned char _dl_x86_cpu_features[4096] __attribute__((aligned(64)));
"""
CFLAGS = ("-O2", "-fwrapv", "-DNDEBUG")
LDFLAGS = (
    "-no-pie", "-s", "-Xlinker", "-export-dynamic", "-Wl,-O1", "-Wl,--hash-style=gnu",
    *linking.NO_UNWIND_FLAGS,
)  # fmt: skip


class RelinkError(linking.LinkError):
    """The interpreter could not be relinked: the message says why."""


@dataclass(frozen=True)
class Python:
    """The interpreter an image ships."""

    kind: str  # "relinked" or "debian"
    label: str
    binary: Path
    builtins: tuple[str, ...]  # its built-in modules, as config.c names them
    packages: tuple[debs.Package, ...]  # what it was linked from, beyond the interpreter's


def builtins(loaded: dict[str, str | None]) -> set[str]:
    """The built-in modules a probe's report (module name -> origin) shows loaded."""
    return {name for name, origin in loaded.items() if origin == "built-in"}


def inittab(config_c: str, keep: Iterable[str]) -> tuple[str, list[str]]:
    """`config_c` with only the entries of Setup's modules named in `keep` (and ALWAYS),
    and the names it kept, in its order. The core's entries after the second marker
    stay whatever `keep` says."""
    wanted = set(keep) | ALWAYS
    lines = config_c.splitlines(keepends=True)
    try:
        first = next(i for i, line in enumerate(lines) if FIRST_MARKER in line)
        second = next(i for i, line in enumerate(lines) if SECOND_MARKER in line)
    except StopIteration:
        raise RelinkError("config.c has no ADDMODULE markers: not CPython's") from None
    out, kept = lines[: first + 1], []
    for line in lines[first + 1 : second]:
        entry = ENTRY.match(line)
        if entry is None or entry.group(1) in wanted:
            out.append(line)
            if entry is not None:
                kept.append(entry.group(1))
    out.extend(lines[second:])
    for line in lines[second:]:
        entry = ENTRY.match(line)
        if entry is not None:
            kept.append(entry.group(1))
    return "".join(out), kept


@dataclass(frozen=True)
class _Sources:
    dev: debs.Package  # libpythonX.Y-dev
    libc: linking.Libc  # libc6 (libc.so.6, libm.so.6) and libc6-dev (crt files, libm.a)
    zlib: debs.Package  # zlib1g: libz.so.1
    zlib_dev: debs.Package  # zlib1g-dev: libz.a


def _sources(interp: Interpreter) -> _Sources:
    """The -dev packages of exactly the versions the image ships at run time: libm.a
    reaches into libc.so.6's private symbols (errno), which only the same build has."""
    python = interp.packages[0]
    zlib = debs.package("zlib1g")
    return _Sources(
        debs.package(f"libpython{interp.version}-dev", python.version),
        linking.libc(),
        zlib,
        debs.package("zlib1g-dev", zlib.version),
    )


def _one(tree: Path, pattern: str) -> Path:
    found = sorted(tree.glob(pattern))
    if not found:
        raise RelinkError(f"no {pattern} in {tree.name}")
    return found[-1]


def _libraries(src: _Sources, kept: list[str], shared: set[str]) -> list[Path]:
    """What the link takes for libm, zlib and expat: each library's static archive, or
    its shared object where the image ships that anyway (another of its programs needs
    it: linking its pieces in too would carry them twice)."""
    lib = f"lib/{MULTIARCH}"
    found = []
    if "libz.so.1" in shared:
        found.append(_one(src.zlib.tree, f"{lib}/libz.so.1"))
    else:
        found.append(_one(src.zlib_dev.tree, f"usr/{lib}/libz.a"))
    if "libm.so.6" in shared:
        found.append(_one(src.libc.libc.tree, f"{lib}/libm.so.6"))
    else:
        found.append(_one(src.libc.dev.tree, f"usr/{lib}/libm-*.a"))
    if "pyexpat" in kept or "_elementtree" in kept:  # no service of ours parses XML
        found.append(_one(debs.package("libexpat1").tree, f"{lib}/libexpat.so.1"))
    return found


def _link(folder: Path, config_c: str, interp: Interpreter, libraries: list[Path],
          src: _Sources, config_dir: Path) -> Path:  # fmt: skip
    """Compile config.c and main, link them with `config_dir`'s archive: `folder`/python."""
    include = src.dev.tree / "usr" / "include"
    gcc = shutil.which("gcc") or "gcc"
    static_libm = any(p.suffix == ".a" and p.name.startswith("libm") for p in libraries)
    sources = {"config": config_c, "main": MAIN_C, **({"libm": LIBM_C} if static_libm else {})}
    # Python.h's pyconfig.h includes <x86_64-linux-gnu/pythonX.Y/pyconfig.h>: the
    # package's, not one the host may have installed (or not)
    flags = [*CFLAGS, "-I", str(include / f"python{interp.version}"), "-I", str(include)]
    for name, text in sources.items():
        (folder / f"{name}.c").write_text(text)
        linking.run([gcc, "-c", *flags, "-o", f"{name}.o", f"{name}.c"], folder,
                    f"compiling {name}.c")  # fmt: skip
    linking.no_unwind(folder)
    link = [
        gcc, *src.libc.start(), *LDFLAGS, "-o", "python",
        *(f"{name}.o" for name in sources),
        str(config_dir / f"libpython{interp.version}.a"),
        *map(str, libraries),
        *src.libc.end(),
    ]  # fmt: skip
    linking.run(link, folder, "the link")
    return folder / "python"


def relink(interp: Interpreter, keep: Iterable[str], shared: Iterable[str] = ()) -> Python:
    """The interpreter with the built-ins `keep` (and ALWAYS), linked once per inputs;
    `shared`: the sonames the image ships anyway, which it may then use."""
    src = _sources(interp)
    config_dir = _one(src.dev.tree, f"usr/lib/python{interp.version}/config-*")
    config_c, kept = inittab((config_dir / "config.c").read_text(), keep)
    libraries = _libraries(src, kept, set(shared))
    key = hashlib.sha256(
        "\0".join([
            config_c, MAIN_C, LIBM_C, repr((CFLAGS, LDFLAGS)), linking.NO_UNWIND_SCRIPT,
            linking.tool_hashes(),
            *(p.deb.name for p in (src.dev, src.libc.libc, src.libc.dev, src.zlib, src.zlib_dev)),
            *(str(p.relative_to(cache_dir())) for p in libraries),
        ]).encode()
    ).hexdigest()[:16]  # fmt: skip
    target = cache_dir() / "relinked" / f"python{interp.version}-{key}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            built = _link(Path(scratch), config_c, interp, libraries, src, config_dir)
            built.replace(target)
    label = f"relinked from {src.dev.label} ({len(kept)} built-in modules)"
    return Python("relinked", label, target, tuple(kept), (src.dev, src.libc.dev, src.zlib_dev))


def debian(interp: Interpreter, why: str) -> Python:
    """Debian's own binary, as the interpreter's package ships it."""
    label = f"Debian's python{interp.version} ({why})"
    return Python("debian", label, interp.binary, (), ())


def choose(interp: Interpreter, keep: Iterable[str], shared: Iterable[str] = ()) -> Python:
    """The relinked interpreter when this machine can link it, else Debian's."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return debian(interp, f"no {' or '.join(missing)} to relink it: apt-get install gcc")
    try:
        return relink(interp, keep, shared)
    except (linking.LinkError, debs.PackageError) as exc:
        return debian(interp, f"relinking failed: {exc}")
