"""What the build's own links share: gcc run against the C library the image ships, and no
unwind tables.

Nothing in a guest unwinds the C stack. C has no exceptions; glibc unwinds only for
pthread_exit and thread cancellation, and does so through libgcc_s.so.1, which no image
ships; faulthandler prints Python's frames, not C's. So what the build links itself (the
interpreter, OpenSSL's two libraries, SQLite) leaves out `.eh_frame` and its index: 1.1 MB
of the mirror's files, 0.28 MB of its image.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from retreatkit.image import debs
from retreatkit.image.sysroot import MULTIARCH

TOOLS = ("gcc", "ld")
# GNU ld: an implicit script that adds one rule to its default one; `.eh_frame_hdr` goes
# with --no-eh-frame-hdr
NO_UNWIND_SCRIPT = "SECTIONS { /DISCARD/ : { *(.eh_frame) } }\nINSERT AFTER .text;\n"
NO_UNWIND_FLAGS = ("-Wl,--no-eh-frame-hdr", "-Wl,-T,no-unwind.ld")
NO_UNWIND_CFLAGS = ("-fno-asynchronous-unwind-tables", "-fno-unwind-tables")


class LinkError(RuntimeError):
    """gcc could not compile or link: the message says why."""


def no_unwind(folder: Path) -> list[str]:
    """gcc's flags for a link in `folder` that leaves the unwind tables out."""
    (folder / "no-unwind.ld").write_text(NO_UNWIND_SCRIPT)
    return list(NO_UNWIND_FLAGS)


@dataclass(frozen=True)
class Libc:
    """The C library of the versions the image ships: libc.so.6 to link against (libc6),
    the start files and libc_nonshared.a (libc6-dev). Nothing of the host's goes in."""

    libc: debs.Package
    dev: debs.Package

    @property
    def dev_lib(self) -> Path:
        return self.dev.tree / "usr" / "lib" / MULTIARCH

    def start(self) -> list[str]:
        """gcc's flags before the inputs: crti.o and crtn.o from libc6-dev, no host libc."""
        return ["-B", f"{self.dev_lib}/", "-nodefaultlibs"]

    def end(self) -> list[str]:
        """The inputs after the objects: libc itself, its static part, libgcc."""
        libc = self.libc.tree / "lib" / MULTIARCH / "libc.so.6"
        return [str(libc), str(self.dev_lib / "libc_nonshared.a"), "-lgcc"]


def libc() -> Libc:
    """libc6 as the image takes it, and libc6-dev of the same version."""
    package = debs.package("libc6")
    return Libc(package, debs.package("libc6-dev", package.version))


def tool_hashes() -> str:
    """The linker's and compiler's program files, hashed: part of a cached link's key."""
    found = []
    for tool in TOOLS:
        path = shutil.which(tool)
        if path is None:
            raise LinkError(f"{tool} not found")
        found.append(hashlib.sha256(Path(path).resolve().read_bytes()).hexdigest())
    return "\n".join(found)


def some(names: list[str]) -> str:
    """The first few of `names` for a one-line error: "a, b, c, d, e and 7 more"."""
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def run(args: list[str], folder: Path, what: str) -> None:
    """Run gcc's `args` in `folder`; `what` ("the link", "compiling main.c") names the step
    in the one line a failure gives."""
    # gcc finds cc1, as and ld from where it was started, and by PATH: a build run with
    # no PATH (the tests' isolated environment) has gcc fail with "cannot execute cc1"
    env = {**os.environ, "PATH": os.environ.get("PATH") or os.defpath, "LC_ALL": "C"}
    try:
        done = subprocess.run(
            args, cwd=folder, env=env, capture_output=True, text=True, timeout=600,
            check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except FileNotFoundError:
        raise LinkError(f"{Path(args[0]).name} not found") from None
    except subprocess.TimeoutExpired:
        raise LinkError(f"{what} took over 10 minutes") from None
    except OSError as exc:
        raise LinkError(f"gcc could not run: {exc.strerror or exc}") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        # gcc's last line is "compilation terminated."; the error is before it
        said = next((line for line in lines if "error" in line), lines[-1])
        raise LinkError(f"{what} failed: {said.strip()}")
