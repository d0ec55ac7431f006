"""The guest's relinked interpreter: its built-ins from the probe, its libraries, its bytes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from retreatkit.image import relink, sysroot
from retreatkit.image.elf import Elf
from retreatkit.image.paths import cache_dir

CONFIG_C = """\
extern PyObject* PyInit_math(void);
struct _inittab _PyImport_Inittab[] = {

/* -- ADDMODULE MARKER 1 -- */
    {"math", PyInit_math},
    {"pyexpat", PyInit_pyexpat},
    {"posix", PyInit_posix},
    {"_io", PyInit__io},
    {"cmath", PyInit_cmath},

/* -- ADDMODULE MARKER 2 -- */

    /* This module lives in marshal.c */
    {"marshal", PyMarshal_Init},
    {"builtins", NULL},
    {0, 0}
};
"""


def test_inittab_keeps_the_modules_named_those_every_start_needs_and_the_core() -> None:
    text, kept = relink.inittab(CONFIG_C, {"math", "marshal"})
    assert kept == ["math", "posix", "_io", "marshal", "builtins"]
    assert text == CONFIG_C.replace('    {"pyexpat", PyInit_pyexpat},\n', "").replace(
        '    {"cmath", PyInit_cmath},\n', ""
    )


def test_inittab_refuses_a_file_that_is_not_cpythons() -> None:
    with pytest.raises(relink.RelinkError) as caught:
        relink.inittab("int main(void) { return 0; }\n", {"math"})
    assert str(caught.value) == "config.c has no ADDMODULE markers: not CPython's"


def test_the_built_ins_are_what_the_probe_saw_loaded_as_built_in() -> None:
    loaded: dict[str, str | None] = {
        "math": "built-in",
        "os": "frozen",
        "json": "/usr/lib/python3.11/json/__init__.py",
        "__main__": None,
        "_socket": "built-in",
    }
    assert relink.builtins(loaded) == {"math", "_socket"}


def test_without_gcc_the_image_takes_debians_interpreter_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcc, no ld
    interp = sysroot.Interpreter("3.11", tmp_path, ())
    chosen = relink.choose(interp, {"math"})
    assert chosen.kind == "debian"
    assert chosen.binary == tmp_path / "usr" / "bin" / "python3.11"
    assert chosen.label == "Debian's python3.11 (no gcc or ld to relink it: apt-get install gcc)"


needs_tools = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("gcc", "ld", "apt-get")),
    reason="relinking needs gcc, binutils and apt (.ci/run installs them)",
)
# what the services' probes report loaded as built-in, less what only some load
KEEP = {
    "_bisect", "_blake2", "_collections", "_csv", "_datetime", "_functools", "_heapq",
    "_locale", "_opcode", "_operator", "_pickle", "_posixsubprocess", "_random", "_sha512",
    "_socket", "_sre", "_stat", "_struct", "array", "atexit", "binascii", "errno", "fcntl",
    "itertools", "math", "select", "unicodedata", "zlib",
}  # fmt: skip
# the functions glibc's libm.a chooses a version of by CPU (ifunc), and zlib's
CHECK = """
import math, sys, zlib
xs = [0.1, 0.5, 1.0, 2.5, 27.0, 1e-9, 123.456]
out = [f(x) for x in xs for f in (math.atan, math.floor, math.ceil, math.expm1, math.log1p,
       math.cbrt, math.exp, math.log, math.sin, math.cos, math.tan, math.erf, math.lgamma,
       math.sqrt, math.asin if x <= 1 else math.acosh, math.trunc, lambda v: math.pow(v, 1.7),
       lambda v: math.frexp(v)[0], lambda v: math.ldexp(v, 7), lambda v: round(v * 3.3, 2))]
data = bytes(range(256)) * 40
out.append(zlib.crc32(data))
out.append(zlib.decompress(zlib.compress(data, 9)) == data)
print(repr(out))
"""


def _run(binary: Path, interp: sysroot.Interpreter, home: Path, code: str) -> str:
    """`binary` run as the guest runs it: beside the standard library, as usr/bin/pythonX.Y."""
    (home / "usr" / "bin").mkdir(parents=True)
    (home / "usr" / "lib").symlink_to(interp.root / "usr" / "lib")
    shutil.copyfile(binary, home / "usr" / "bin" / f"python{interp.version}")
    (home / "usr" / "bin" / f"python{interp.version}").chmod(0o755)
    done = subprocess.run(
        [str(home / "usr" / "bin" / f"python{interp.version}"), "-I", "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


@needs_tools
def test_the_relinked_interpreter_needs_only_libc_and_computes_as_debians(
    tmp_path: Path,
) -> None:
    interp = sysroot.interpreter()
    python = relink.relink(interp, KEEP)
    assert python.kind == "relinked"
    assert Elf.read(python.binary).needed() == ["libc.so.6"]
    # nothing in a guest unwinds: no unwind tables (linking.py)
    sections = {s.name for s in Elf.read(python.binary).sections}
    assert ".text" in sections and {".eh_frame", ".eh_frame_hdr"} & sections == set()
    code = "import sys; print(*sys.builtin_module_names)"
    names = _run(python.binary, interp, tmp_path / "a", code).split()
    assert "math" in names and "cmath" not in names
    assert "pyexpat" not in names and "_sha3" not in names
    ours = _run(python.binary, interp, tmp_path / "b", CHECK)
    debians = subprocess.run(
        [str(interp.binary), "-I", "-S", "-c", CHECK], capture_output=True, text=True, check=True
    ).stdout
    assert ours == debians


@needs_tools
def test_a_library_the_image_ships_anyway_is_linked_not_copied_in() -> None:
    interp = sysroot.interpreter()
    python = relink.relink(interp, KEEP, shared={"libm.so.6"})
    assert sorted(Elf.read(python.binary).needed()) == ["libc.so.6", "libm.so.6"]


@needs_tools
def test_the_same_inputs_link_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = relink.relink(sysroot.interpreter(), KEEP).binary.read_bytes()
    # another cache, where everything is unpacked and linked again (in other folders)
    fresh = tmp_path / "cache"
    (fresh / "retreatkit" / "debs").mkdir(parents=True)
    for deb in (cache_dir() / "debs").glob("*.deb"):
        if not deb.name.startswith("linux-"):
            os.link(deb, fresh / "retreatkit" / "debs" / deb.name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(fresh))
    # and with no PATH, as the image tests build: gcc must still find cc1, as and ld
    monkeypatch.delenv("PATH")
    second = relink.relink(sysroot.interpreter(), KEEP)
    assert second.binary.is_relative_to(fresh)
    assert second.binary.read_bytes() == first
