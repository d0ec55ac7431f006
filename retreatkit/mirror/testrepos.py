"""Test upstreams for npm and apt, written to a folder that fakeupstream serves.

npm: `ROOT/NAME/index.json` is the packument (`ROOT/@scope/name/index.json` for a scoped
name; the upstream decodes `%2f`), `ROOT/NAME/-/FILE.tgz` the tarballs, from tarballs made
here or by `npm pack`. apt: `ROOT/dists/SUITE/` with `Packages` (plain, .gz and .xz),
`Release`, by-hash copies and, with gpg, `InRelease` signed by a key made for the test,
and `ROOT/pool/` with `.deb` files built by `dpkg-deb`.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import lzma
import os
import random
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from retreatkit.mirror.upstreams import dpkg_arch

# -- npm --------------------------------------------------------------------------------


def padding(seed: str, size: int) -> bytes:
    """Bytes that do not compress, the same for the same seed: files of a real size."""
    return random.Random(seed).randbytes(size)  # noqa: S311 - test bytes, not secrets


def make_npm_tarball(
    name: str, version: str, dependencies: dict[str, str] | None = None, pad: int = 0
) -> bytes:
    """What `npm pack` makes, near enough for the mirror: `package/package.json` and code."""
    manifest = {"name": name, "version": version, "main": "index.js"}
    if dependencies:
        manifest["dependencies"] = dependencies  # type: ignore[assignment]
    files = {
        "package/package.json": json.dumps(manifest, indent=2).encode(),
        "package/index.js": f"module.exports = {json.dumps(version)};\n".encode(),
    }
    if pad:
        files["package/data.bin"] = padding(f"{name}@{version}", pad)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mtime, info.mode = len(data), 499162500, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def npm_pack(folder: Path, dest: Path, env: dict[str, str]) -> Path:
    """`npm pack` of a package folder into `dest`; the tarball's path."""
    done = subprocess.run(
        ["npm", "pack", "--json", "--pack-destination", str(dest)],
        cwd=folder, capture_output=True, text=True, env=env, timeout=120, check=True,
    )  # fmt: skip
    return dest / str(json.loads(done.stdout)[0]["filename"])


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def write_npm(root: Path, base_url: str, tarballs: list[bytes]) -> dict[str, dict[str, Any]]:
    """Packuments for these tarballs, whose URLs start with `base_url`; returns them."""
    by_name: dict[str, dict[str, Any]] = {}
    for data in tarballs:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            handle = tar.extractfile("package/package.json")
            assert handle is not None
            manifest = json.load(handle)
        name, version = manifest["name"], manifest["version"]
        file = f"{name.rsplit('/', 1)[-1]}-{version}.tgz"
        folder = root / name
        (folder / "-").mkdir(parents=True, exist_ok=True)
        (folder / "-" / file).write_bytes(data)
        doc = by_name.setdefault(
            name, {"_id": name, "name": name, "dist-tags": {}, "versions": {}, "time": {}}
        )
        doc["versions"][version] = {
            **manifest,
            "_id": f"{name}@{version}",
            "dist": {
                "tarball": f"{base_url.rstrip('/')}/{name}/-/{file}",
                "integrity": integrity(data),
                "shasum": hashlib.sha1(data).hexdigest(),  # noqa: S324 - npm's shasum is sha1
            },
        }
        doc["time"][version] = "2024-01-01T00:00:00.000Z"
        doc["time"]["modified"] = "2024-01-01T00:00:00.000Z"
        doc["dist-tags"]["latest"] = version
    for name, doc in by_name.items():
        (root / name / "index.json").write_text(json.dumps(doc))
    return by_name


# -- apt --------------------------------------------------------------------------------


def arch() -> str:
    """This machine's Debian architecture (apt asks for its own, and `all`)."""
    return dpkg_arch()


