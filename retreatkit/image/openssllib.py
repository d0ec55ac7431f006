"""The guest's OpenSSL: libssl.so.3 and libcrypto.so.3 linked again from Debian's static
archives, giving only what the image's modules ask for; else Debian's libraries.

Debian's libcrypto.so.3 gives every program on a system 5,300 functions: 4.7 MB, 1.5 MB in
the image's xz. A guest that speaks TLS (the mirror's) has two users of OpenSSL, the standard
library's `_ssl` and `_hashlib`. `libssl-dev` of exactly the version the image ships holds
the same library as static archives (libssl.a, libcrypto.a); linked again as the two shared
objects, each exporting only the symbols those modules (and libssl, of libcrypto) ask for,
the linker takes only the archive members that reach, and neither keeps unwind tables
(linking.py): 4.0 MB in all where Debian's are 5.4 MB, 0.35 MB less in the image.

What the modules see is unchanged: the same sonames, the same symbol versions
(OPENSSL_3.0.0, 3.0.3, ...) as Debian's libraries give them, the same code, as the
archives are the same build. libssl.a calls functions of libcrypto that Debian's shared
libcrypto keeps private (its shared libssl carries copies); ours gives those too.

A symbol asked for that a library then lacks fails the build (the guest's Python loads
extension modules with RTLD_NOW); any failure, or a machine without gcc or without the
package, gives Debian's libraries, and the build says why.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from retreatkit.image import debs, linking
from retreatkit.image.elf import Elf, ElfError, archive_symbols
from retreatkit.image.paths import cache_dir
from retreatkit.image.sysroot import MULTIARCH

SSL, CRYPTO = "libssl.so.3", "libcrypto.so.3"
SONAMES = (SSL, CRYPTO)
DEV = "libssl-dev"  # the static archives, of the version of libssl3 the image ships
# Debian's libraries are linked -z now (all symbols bound at load) and -z relro; -z defs
# makes a symbol no archive member gives fail the link, not the guest's import
LDFLAGS = (
    "-shared", "-s", "-Wl,-O1", "-Wl,--hash-style=gnu", "-Wl,-z,relro,-z,now", "-Wl,-z,defs",
)  # fmt: skip


# how the libraries are made is this file's code and linking.py's: part of the cache's key
RECIPE = hashlib.sha256(
    Path(__file__).read_bytes() + Path(linking.__file__).read_bytes()
).hexdigest()


@dataclass(frozen=True)
class OpenSSL:
    kind: str  # "relinked" or "debian"
    label: str
    paths: dict[str, Path]  # soname -> the file the image ships
    packages: tuple[debs.Package, ...]  # what it was linked from, beyond libssl3

    def identity(self) -> dict[str, object]:
        """What an image's manifest keeps of it: ours by the bytes of each library too."""
        found: dict[str, object] = {"kind": self.kind, "label": self.label}
        if self.kind == "relinked":
            found["sha256"] = {
                soname: hashlib.sha256(path.read_bytes()).hexdigest()
                for soname, path in sorted(self.paths.items())
            }
        return found


def wanted(objects: Iterable[Path], soname: str, gives: set[str]) -> set[str]:
    """Of the symbols `gives`, those the objects that load `soname` ask the loader for."""
    found: set[str] = set()
    for path in objects:
        elf = Elf.read(path)
        if soname in elf.needed():
            found |= elf.dynamic_symbols()[1] & gives
    return found


def version_script(versions: dict[str, str], nodes: list[tuple[str, str | None]]) -> str:
    """A linker version script giving each symbol of `versions` under its version; every
    version of `nodes` (name, the one it follows) is defined, so an object that names one
    finds it, and the first hides every symbol not named."""
    out = []
    for number, (node, parent) in enumerate(nodes):
        names = sorted(symbol for symbol, version in versions.items() if version == node)
        given = "".join(f"  {name};\n" for name in names)
        hidden = " local: *;\n" if number == 0 else ""
        out.append(
            f"{node} {{\n"
            + (f" global:\n{given}" if given else "")
            + hidden
            + "}"
            + (f" {parent}" if parent else "")
            + ";\n"
        )
    return "".join(out)


def debian(package: debs.Package, paths: dict[str, Path], why: str) -> OpenSSL:
    return OpenSSL("debian", f"Debian {package.label} ({why})", paths, ())


def choose(package: debs.Package, paths: dict[str, Path], objects: list[Path]) -> OpenSSL:
    """Ours, linked for what `objects` ask of libssl3's libraries `paths` (soname ->
    Debian's file); Debian's when it cannot be."""
    missing = [t for t in linking.TOOLS if shutil.which(t) is None]
    if missing:
        return debian(
            package, paths, f"no {' or '.join(missing)} to relink it: apt-get install gcc"
        )
    try:
        return relink(package, paths, objects)
    except (linking.LinkError, debs.PackageError, ElfError) as exc:
        return debian(package, paths, f"relinking failed: {exc}")
    except OSError as exc:
        return debian(package, paths, f"relinking failed: {exc.strerror or exc}")


