"""Test tools for images: build them once per run, boot them with `retreatkit image run`."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retreatkit.image import spec
from retreatkit.image.elf import Elf
from retreatkit.image.paths import cache_dir
from retreatkit.testing import Process

BOOT_TIMEOUT = 180.0  # a loaded CI machine emulating the guest: generous
LINE = re.compile(
    r"^(?:Forward (tcp|udp) (\S+):(\d+) -> guest port (\d+)"
    r"|Guest (\S+) up; admin on (http://\S+)/status"
    r"|The guest's own admin token is in (/\S+))$"
)


def guest_libraries(
    libraries: dict[str, tuple[Path, Any]], program: Path, folder: Path
) -> list[str]:
    """The libraries an image ships (`sysroot.Libraries.resolve`'s answer), in `folder` and
    nothing else; the command that runs `program` on them through the image's own loader,
    as the guest does (no qemu: the same programs run here)."""
    folder.mkdir()
    for soname, (path, _) in libraries.items():
        shutil.copyfile(path, folder / soname)
    loader = folder / Path(Elf.read(program).interpreter() or "").name
    loader.chmod(0o755)
    return [str(loader), "--library-path", str(folder), str(program)]


def manifest(service: str, kernel: int = 0, initramfs: int = 0) -> dict[str, Any]:
    """What `image build SERVICE` writes in manifest.json and `image run` reads, for an
    image folder whose kernel and initramfs are `kernel` and `initramfs` bytes."""
    image = spec.spec(service)
    return {
        "service": service,
        "machine": "microvm",
        "kernel": {"kind": "own", "label": "test", "size_bytes": kernel},
        "initramfs": {"size_bytes": initramfs},
        "size_bytes": kernel + initramfs,
        "ports": [[proto, port] for proto, port in image.ports],
        "admin_port": spec.ADMIN_PORT,
        "disk": image.disk,
    }


def retreatkit_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "retreatkit.cli.main", *args]


def isolated_env(home: Path) -> dict[str, str]:
    """State, data and home in `home`; the cache (packages, kernels) shared between runs."""
    return {
        "HOME": str(home),
        "XDG_STATE_HOME": str(home / "state"),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CACHE_HOME": str(cache_dir().parent),
    }


def up_config(folder: Path, more: str = "") -> Path:
    """`folder/retreat.toml` for an `up` whose services listen on loopback ports of their
    own and fetch from nowhere; `more` follows the [nameserver] section's lines."""
    config = folder / "retreat.toml"
    config.write_text(
        '[admin]\nlisten = "127.0.0.1:0"\n[relay]\nlisten = "127.0.0.1:0"\n'
        f'[mirror]\nlisten = "127.0.0.1:0"\nstore = "{folder / "store"}"\n'
        'pypi = "http://127.0.0.1:1/simple/"\nopam = "http://127.0.0.1:1/opam"\n'
        '[nameserver]\nlisten = "127.0.0.1:0"\nupstreams = ["127.0.0.1:9"]\n' + more
    )
    return config


def build_image(service: str, out: Path, env: dict[str, str]) -> Path:
    """`retreatkit image build SERVICE -o OUT`; its last line says what was built."""
    done = subprocess.run(
        retreatkit_argv("image", "build", service, "-o", str(out)),
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"image build {service} failed: {done.stderr}")
    last = done.stderr.splitlines()[-1]
    if not re.match(rf"^Built {re.escape(str(out / service))}: kernel \d+\.\d MB \+ initramfs "
                    r"\d+\.\d MB = \d+\.\d MB$", last):  # fmt: skip
        raise AssertionError(f"image build {service} said {last!r}")
    return out / service


@dataclass
class GuestProcess:
    """A `retreatkit image run` process whose guest said it is up."""

    process: Process
    forwards: dict[tuple[str, int], tuple[str, int]]  # (proto, guest port) -> host address
    admin: str
    token: str  # the guest's own admin token, made for this run

    def port(self, guest_port: int, proto: str = "tcp") -> int:
        return self.forwards[(proto, guest_port)][1]

    def interrupt(self) -> tuple[int, list[str]]:
        """Ctrl-C, as at a terminal; returns the exit code and every line printed."""
        self.process.popen.send_signal(signal.SIGINT)
        return self.process.finish(BOOT_TIMEOUT)

    def stop(self) -> None:
        if self.process.popen.poll() is None:
            self.interrupt()
        self.process.stop()


def start_guest(
    image: Path, *args: str, env: dict[str, str], config: Path | None = None
) -> GuestProcess:
    top = ["--config", str(config)] if config else []
    proc = Process.start(retreatkit_argv(*top, "image", "run", str(image), *args), env=env)
    forwards: dict[tuple[str, int], tuple[str, int]] = {}
    token = ""
    try:
        while True:
            match = proc.wait_for(LINE.pattern, BOOT_TIMEOUT)
            if match[6]:
                return GuestProcess(proc, forwards, match[6], token)
            if match[7]:
                token = Path(match[7]).read_text().strip()
                continue
            forwards[(match[1], int(match[4]))] = (match[2], int(match[3]))
    except BaseException:
        proc.popen.send_signal(signal.SIGINT)
        proc.stop()
        raise
