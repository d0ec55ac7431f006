"""Debian packages for the images: fetched with `apt-get download`, cached, unpacked in Python.

A .deb is an ar(5) archive of `debian-binary`, `control.tar.*` and `data.tar.*`
(deb(5)); unpacking it needs no root, no dpkg and no loop mount. Each package is fetched
once into the cache and unpacked once beside it; without a network the newest cached
version of a package is used.
"""

from __future__ import annotations

import io
import lzma
import re
import shutil
import subprocess
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from retreatkit.image import locks
from retreatkit.image.paths import cache_dir

AR_MAGIC = b"!<arch>\n"


class PackageError(RuntimeError):
    """A package cannot be found, fetched or read: the message says which and why."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    deb: Path
    depends: tuple[tuple[str, ...], ...]  # each a set of alternatives
    tree: Path  # the unpacked data.tar

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


def debs_dir() -> Path:
    return cache_dir() / "debs"


def ar_members(data: bytes) -> dict[str, bytes]:
    if not data.startswith(AR_MAGIC):
        raise PackageError("not a Debian package (no ar header)")
    members: dict[str, bytes] = {}
    at = len(AR_MAGIC)
    while at + 60 <= len(data):
        header = data[at : at + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip() or 0)
        members[name] = data[at + 60 : at + 60 + size]
        at += 60 + size + (size & 1)  # members are 2-byte aligned
    return members


def _decompress(name: str, blob: bytes) -> bytes:
    if name.endswith(".xz"):
        return lzma.decompress(blob)
    if name.endswith(".gz"):
        return zlib.decompress(blob, 16 + zlib.MAX_WBITS)
    if name.endswith(".tar"):
        return blob
    raise PackageError(f"cannot read {name}: only xz, gzip or plain tar members are supported")


def _member(members: dict[str, bytes], prefix: str) -> tarfile.TarFile:
    for name, blob in members.items():
        if name.startswith(prefix):
            return tarfile.open(fileobj=io.BytesIO(_decompress(name, blob)))
    raise PackageError(f"no {prefix}* in the package")


def control_fields(deb: Path) -> dict[str, str]:
    with _member(ar_members(deb.read_bytes()), "control.tar") as tar:
        for info in tar.getmembers():
            if info.name.lstrip("./") == "control":
                handle = tar.extractfile(info)
                if handle is not None:
                    return parse_fields(handle.read().decode("utf-8", "replace"))
    raise PackageError(f"{deb.name} has no control file")


def parse_fields(text: str) -> dict[str, str]:
    """RFC 822-style fields of a control file or of `apt-cache show`."""
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def parse_depends(text: str) -> tuple[tuple[str, ...], ...]:
    """`a (>= 1), b | c:any` -> (("a",), ("b", "c")): names only, versions are apt's job."""
    groups = []
    for group in text.split(","):
        names = tuple(re.sub(r"[\s(:].*", "", alt.strip()) for alt in group.split("|"))
        if any(names):
            groups.append(tuple(n for n in names if n))
    return tuple(groups)


def unpack(deb: Path, into: Path) -> None:
    """Write the package's files under `into`; nothing may land outside it."""
    with _member(ar_members(deb.read_bytes()), "data.tar") as tar:
        for info in tar:
            rel = PurePosixPath(info.name.lstrip("/"))
            if ".." in rel.parts:
                raise PackageError(f"{deb.name}: {info.name} points outside the package")
            target = into.joinpath(*[p for p in rel.parts if p != "."])
            if info.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif info.issym():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(info.linkname)
            elif info.islnk():
                source = into / info.linkname.lstrip("./")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                target.chmod(info.mode & 0o755)
            elif info.isfile():
                handle = tar.extractfile(info)
                assert handle is not None
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("wb") as out:
                    shutil.copyfileobj(handle, out)
                target.chmod(info.mode & 0o755)


def _apt(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            args, capture_output=True, text=True, timeout=600, check=False, cwd=cwd
        )
    except FileNotFoundError:
        raise PackageError(f"{args[0]} not found: building images needs Debian's apt") from None


