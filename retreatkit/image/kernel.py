"""The guest's kernel: our own small one (built once and cached), else Debian's cloud kernel."""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from retreatkit.image import debs, locks
from retreatkit.image.paths import cache_dir
from retreatkit.image.spec import KERNELS

CONFIG = Path(__file__).with_name("kernel.config")
SOURCE = "linux-source"  # Debian's metapackage; it depends on the versioned source
CLOUD = "linux-image-cloud-amd64"
TOOLS = ("make", "gcc", "flex", "bison", "bc", "tar", "xz")
# fixed build identity, so the same source and config give the same kernel bytes
REPRODUCIBLE = {
    "KBUILD_BUILD_TIMESTAMP": "1970-01-01",
    "KBUILD_BUILD_USER": "retreatkit",
    "KBUILD_BUILD_HOST": "retreatkit",
    "KBUILD_BUILD_VERSION": "1",
}


class KernelError(RuntimeError):
    """No usable kernel, or ours failed to build: the message says what to do."""


@dataclass(frozen=True)
class Kernel:
    kind: str  # "own" or "debian"
    label: str
    image: Path
    machine: str  # qemu machine: "microvm" for ours, "pc" for Debian's (virtio over PCI)
    modules: Path | None = None  # a Debian kernel's modules folder


def config_key() -> str:
    return hashlib.sha256(CONFIG.read_bytes()).hexdigest()[:12]


def own() -> Kernel | None:
    """Our kernel for the committed config, if it was built on this machine."""
    built = sorted((cache_dir() / "kernel").glob(f"{config_key()}-*/bzImage"))
    if not built:
        return None
    version = built[-1].parent.name.split("-", 1)[1]
    return Kernel("own", f"retreatkit {version} (config {config_key()})", built[-1], "microvm")


def debian() -> Kernel:
    meta = debs.package(CLOUD)
    package = debs.package(meta.depends[0][0])
    images = sorted((package.tree / "boot").glob("vmlinuz-*"))
    modules = sorted((package.tree / "lib" / "modules").iterdir())
    if not images or not modules:
        raise KernelError(f"{package.label} has no kernel image or modules")
    return Kernel("debian", f"Debian {package.label}", images[0], "pc", modules[0])


def choose(which: str = "auto") -> Kernel:
    """`own`, `debian`, or `auto`: ours when built, else Debian's."""
    if which in ("own", "auto"):
        found = own()
        if found is not None:
            return found
        if which == "own":
            raise KernelError("our kernel is not built yet: run `retreatkit image kernel`")
    if which not in KERNELS:
        raise KernelError(f"unknown kernel {which!r}: own, debian or auto")
    return debian()


def _check_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not Path("/usr/include/gelf.h").exists():
        missing.append("libelf-dev")
    if missing:
        raise KernelError(
            f"building the kernel needs {', '.join(missing)} "
            "(apt-get install build-essential flex bison bc libelf-dev xz-utils)"
        )


def _extract(deb: Path, into: Path) -> Path:
    """The kernel tree from Debian's source package, without Documentation (but its Kconfig)."""
    members = debs.ar_members(deb.read_bytes())
    name = next(n for n in members if n.startswith("data.tar"))
    if not name.endswith(".xz"):
        raise KernelError(f"{deb.name}: unexpected {name}")
    with tarfile.open(fileobj=lzma.LZMAFile(io.BytesIO(members[name]))) as tar:
        inner = next((m for m in tar if m.name.endswith(".tar.xz")), None)
        if inner is None:
            raise KernelError(f"{deb.name} holds no source tarball")
        stream = tar.extractfile(inner)
        assert stream is not None
        into.mkdir(parents=True)
        untar = subprocess.Popen(
            ["tar", "-xJ", "-C", str(into), "--exclude=*/Documentation/*"],
            stdin=subprocess.PIPE,
        )
        assert untar.stdin is not None
        shutil.copyfileobj(stream, untar.stdin, 1 << 20)
        untar.stdin.close()
        if untar.wait() != 0:
            raise KernelError("unpacking the kernel source failed")
    tree = next(into.iterdir())
    # Kconfig sources Documentation/Kconfig: an empty one serves
    (tree / "Documentation").mkdir(exist_ok=True)
    (tree / "Documentation" / "Kconfig").touch()
    return tree


def _verify(config: Path) -> None:
    have = dict(re.findall(r"^(CONFIG_\w+)=(.*)$", config.read_text(), re.M))
    want = dict(re.findall(r"^(CONFIG_\w+)=(.*)$", CONFIG.read_text(), re.M))
    lost = [f"{k}={v}" for k, v in want.items() if have.get(k) != v]
    if lost:
        raise KernelError(f"Kconfig dropped {', '.join(lost)}: their dependencies are missing")


def build(say: Callable[[str], None], jobs: int | None = None, force: bool = False) -> Kernel:
    """Build our kernel from Debian's source package with the committed config; cache it.
    One build at a time per cache: a second caller waits for the first and takes its
    kernel (CI starts the build beside the linters; the image tests then wait for it)."""
    folder = cache_dir() / "kernel"
    folder.mkdir(parents=True, exist_ok=True)
    building = own() is None or force

    def waiting() -> None:
        if building:
            say("Another build of the kernel is under way: waiting for it")

    with locks.waited(folder / ".lock", waiting) as other:
        # what another build made is what was asked for
        return _build_locked(say, jobs, force and not other)


def _build_locked(say: Callable[[str], None], jobs: int | None, force: bool) -> Kernel:
    cached = own()
    if cached is not None and not force:
        say(f"Kernel ready: {cached.image} ({cached.image.stat().st_size / 1e6:.1f} MB, cached)")
        return cached
    _check_tools()
    start = time.monotonic()
    name = debs.parse_depends(debs.control_fields(debs.fetch(SOURCE))["Depends"])[0][0]
    deb = debs.fetch(name)
    version = debs.control_fields(deb)["Version"]
    work = cache_dir() / "kernel" / "build"
    shutil.rmtree(work, ignore_errors=True)
    say(f"Unpacking {name} {version}")
    tree = _extract(deb, work)
    env = {**os.environ, **REPRODUCIBLE}
    log = work / "build.log"
    jobs = jobs or os.cpu_count() or 1
    say(f"Building the kernel ({jobs} jobs; log in {log})")
    with log.open("wb") as out:
        for target in (["allnoconfig", f"KCONFIG_ALLCONFIG={CONFIG}"], [f"-j{jobs}", "bzImage"]):
            done = subprocess.run(
                ["make", "-C", str(tree), *target],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                check=False,
            )
            if done.returncode != 0:
                tail = log.read_text("utf-8", "replace").strip().splitlines()[-3:]
                raise KernelError(f"the kernel build failed: {' | '.join(tail)}")
            if target[0] == "allnoconfig":
                _verify(tree / ".config")
    final = cache_dir() / "kernel" / f"{config_key()}-{version}"
    final.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tree / ".config", final / "config")
    shutil.copyfile(tree / "arch" / "x86" / "boot" / "bzImage", final / "bzImage.partial")
    (final / "bzImage.partial").replace(final / "bzImage")
    shutil.rmtree(work, ignore_errors=True)
    deb.unlink(missing_ok=True)  # 140 MB, needed again only for another config
    kernel = own()
    assert kernel is not None
    size = kernel.image.stat().st_size
    say(f"Kernel ready: {kernel.image} ({size / 1e6:.1f} MB) in {time.monotonic() - start:.0f} s")
    return kernel