def make_deb(work: Path, name: str, version: str, depends: str = "", pad: int = 0) -> bytes:
    """A real `.deb` of an `all` package, built by `dpkg-deb`."""
    folder = work / f"{name}-{version}"
    (folder / "DEBIAN").mkdir(parents=True, exist_ok=True)
    doc = folder / "usr" / "share" / "doc" / name
    doc.mkdir(parents=True, exist_ok=True)
    (doc / "README").write_text(f"{name} {version}\n")
    if pad:
        (doc / "data.bin").write_bytes(padding(f"{name}={version}", pad))
    control = [
        f"Package: {name}", f"Version: {version}", "Architecture: all",
        "Maintainer: retreatkit tests <nobody@example.invalid>",
        *([f"Depends: {depends}"] if depends else []),
        f"Description: test package {name}", " A package built for the mirror's tests.",
    ]  # fmt: skip
    (folder / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
    out = work / f"{name}_{version}_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(folder), str(out)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return out.read_bytes()


@dataclass
class Signer:
    """A gpg key made for one test run, in a private GNUPGHOME; `keyring` is its public
    key for apt's `signed-by`."""

    home: Path
    keyring: Path

    @classmethod
    def make(cls, home: Path) -> Signer:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        quiet = ["--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
        cls._gpg(home, *quiet, "--quick-gen-key", "retreatkit tests <nobody@example.invalid>",
                 "ed25519", "sign", "never")  # fmt: skip
        keyring = home / "test-key.gpg"
        cls._gpg(home, "--batch", "--output", str(keyring), "--export")
        return cls(home, keyring)

    @staticmethod
    def _gpg(home: Path, *args: str) -> None:
        env = {**os.environ, "GNUPGHOME": str(home)}
        subprocess.run(["gpg", *args], check=True, capture_output=True, env=env, timeout=60)

    @property
    def keyid(self) -> str:
        """The key's long ID, as apt and gpgv name it (`BADSIG 87B3A5F1B756CF7D`)."""
        env = {**os.environ, "GNUPGHOME": str(self.home)}
        listed = subprocess.run(
            ["gpg", "--batch", "--with-colons", "--list-keys"], check=True,
            capture_output=True, text=True, env=env, timeout=60,
        ).stdout  # fmt: skip
        return next(line.split(":")[4] for line in listed.splitlines() if line.startswith("pub:"))

    def sign(self, release: Path) -> None:
        """InRelease (clearsigned) and Release.gpg (detached) beside a Release."""
        folder, quiet = release.parent, ["--batch", "--yes", "--pinentry-mode", "loopback"]
        self._gpg(self.home, *quiet, "--clearsign", "-o", str(folder / "InRelease"), str(release))
        self._gpg(self.home, *quiet, "-abs", "-o", str(folder / "Release.gpg"), str(release))

    def close(self) -> None:
        """Stop the gpg-agent gpg started for this home."""
        env = {**os.environ, "GNUPGHOME": str(self.home)}
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], capture_output=True, env=env)


