"""The guest's interpreter and the shared libraries its binaries need, from Debian packages."""

from __future__ import annotations

import hashlib
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from retreatkit.image import debs
from retreatkit.image.elf import Elf
from retreatkit.image.paths import cache_dir

MULTIARCH = "x86_64-linux-gnu"
LIB_DIRS = (f"lib/{MULTIARCH}", f"usr/lib/{MULTIARCH}", "lib64", "lib", "usr/lib")
GUEST_LIB = f"lib/{MULTIARCH}"  # a folder the loader searches with no ld.so.cache
MAX_PACKAGES = 40  # a library not found in this many packages is not coming


def python_version() -> str:
    """The guest runs the project's Python minor version, so its wheels load there."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True)
class Interpreter:
    version: str
    root: Path  # usr/bin/pythonX.Y and usr/lib/pythonX.Y, merged from the packages
    packages: tuple[debs.Package, ...]

    @property
    def binary(self) -> Path:
        return self.root / "usr" / "bin" / f"python{self.version}"

    @property
    def stdlib(self) -> Path:
        return self.root / "usr" / "lib" / f"python{self.version}"


def interpreter(version: str | None = None) -> Interpreter:
    """Debian's interpreter packages, unpacked and merged into one tree (hard links)."""
    version = version or python_version()
    names = (
        f"python{version}-minimal",
        f"libpython{version}-minimal",
        f"libpython{version}-stdlib",
    )
    packages = tuple(debs.package(n) for n in names)
    key = hashlib.sha256("\n".join(p.deb.name for p in packages).encode()).hexdigest()[:16]
    root = cache_dir() / "python" / f"{version}-{key}"
    if not (root / ".complete").exists():
        for package in packages:
            for source in package.tree.rglob("*"):
                target = root / source.relative_to(package.tree)
                if source.is_dir() and not source.is_symlink():
                    target.mkdir(parents=True, exist_ok=True)
                elif not target.exists() and not target.is_symlink():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if source.is_symlink():
                        target.symlink_to(source.readlink())
                    else:
                        os.link(source, target)
        (root / ".complete").touch()
    return Interpreter(version, root, packages)


def resolve_in(tree: Path, path: PurePosixPath) -> Path | None:
    """`path` inside `tree`, following symlinks as the guest would (absolute ones from
    `tree`), never out of it."""
    current = PurePosixPath("/")
    parts = list(path.parts[1:] if path.is_absolute() else path.parts)
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            current = current.parent
            continue
        candidate = tree / current.relative_to("/") / part
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                return None
            target = PurePosixPath(candidate.readlink())
            if target.is_absolute():
                current = PurePosixPath("/")
            parts = list(target.parts[1:] if target.is_absolute() else target.parts) + parts
            continue
        if not candidate.exists():
            return None
        current = current / part
    found = tree / current.relative_to("/")
    return found if found.is_file() else None


class Libraries:
    """Finds each shared library by its soname in the packages the interpreter depends on,
    fetching those packages only as far as needed."""

    def __init__(self, start: Iterable[debs.Package]) -> None:
        self.loaded: list[debs.Package] = list(start)
        self.seen = {p.name for p in self.loaded}
        self.pending: deque[str] = deque()
        for package in self.loaded:
            self._queue(package)

    def _queue(self, package: debs.Package) -> None:
        for group in package.depends:
            if group[0] not in self.seen:
                self.seen.add(group[0])
                self.pending.append(group[0])

    def _search(self, soname: str) -> tuple[Path, debs.Package] | None:
        for package in self.loaded:
            for folder in LIB_DIRS:
                found = resolve_in(package.tree, PurePosixPath("/", folder, soname))
                if found is not None:
                    return found, package
        return None

    def _load_next(self, soname: str) -> bool:
        if not self.pending:
            # a wheel's library no Debian package depends on: Debian's name for it
            stem, _, version = soname.partition(".so.")
            guesses = [f"{stem}{version}", f"{stem}-{version}"] if version else []
            self.pending.extend(g for g in guesses if g not in self.seen)
            self.seen.update(guesses)
        if not self.pending or len(self.loaded) >= MAX_PACKAGES:
            return False
        # Debian names a library's package after its soname (libsqlite3.so.0 in
        # libsqlite3-0): try the likely one first, then the rest breadth-first
        stem = soname.split(".so")[0].replace("_", "-").lower()
        likely = [n for n in self.pending if n.startswith(stem)]
        name = likely[0] if likely else self.pending[0]
        self.pending.remove(name)
        try:
            package = debs.package(name)
        except debs.PackageError:
            return True  # a virtual package or one apt cannot give: try the next
        self.loaded.append(package)
        self._queue(package)
        return True

    def resolve(
        self,
        objects: Iterable[Path],
        given: Callable[[str, Path, debs.Package], Path] = lambda _, path, __: path,
    ) -> dict[str, tuple[Path, debs.Package]]:
        """soname -> (file, package) for everything `objects` need, transitively. `given`
        may ship another file for a library found (ours for Debian's): that file's own
        needs are followed, not those of the one it replaces."""
        wanted = deque(n for o in objects for n in Elf.read(o).needed())
        found: dict[str, tuple[Path, debs.Package]] = {}
        while wanted:
            soname = wanted.popleft()
            if soname in found:
                continue
            hit = self._search(soname)
            while hit is None and self._load_next(soname):
                hit = self._search(soname)
            if hit is None:
                raise debs.PackageError(f"no package found that provides {soname}")
            hit = (given(soname, *hit), hit[1])
            found[soname] = hit
            wanted.extend(Elf.read(hit[0]).needed())
        return found
