"""The Python a guest needs: the modules its service loads, precompiled, and their libraries.

Which modules: the probe (`retreatkit.image.guest`) runs the service under the guest's own
interpreter and reports what it loaded; the image ships exactly those modules. Packages that
import parts of themselves only when a message needs them (dnspython's record types) are
named in the image's spec: the probe imports every module in them, so what those import
is found too.

Modules ship as sourceless, unchecked-hash .pyc files (PEP 552) compiled with -OO by the
guest's interpreter: no source, no timestamps, so the same inputs give the same bytes.
They are compiled without column positions (`-X no_debug_ranges`): 10% smaller, and a
guest's traceback still names each line, only without the ^^^ under the expression.
Extension modules ship stripped.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import subprocess
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import retreatkit
from retreatkit import version
from retreatkit.image import cpio
from retreatkit.image.debs import PackageError
from retreatkit.image.lazyinit import NotLazy, lazy_init
from retreatkit.image.paths import cache_dir
from retreatkit.image.sysroot import Interpreter

PROBE = """
import json, sys
import os
paths, leave_out, whole, service = json.loads(sys.argv[1])
sys.path.extend(paths)
class LeaveOut:  # a meta path finder; importlib.abc itself would import half the stdlib
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in leave_out or name in leave_out:
            raise ModuleNotFoundError(f"{name} is left out of the image", name=name)
        return None
sys.meta_path.insert(0, LeaveOut())
import retreatkit.image.zipimports, retreatkit.image.init, retreatkit.image.standins
import retreatkit.image.spec
retreatkit.image.standins.load(retreatkit.image.spec.spec(service).first)
import retreatkit.image.guest as guest
for package in whole:  # every module in it, and so whatever those import
    top = __import__(package, fromlist=["_"]).__path__[0]
    for folder, _, files in sorted(os.walk(top)):
        prefix = package + folder[len(top):].replace(os.sep, ".")
        for file in sorted(files):
            if file.endswith(".py") and file != "__init__.py":
                __import__(prefix + "." + file[:-3])
            elif file == "__init__.py":
                __import__(prefix)
guest.probe(service)
print(json.dumps({n: getattr(getattr(m, "__spec__", None), "origin", None)
                  for n, m in list(sys.modules.items())}))
"""

PYC_FLAVOUR = "OO-nodebugranges-1char"  # how COMPILE compiles: part of the cache's key
# marshal writes a string as interned or not as it finds it, and CPython's one-character
# strings are singletons whose interned mark, once set, stays for the process: so a
# module's .pyc could differ by which modules were compiled before it in one batch (a '.'
# interned or not), and an image by what the cache held. Each is interned first, alike
# in every batch.
COMPILE = """
import json, py_compile, sys
for code in range(256):
    sys.intern(chr(code))