def source_tarball(
    top: str, files: dict[str, str], mode: Literal["w:gz", "w:xz"], mtime: int
) -> bytes:
    """A source tarball: each of `files` (path -> text) under `top/`, the same bytes each time."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{path}")
            info.size, info.mtime, info.mode = len(data), mtime, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_dsc(name: str, version: str) -> dict[str, bytes]:
    """A native source package as `dpkg-source -b` leaves it: its `.dsc` and tarball."""
    files = {"README": f"{name} {version}\n", "debian/source/format": "3.0 (native)\n"}
    packed = source_tarball(f"{name}-{version}", files, "w:xz", 499162500)
    tarball = f"{name}_{version}.tar.xz"
    sums = {
        algo: f" {hashlib.new(algo, packed).hexdigest()} {len(packed)} {tarball}"
        for algo in ("sha1", "sha256", "md5")
    }
    dsc = [
        "Format: 3.0 (native)", f"Source: {name}", f"Binary: {name}", "Architecture: all",
        f"Version: {version}", "Maintainer: retreatkit tests <nobody@example.invalid>",
        "Standards-Version: 4.6.2", "Package-List:", f" {name} deb misc optional arch=all",
        "Checksums-Sha1:", sums["sha1"], "Checksums-Sha256:", sums["sha256"],
        "Files:", sums["md5"],
    ]  # fmt: skip
    return {f"{name}_{version}.dsc": ("\n".join(dsc) + "\n").encode(), tarball: packed}


def write_apt(
    root: Path,
    suite: str,
    debs: dict[str, bytes],
    signer: Signer | None,
    by_hash: bool = True,
    sources: dict[str, bytes] | None = None,
) -> None:
    """An archive at `root` (`pool/`, `dists/SUITE/`) holding `debs` (file name -> bytes),
    indexed by `dpkg-scanpackages`, and the source packages' files in `sources`
    (`make_dsc`), indexed by `dpkg-scansources`, with a Release (by-hash copies if
    `by_hash`), signed when a signer is given."""
    for filename, data in {**debs, **(sources or {})}.items():
        name = filename.split("_")[0]
        folder = root / "pool" / "main" / name[0] / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / filename).write_bytes(data)
    dists = root / "dists" / suite
    indexes = {f"main/binary-{arch()}/Packages": ["dpkg-scanpackages", "--multiversion"]}
    if sources:
        indexes["main/source/Sources"] = ["dpkg-scansources"]
    listed = []
    for index, scan in indexes.items():
        scanned = subprocess.run(
            [*scan, "pool", "/dev/null"], cwd=root, check=True, capture_output=True, timeout=60,
        ).stdout  # fmt: skip
        variants = {
            index: scanned,
            index + ".gz": gzip.compress(scanned, mtime=0),
            index + ".xz": lzma.compress(scanned),
        }
        folder = (dists / index).parent
        folder.mkdir(parents=True, exist_ok=True)
        for path, data in variants.items():
            (dists / path).write_bytes(data)
            listed.append((path, data))
            if by_hash:
                for folder_name, algo in (("SHA256", "sha256"), ("MD5Sum", "md5")):
                    hashed = folder / "by-hash" / folder_name
                    hashed.mkdir(parents=True, exist_ok=True)
                    (hashed / hashlib.new(algo, data).hexdigest()).write_bytes(data)
    lines = [
        "Origin: retreatkit-tests", f"Suite: {suite}", f"Codename: {suite}",
        "Date: Sat, 01 Jun 2024 08:00:00 UTC", f"Architectures: {arch()}",
        "Components: main", "Description: an archive built for the mirror's tests",
    ]  # fmt: skip
    if by_hash:
        lines.append("Acquire-By-Hash: yes")
    for field_name, algo in (("MD5Sum", "md5"), ("SHA256", "sha256")):
        lines.append(f"{field_name}:")
        for path, data in listed:
            lines.append(f" {hashlib.new(algo, data).hexdigest()} {len(data):>8} {path}")
    release = dists / "Release"
    release.write_text("\n".join(lines) + "\n")
    for stale in ("InRelease", "Release.gpg"):
        (dists / stale).unlink(missing_ok=True)
    if signer is not None:
        signer.sign(release)


@dataclass
class AptClient:
    """apt-get with every folder of its own under `state`: the host's lists, cache,
    status, sources and configuration parts are never read or written. `apt-get install`
    unpacks into `state/root` (dpkg's `--root`, its own database there)."""

    state: Path

    def __post_init__(self) -> None:
        for folder in ("lists/partial", "archives/partial", "parts", "sources.d", "prefs",
                       "trusted.d", "download", "root/var/lib/dpkg/info",
                       "root/var/lib/dpkg/updates"):  # fmt: skip
            (self.state / folder).mkdir(parents=True, exist_ok=True)
        s, dpkg = self.state, self.state / "root" / "var" / "lib" / "dpkg"
        (dpkg / "status").touch()
        settings = {
            "Dir::State::Lists": s / "lists", "Dir::State::status": dpkg / "status",
            "Dir::Cache::archives": s / "archives", "Dir::Cache::pkgcache": "",
            "Dir::Cache::srcpkgcache": "", "Dir::Etc::SourceList": s / "sources.list",
            "Dir::Etc::SourceParts": s / "sources.d", "Dir::Etc::Parts": s / "parts",
            "Dir::Etc::Preferences": s / "preferences", "Dir::Etc::PreferencesParts": s / "prefs",
            "Dir::Etc::TrustedParts": s / "trusted.d", "Dir::Log": s,
            "Debug::NoLocking": "1", "APT::Sandbox::User": "root",
            "Acquire::Retries": "0", "Acquire::Languages": "none",
            "APT::Architectures": arch(), "Acquire::http::Timeout": "20",
        }  # fmt: skip
        text = "".join(f'{key} "{value}";\n' for key, value in settings.items())
        dpkg_options = [f"--root={s / 'root'}", f"--admindir={dpkg}", f"--log={s / 'dpkg.log'}",
                        "--force-script-chrootless", "--force-not-root"]  # fmt: skip
        text += "DPkg::Options {" + "".join(f' "{o}";' for o in dpkg_options) + " };\n"
        (self.state / "apt.conf").write_text(text)

    def env(self) -> dict[str, str]:
        return {**os.environ, "APT_CONFIG": str(self.state / "apt.conf"), "LC_ALL": "C"}

    def sources(self, line: str) -> None:
        (self.state / "sources.list").write_text(line + "\n")

    def run(self, *args: str, argv: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        """`apt-get ARGS` in the download folder; `argv` prefixes a command (a namespace)."""
        command = [*(argv or []), "apt-get", "-q", *args]
        return subprocess.run(
            command, cwd=self.state / "download", capture_output=True, text=True,
            env=self.env(), timeout=120,
        )  # fmt: skip