def _cached(name: str, version: str | None = None) -> list[Path]:
    found = sorted(debs_dir().glob(f"{name}_*.deb"), key=lambda p: p.stat().st_mtime)
    if version is not None:  # the file name quotes the epoch's colon: read the control
        found = [deb for deb in found if control_fields(deb).get("Version") == version]
    return found


def fetch(name: str, version: str | None = None) -> Path:
    """The package's .deb in the cache: `version`, else apt's candidate version, or the
    newest one cached."""
    folder = debs_dir()
    folder.mkdir(parents=True, exist_ok=True)
    asked = f"{name}={version}" if version else name
    shown = _apt("apt-cache", "show", "--no-all-versions", asked)
    fields = parse_fields(shown.stdout) if shown.returncode == 0 else {}
    if "Filename" in fields:
        # apt-get download names the file with the version's epoch quoted (1%3a1.2),
        # where the archive's file name has none
        arch = fields.get("Architecture", "")
        quoted = f"{name}_{fields['Version'].replace(':', '%3a')}_{arch}.deb"
        names = [folder / PurePosixPath(fields["Filename"]).name, folder / quoted]
        for deb in names:
            if deb.exists():
                return deb
        # apt-get download writes into the current folder; another build may be fetching
        # the same package (CI builds beside `image kernel`): one at a time, none half-seen
        exact = f"{name}={fields['Version']}"
        with locks.held(folder / ".download.lock"):
            if any(deb.exists() for deb in names):
                return next(deb for deb in names if deb.exists())
            scratch = folder / ".download"
            shutil.rmtree(scratch, ignore_errors=True)  # a download cut short
            scratch.mkdir()
            try:
                got = _apt(
                    "apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", exact,
                    cwd=scratch,
                )  # fmt: skip
                for deb in names:
                    if got.returncode == 0 and (scratch / deb.name).exists():
                        (scratch / deb.name).rename(deb)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        written = [deb for deb in names if got.returncode == 0 and deb.exists()]
        if written:
            return written[0]
        reason = (got.stderr.strip().splitlines() or ["apt-get download failed"])[-1]
    else:
        reason = f"apt knows no package {asked}"
    cached = _cached(name, version)
    if cached:
        return cached[-1]
    raise PackageError(f"cannot fetch {asked}: {reason}")


def chosen_versions(names: list[str]) -> dict[str, str]:
    """The version `fetch` would take of each package, found with one apt query: apt's
    candidate, else the newest cached (a name neither knows is left out)."""
    if not names:
        return {}
    shown = _apt("apt-cache", "show", "--no-all-versions", *names)  # fails if one is unknown
    found: dict[str, str] = {}
    for stanza in shown.stdout.split("\n\n"):
        fields = parse_fields(stanza)
        if fields.get("Package") in names and "Version" in fields and "Filename" in fields:
            found[fields["Package"]] = fields["Version"]  # the last, as `fetch` reads it
    for name in names:
        cached = _cached(name)
        if name not in found and cached:
            found[name] = control_fields(cached[-1]).get("Version", "?")
    return found


def package(name: str, version: str | None = None) -> Package:
    """Fetch (once) and unpack (once) a package, of `version` if given (else as `fetch`
    chooses); its files are under `.tree`."""
    deb = fetch(name, version)
    fields = control_fields(deb)
    tree = cache_dir() / "unpacked" / deb.stem
    if not (tree / ".complete").exists():
        tree.parent.mkdir(parents=True, exist_ok=True)
        # another build may be unpacking it too: one does, the other then finds it done
        with locks.held(tree.with_name(tree.name + ".lock")):
            if not (tree / ".complete").exists():
                partial = tree.with_name(tree.name + ".partial")
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir()
                unpack(deb, partial)
                (partial / ".complete").touch()
                shutil.rmtree(tree, ignore_errors=True)
                partial.rename(tree)
    depends = parse_depends(", ".join(fields.get(k, "") for k in ("Pre-Depends", "Depends")))
    return Package(fields.get("Package", name), fields.get("Version", "?"), deb, depends, tree)