for source, target, shown in json.load(sys.stdin):
    py_compile.compile(source, cfile=target, dfile=shown, doraise=True, optimize=2,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
"""


@dataclass(frozen=True)
class Origin:
    """Where a module's file comes from, and where it goes in the guest."""

    source: Path
    guest: str  # path in the guest, without the leading /


@functools.cache
def site_roots() -> list[Path]:
    """The project's environment: its site-packages and where retreatkit itself lives."""
    roots = [Path(sysconfig.get_path("purelib")), Path(sysconfig.get_path("platlib"))]
    roots.append(Path(retreatkit.__file__).resolve().parent.parent)
    return list(dict.fromkeys(roots))


def probe(
    interp: Interpreter, service: str, leave_out: tuple[str, ...], whole: tuple[str, ...] = ()
) -> dict[str, str | None]:
    """module name -> where it was loaded from (a file, "built-in", "frozen" or None), for
    every module the service loaded and every module of the packages in `whole`."""
    arg = json.dumps([[str(p) for p in site_roots()], list(leave_out), list(whole), service])
    try:
        done = subprocess.run(
            [str(interp.binary), "-I", "-S", "-c", PROBE, arg],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PackageError(f"the guest's interpreter did not run here: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise PackageError(f"probing the {service} service failed: {last}")
    loaded: dict[str, str | None] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def files(loaded: dict[str, str | None]) -> dict[str, str]:
    """Of a probe's report, the modules loaded from a file: name -> that file."""
    return {n: o for n, o in loaded.items() if o and o not in ("built-in", "frozen")}


def _guest_path(interp: Interpreter, path: Path) -> str | None:
    libdir = f"usr/lib/python{interp.version}"
    if path.is_relative_to(interp.stdlib):
        return f"{libdir}/{path.relative_to(interp.stdlib)}"
    for root in site_roots():
        if path.is_relative_to(root):
            return f"{libdir}/{path.relative_to(root)}"
    return None


def select(interp: Interpreter, loaded: dict[str, str]) -> list[Origin]:
    """The files to ship: each loaded module's."""
    chosen: dict[str, Origin] = {}
    for origin in loaded.values():
        path = Path(origin)
        guest = _guest_path(interp, path)
        if guest is None:
            raise PackageError(f"the probe loaded {path}, which is in no known tree")
        chosen[guest] = Origin(path, guest)
    return [chosen[k] for k in sorted(chosen)]


def made_lazy(origins: list[Origin], packages: tuple[str, ...]) -> list[Origin]:
    """`origins` with the `__init__` of each of `packages` replaced by one that imports
    each of its names when first read (image/lazyinit.py), written to the cache."""
    out = []
    for o in origins:
        package = o.source.parent.name
        if o.source.name == "__init__.py" and package in packages:
            try:
                text = lazy_init(package, o.source.read_text("utf-8"))
            except (NotLazy, SyntaxError, ValueError) as exc:
                raise PackageError(f"cannot make {package} load lazily: {exc}") from None
            folder = cache_dir() / "lazy"
            folder.mkdir(parents=True, exist_ok=True)
            made = folder / f"{hashlib.sha256(text.encode()).hexdigest()}.py"
            if not made.exists():
                made.write_text(text, "utf-8")
            o = Origin(made, o.guest)
        out.append(o)
    return out


def compile_all(interp: Interpreter, origins: list[Origin]) -> dict[str, cpio.Entry]:
    """Sourceless .pyc for every .py, compiled once per content by the guest's Python."""
    folder = cache_dir() / "pyc" / f"{interp.root.name}-{PYC_FLAVOUR}"
    folder.mkdir(parents=True, exist_ok=True)
    jobs = []
    targets: dict[str, Path] = {}
    for o in origins:
        if o.source.suffix != ".py":
            continue
        key = hashlib.sha256(o.source.read_bytes() + o.guest.encode()).hexdigest()
        target = folder / f"{key}.pyc"
        targets[o.guest[:-3] + ".pyc"] = target
        if not target.exists():
            jobs.append([str(o.source), str(target), "/" + o.guest])
    if jobs:
        done = subprocess.run(
            [str(interp.binary), "-I", "-S", "-X", "no_debug_ranges", "-c", COMPILE],
            input=json.dumps(jobs),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise PackageError(f"compiling the guest's modules failed: {last}")
    return {g: cpio.file(t.read_bytes()) for g, t in targets.items()}


def stripped(path: Path) -> bytes:
    """An extension module or library without symbols, once per content (binutils' strip)."""
    data = path.read_bytes()
    target = cache_dir() / "stripped" / hashlib.sha256(data).hexdigest()
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        try:
            subprocess.run(
                ["strip", "--strip-unneeded", "-o", str(partial), str(path)],
                check=True,
                capture_output=True,
                timeout=120,
            )
        except FileNotFoundError:
            raise PackageError("strip not found: building images needs binutils") from None
        except subprocess.CalledProcessError as exc:
            raise PackageError(f"strip {path.name} failed: {exc.stderr.decode().strip()}") from None
        partial.replace(target)
    return target.read_bytes()


def zipped(members: dict[str, bytes], deflate: bool = False) -> bytes:
    """A zip with fixed dates and order: the same members give the same bytes.

    Stored, unless `deflate`: the initramfs's xz compresses across members, and a stored
    zip makes the image 10% smaller (0.44 MB of the mirror's) for 3 MB more of the
    guest's RAM, where the initramfs stays unpacked; zipimport reads stored members without
    inflating. Deflated is for an image whose memory is tighter than its size (the spec's
    `deflate`).
    """
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            archive.writestr(info, members[name])
    return out.getvalue()


def kit_metadata(libdir: str) -> dict[str, cpio.Entry]:
    """The kit's distribution metadata, its name and version only: the guest then reports
    the version the host would (its /status, the dashboard's Processes). A file beside the
    zip, not in it: importlib.metadata reads a zip's names as cp437, a codec guests lack."""
    number = version.number()
    if number == "unknown":
        return {}
    text = f"Metadata-Version: 2.1\nName: {version.NAME}\nVersion: {number}\n"
    return {f"{libdir}/{version.NAME}-{number}.dist-info/METADATA": cpio.file(text.encode())}


def python_tree(
    interp: Interpreter, origins: list[Origin], deflate: bool = False, binary: Path | None = None
) -> dict[str, cpio.Entry]:
    """Guest path -> entry for the interpreter (`binary`, else Debian's) and every module
    it will load.

    Pure-Python modules go in `pythonXY.zip`, first on the interpreter's default path:
    one file instead of hundreds, found by one lookup per import, and no memory lost to
    the rest of each file's last page (1.3 MB of the mirror's, as files). Packages holding
    an extension module stay as files, which zipimport cannot load. The guest reads each
    member once (image/zipimports.py).
    """
    libdir = f"usr/lib/python{interp.version}"
    # getpath finds the standard library by its os module, which is frozen into the binary
    landmark = Origin(interp.stdlib / "os.py", f"{libdir}/os.py")
    compiled = compile_all(interp, [*origins, landmark])
    on_disk = {
        o.guest.split("/")[3]
        for o in origins
        if o.source.suffix == ".so" and o.guest.count("/") > 3
    }
    tree: dict[str, cpio.Entry] = {}
    members: dict[str, bytes] = {}
    for path, entry in compiled.items():
        rel = path[len(libdir) + 1 :]
        if rel.split("/")[0] in on_disk or rel == "os.pyc":
            tree[path] = entry
        else:
            members[rel] = entry.data
    tree.update(kit_metadata(libdir))
    tree[f"usr/lib/python{interp.version.replace('.', '')}.zip"] = cpio.file(
        zipped(members, deflate)
    )
    for o in origins:
        if o.source.suffix == ".so":
            tree[o.guest] = cpio.file(stripped(o.source), executable=True)
    binary = binary or interp.binary
    tree[f"usr/bin/python{interp.version}"] = cpio.file(binary.read_bytes(), True)
    # and the extension modules by this folder (exec_prefix's landmark)
    tree.setdefault(f"{libdir}/lib-dynload", cpio.directory())
    return tree


def extension_files(origins: list[Origin]) -> list[Path]:
    return [o.source for o in origins if o.source.suffix == ".so"]
