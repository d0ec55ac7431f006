"""`retreatkit image build`: a kernel and an initramfs whose only program is one service.

The output folder holds `kernel`, `initramfs` and `manifest.json` (what is inside, with
sizes and SHA-256 hashes). Nothing in them depends on the time or the order files were
found in: the same packages, environment and code give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from retreatkit.image import (
    cpio,
    debs,
    kernel,
    kmod,
    openssllib,
    payload,
    qemu,
    relink,
    sqlitelib,
    sysroot,
)
from retreatkit.image import spec as specs
from retreatkit.image.elf import Elf

CA_PACKAGE = "ca-certificates"
CA_DIR = "usr/lib/ssl/certs"  # OpenSSL's default verify directory in Debian's build
MANIFEST = "manifest.json"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def base_tree(version: str) -> dict[str, cpio.Entry]:
    """What every guest has before its programs: /init, device nodes, mount points."""
    init = (
        f"#!/usr/bin/python{version} -IS\n"
        "from retreatkit.image import zipimports\n"
        "zipimports.install()\n"
        "from retreatkit.image.init import main\n"
        "main()\n"
    )
    return {
        "init": cpio.file(init.encode(), executable=True),
        # CPython seeds its hashes before anything mounts devtmpfs
        "dev/console": cpio.chardev(5, 1),
        "dev/null": cpio.chardev(1, 3, 0o666),
        "dev/urandom": cpio.chardev(1, 9, 0o666),
        "dev/random": cpio.chardev(1, 8, 0o666),
        **{d: cpio.directory() for d in ("proc", "sys", "run", "etc", "var/lib/retreatkit")},
        "tmp": cpio.directory(0o1777),
    }


def ca_directory() -> tuple[dict[str, bytes], debs.Package]:
    """Debian's CA certificates as OpenSSL's hashed directory (see `hashed_folder`)."""
    package = debs.package(CA_PACKAGE)
    certs = sorted((package.tree / "usr" / "share" / "ca-certificates").rglob("*.crt"))
    found = hashed_folder([c.read_bytes() for c in certs])
    if not found:
        raise debs.PackageError(f"no CA certificates in {package}")
    return found, package


def hashed_folder(certs: list[bytes]) -> dict[str, bytes]:
    """PEM certificates as OpenSSL's hashed directory: file name `<subject hash>.N`.

    From a directory OpenSSL reads an issuer's certificate when a handshake needs it; a
    bundle file is parsed whole each time a TLS context loads the defaults, and aiohttp
    makes two contexts when it is imported (0.6 s of a mirror's start on an emulated CPU).
    The names come from `openssl rehash`: the hash is of OpenSSL's own canonical form of
    the subject, which nothing else computes.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise debs.PackageError("openssl not found: apt-get install openssl")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for number, cert in enumerate(certs):
            (folder / f"{number:04d}.crt").write_bytes(cert)
        done = subprocess.run(
            [openssl, "rehash", str(folder)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise debs.PackageError(f"openssl rehash failed: {last}")
        return {
            link.name: link.resolve().read_bytes()
            for link in sorted(folder.iterdir())
            if link.is_symlink()
        }


# every guest: a network card, entropy, and disks (the configuration disk at least)
DEVICES = [qemu.NET, qemu.RNG, qemu.BLK]


def build(
    service: str,
    out: Path,
    which_kernel: str = "auto",
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Build `out/` for `service`; returns the manifest."""
    image = specs.spec(service)
    kern = kernel.choose(which_kernel)
    say(f"Kernel: {kern.label}")
    interp = sysroot.interpreter()
    # the probe runs Debian's binary, which has every built-in: what it loads of them is
    # what the relinked one keeps
    loaded = payload.probe(interp, service, image.leave_out, image.whole)
    origins = payload.made_lazy(payload.select(interp, payload.files(loaded)), image.lazy)
    extensions = payload.extension_files(origins)
    finder = sysroot.Libraries(interp.packages)
    # a deflated zip of modules is inflated by zlib before any of them loads
    keep = relink.builtins(loaded) | ({"zlib"} if image.deflate else set())
    # SQLite: ours for Debian's where ours gives all the extension modules ask of it
    sqlite: list[sqlitelib.Library] = []

    # OpenSSL: both its libraries linked again for what the extension modules ask
    openssl: list[openssllib.OpenSSL] = []

    def ours(soname: str, path: Path, package: debs.Package) -> Path:
        if soname in openssllib.SONAMES:
            if not openssl:
                theirs = {s: path.with_name(s) for s in openssllib.SONAMES}
                openssl.append(openssllib.choose(package, theirs, extensions))
                say(f"OpenSSL: {openssl[0].label}")
            return openssl[0].paths[soname]
        if soname != sqlitelib.SONAME:
            return path
        if not sqlite:
            chosen, why_not = sqlitelib.choose(package, path, extensions)
            say(f"SQLite: {chosen.label}" + (f" ({why_not})" if why_not else ""))
            sqlite.append(chosen)
        return sqlite[0].path

    # a library goes in only when a shipped program or module names it (DT_NEEDED); the
    # interpreter may link to those the extension modules need anyway
    libraries = finder.resolve(extensions, ours)
    python = relink.choose(interp, keep, libraries)
    say(f"Interpreter: {python.label}")
    tree = base_tree(interp.version)
    tree.update(payload.python_tree(interp, origins, image.deflate, python.binary))
    libraries.update(finder.resolve([python.binary], ours))
    packages = {
        p.name: p
        for p in (*interp.packages, *python.packages, *(p for o in openssl for p in o.packages))
    }
    for soname, (path, package) in libraries.items():
        tree[f"{sysroot.GUEST_LIB}/{soname}"] = cpio.file(path.read_bytes(), executable=True)
        packages[package.name] = package
    loader = Elf.read(python.binary).interpreter()
    if loader and loader.lstrip("/") not in tree:
        tree[loader.lstrip("/")] = cpio.symlink(f"/{sysroot.GUEST_LIB}/{Path(loader).name}")
    if image.tls:
        hashed, package = ca_directory()
        for name, cert in hashed.items():
            tree[f"{CA_DIR}/{name}"] = cpio.file(cert)
        packages[package.name] = package
    modules: list[str] = []
    if kern.modules is not None:
        index = kmod.index(kern.modules)
        wanted = qemu.modaliases(kern.machine, DEVICES)
        if image.disk:
            wanted.append("fs-ext4")
        for module in index.load_order(wanted):
            tree[f"lib/modules/{module.name}.ko"] = cpio.file(
                (kern.modules / module.path).read_bytes()
            )
            modules.append(module.name)
        tree["lib/modules/order"] = cpio.file("".join(f"{m}.ko\n" for m in modules).encode())
    initramfs = cpio.initramfs(tree)
    kernel_bytes = kern.image.read_bytes()
    out.mkdir(parents=True, exist_ok=True)
    for name, data in (("kernel", kernel_bytes), ("initramfs", initramfs)):
        partial = out / f"{name}.partial"
        partial.write_bytes(data)
        partial.replace(out / name)
    manifest = {
        "service": service,
        "machine": kern.machine,
        "kernel": {
            "kind": kern.kind,
            "label": kern.label,
            "size_bytes": len(kernel_bytes),
            "sha256": _sha256(kernel_bytes),
        },
        "initramfs": {"size_bytes": len(initramfs), "sha256": _sha256(initramfs)},
        # which libsqlite3.so.0 it ships, where it ships one (sqlitelib.py)
        **({"sqlite": sqlite[0].identity()} if sqlite else {}),
        # and which libssl.so.3 and libcrypto.so.3 (openssllib.py)
        **({"openssl": openssl[0].identity()} if openssl else {}),
        "size_bytes": len(kernel_bytes) + len(initramfs),
        "python": interp.version,
        "interpreter": {
            "kind": python.kind,
            "label": python.label,
            "builtins": list(python.builtins),
        },
        "ports": [[proto, port] for proto, port in image.ports],
        "admin_port": specs.ADMIN_PORT,
        "disk": image.disk,
        "modules": modules,
        "packages": sorted(
            [p.name, p.version, _sha256(p.deb.read_bytes())] for p in packages.values()
        ),
        "files": [
            {"path": "/" + path, "size_bytes": len(entry.data), "sha256": _sha256(entry.data)}
            for path, entry in sorted(tree.items())
            if entry.data
        ],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


class ManifestError(ValueError):
    """An image folder whose manifest cannot be booted from: the message says what to do."""


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _port(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 65535


def _forwarded(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and value[0] in ("tcp", "udp")
        and _port(value[1])
    )


# what `image run` and the supervisor read of a manifest: key, check, what it should be
_BOOTED: tuple[tuple[str, Callable[[object], bool], str], ...] = (
    ("service", lambda v: isinstance(v, str) and v in specs.SPECS,
     f"one of {', '.join(sorted(specs.SPECS))}"),
    ("machine", lambda v: v in ("microvm", "pc"), "microvm or pc"),
    ("kernel", lambda v: isinstance(v, dict), "an object"),
    ("kernel.size_bytes", _count, "a number of bytes"),
    ("kernel.label", lambda v: isinstance(v, str), "a string"),
    ("initramfs", lambda v: isinstance(v, dict), "an object"),
    ("initramfs.size_bytes", _count, "a number of bytes"),
    ("size_bytes", _count, "a number of bytes"),
    ("ports", lambda v: isinstance(v, list) and all(map(_forwarded, v)),
     "a list of [tcp|udp, PORT]"),
    ("admin_port", _port, "a port"),
    ("disk", lambda v: isinstance(v, bool), "true or false"),
)  # fmt: skip


def manifest_problem(doc: object) -> str | None:
    """What keeps a manifest from being booted from, in a few words; None if nothing.
    A manifest edited by hand or written by another version is read by many steps, each
    of which would fail its own way (a KeyError, a None where a number was)."""
    if not isinstance(doc, dict):
        return f"{MANIFEST} holds {_shown(doc)}, not an object"
    for key, fits, should in _BOOTED:
        *outer, last = key.split(".")
        holder = doc
        for part in outer:  # an object: checked before its keys
            holder = holder[part]
        if last not in holder:
            return f"{MANIFEST} has no {key}"
        if not fits(holder[last]):
            return f"{MANIFEST}'s {key} is {_shown(holder[last])}, not {should}"
    return None


def _shown(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def load_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of the image in `folder`; ManifestError (a ValueError) if there is none
    or it is not one an image can be booted from."""
    try:
        doc: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError, RecursionError):
        raise ManifestError(f"{folder} is not an image (no readable {MANIFEST})") from None
    problem = manifest_problem(doc)
    if problem is not None:
        service = doc.get("service") if isinstance(doc, dict) else None
        named = service if isinstance(service, str) and service in specs.SPECS else "SERVICE"
        raise ManifestError(
            f"{folder} is not a whole image: {problem}; build it again"
            f" (retreatkit image build {named})"
        )
    return doc