def relink(package: debs.Package, paths: dict[str, Path], objects: list[Path]) -> OpenSSL:
    """Both libraries, linked once per inputs and cached."""
    dev = debs.package(DEV, package.version)
    archives = {
        soname: dev.tree / "usr" / "lib" / MULTIARCH / f"{soname.split('.so')[0]}.a"
        for soname in SONAMES
    }
    for archive in archives.values():
        if not archive.is_file():
            raise linking.LinkError(f"{dev.label} has no {archive.name}")
    theirs = {soname: Elf.read(paths[soname]) for soname in SONAMES}
    asked = {
        soname: wanted(objects, soname, theirs[soname].dynamic_symbols()[0]) for soname in SONAMES
    }
    libc = linking.libc()
    key = hashlib.sha256(
        "\0".join([
            package.deb.name, dev.deb.name, libc.libc.deb.name, libc.dev.deb.name,
            repr(LDFLAGS), RECIPE, linking.tool_hashes(),
            *(f"{soname}:{','.join(sorted(asked[soname]))}" for soname in SONAMES),
        ]).encode()
    ).hexdigest()[:16]  # fmt: skip
    target = cache_dir() / "openssl" / f"{package.version}-{key}"
    if not all((target / soname).is_file() for soname in SONAMES):
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            folder = Path(scratch)
            _link(folder, archives, theirs, asked, libc)
            done = folder / "done"
            done.mkdir()
            for soname in SONAMES:
                (folder / soname).replace(done / soname)
            try:
                done.rename(target)
            except OSError:
                # another build linked the same inputs first: its libraries are these
                if not all((target / soname).is_file() for soname in SONAMES):
                    raise
    given = sum(len(v) for v in asked.values())
    label = f"relinked from {dev.label} ({given} symbols asked for)"
    return OpenSSL("relinked", label, {s: target / s for s in SONAMES}, (dev, libc.dev))


def _link(
    folder: Path,
    archives: dict[str, Path],
    theirs: dict[str, Elf],
    asked: dict[str, set[str]],
    libc: linking.Libc,
) -> None:
    """libssl first, without libcrypto, to learn what it takes of libcrypto; then
    libcrypto, giving that and what the objects ask; then libssl against it."""
    gcc = shutil.which("gcc") or "gcc"
    no_unwind = linking.no_unwind(folder)
    nodes = {soname: theirs[soname].version_nodes() for soname in SONAMES}
    versions = {soname: theirs[soname].symbol_versions() for soname in SONAMES}
    for soname in SONAMES:
        if not nodes[soname]:
            raise linking.LinkError(f"Debian's {soname} defines no symbol versions")

    def versioned(soname: str, symbols: set[str]) -> dict[str, str]:
        """Each symbol under Debian's version of it; one Debian's keeps private under the
        first version."""
        base = nodes[soname][0][0]
        return {symbol: versions[soname].get(symbol, base) for symbol in symbols}

    def link(soname: str, symbols: set[str], after: list[str], check: bool) -> Path:
        script = f"{soname}.map"
        given = versioned(soname, symbols)
        (folder / script).write_text(version_script(given, nodes[soname]))
        args = [
            gcc, *libc.start(), *(LDFLAGS if check else LDFLAGS[:-1]), *no_unwind,
            "-o", soname, f"-Wl,-soname,{soname}", f"-Wl,--version-script={script}",
            *(f"-Wl,-u,{symbol}" for symbol in sorted(given)),
            str(archives[soname]), *after, *libc.end(),
        ]  # fmt: skip
        linking.run(args, folder, f"linking {soname}")
        return folder / soname

    first = Elf.read(link(SSL, asked[SSL], [], check=False))
    index = archive_symbols(archives[CRYPTO].read_bytes())
    if not index:
        raise linking.LinkError(f"{archives[CRYPTO].name} has no symbol index")
    private = first.dynamic_symbols()[1] & index
    crypto = link(CRYPTO, asked[CRYPTO] | private, [], check=True)
    ssl = link(SSL, asked[SSL], [str(crypto)], check=True)
    for soname, path, wants in ((SSL, ssl, asked[SSL]), (CRYPTO, crypto, asked[CRYPTO] | private)):
        given = Elf.read(path).symbol_versions()
        gaps = sorted(wants - set(given))
        if gaps:
            raise linking.LinkError(f"our {soname} lacks {linking.some(gaps)}")
        # a module names each symbol with its version: ours must give it under Debian's
        moved = sorted(version_gaps(given, versions[soname], asked[soname]))
        if moved:
            raise linking.LinkError(
                f"our {soname} gives {linking.some(moved)} under another version"
            )


def version_gaps(ours: dict[str, str], theirs: dict[str, str], asked: set[str]) -> set[str]:
    """Of the symbols `asked`, those ours does not give under the version theirs gives them
    under."""
    return {symbol for symbol in asked if ours.get(symbol) != theirs.get(symbol)}
