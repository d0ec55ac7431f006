"""Test tools shipped with the code: run services as real processes on loopback."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import queue
import re
import select
import subprocess
import sys
import tempfile
import termios
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

START_TIMEOUT = 30.0


class ProcessFailed(AssertionError):
    pass


@dataclass
class Process:
    """A child process whose stderr is read line by line in a thread."""

    popen: subprocess.Popen[bytes]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)
    pump: threading.Thread | None = None

    @classmethod
    def start(
        cls,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdin: IO[bytes] | int = subprocess.DEVNULL,
    ) -> Process:
        popen = subprocess.Popen(
            list(argv),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        return cls.reading(popen)

    @classmethod
    def reading(cls, popen: subprocess.Popen[bytes]) -> Process:
        """`popen` (its stderr a pipe), its stderr read from now on."""
        proc = cls(popen)
        assert popen.stderr is not None
        proc.pump = threading.Thread(target=proc._pump, args=(popen.stderr,), daemon=True)
        proc.pump.start()
        return proc

    def _pump(self, stream: IO[bytes]) -> None:
        try:
            for raw in stream:
                self.lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        except (ValueError, OSError):
            pass  # closed under it by whoever holds the process
        finally:
            stream.close()  # at the end: where _close_pipes left it to the reader
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """Block until a stderr line matches `pattern`; fail if the process ends first."""
        regex = re.compile(pattern)
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise ProcessFailed(f"no line matching {pattern!r}; saw {self.seen}") from None
            if line is None:
                raise ProcessFailed(f"process ended before {pattern!r}; saw {self.seen}")
            self.seen.append(line)
            match = regex.search(line)
            if match:
                return match

    def finish(self, timeout: float = START_TIMEOUT) -> tuple[int, list[str]]:
        """Wait for the exit; returns the exit code and every stderr line."""
        code = self.popen.wait(timeout)
        while (line := self.lines.get(timeout=timeout)) is not None:
            self.seen.append(line)
        self._close_pipes()
        return code, self.seen

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._close_pipes()
        return self.popen.returncode

    def _close_pipes(self) -> None:
        # the reader reads stderr to the end and closes it: closing a stream another
        # thread reads from fails that read in ways of its own, and waits on the reader.
        # A child that outlived the process and holds the pipe keeps it open until it ends.
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        if self.pump is None and self.popen.stderr is not None:
            self.popen.stderr.close()


@dataclass
class RelayProcess:
    process: Process
    host: str
    port: int
    admin: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.admin}/status", timeout=10) as response:  # noqa: S310
            doc: dict[str, Any] = json.load(response)
        return doc

    def stop(self) -> int:
        return self.process.stop()


def bob_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "retreatkit.cli.bob", *args]


def start_relay(config: Path | None = None, wrapper: Sequence[str] = ()) -> RelayProcess:
    """`wrapper`: a command the relay runs under (`prlimit --nofile=200:200 --`)."""
    args = ["relay", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
    if config is not None:
        args += ["--config", str(config)]
    proc = Process.start([*wrapper, *bob_argv(*args)])
    try:
        listening = proc.wait_for(r"^Relay listening on (\S+):(\d+)$")
        admin = proc.wait_for(r"^Admin on (http://\S+)/status$")
    except ProcessFailed:
        proc.stop()
        raise
    return RelayProcess(proc, listening[1], int(listening[2]), admin[1])


def open_fds(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ProcessFailed("no VmRSS")


@dataclass
class Terminal:
    """A process on a pseudo-terminal of its own (its controlling terminal, so Ctrl-C and
    prompts behave as they do for a person), and what it draws, read up to a marker."""

    popen: subprocess.Popen[bytes]
    fd: int  # our end of the terminal
    unread: bytes = b""  # read past the last marker: the next one may be in it

    @classmethod
    def start(cls, argv: list[str], env: dict[str, str] | None = None) -> Terminal:
        ours, theirs = pty.openpty()
        popen = subprocess.Popen(
            argv,
            stdin=theirs,
            stdout=theirs,
            stderr=theirs,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # a session whose controlling terminal is the pty
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(theirs)
        return cls(popen, ours)

    def until(self, marker: bytes, timeout: float = START_TIMEOUT) -> bytes:
        """What the terminal shows up to and including `marker`."""
        seen, self.unread = self.unread, b""
        deadline = time.monotonic() + timeout
        while marker not in seen:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"no {marker!r} on the terminal; saw {seen!r}")
            try:
                seen += os.read(self.fd, 4096)
            except OSError:  # the process's end closed
                raise AssertionError(f"terminal closed before {marker!r}; saw {seen!r}") from None
        end = seen.index(marker) + len(marker)
        self.unread = seen[end:]
        return seen[:end]

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def close(self) -> None:
        self.popen.kill()
        self.popen.wait()
        os.close(self.fd)


@contextmanager
def scratch_disk(size: str, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of `size`, mounted read-only if asked, as root (gone with everything on it
    at umount); else a folder (read-only by its mode, which root would ignore)."""
    with tempfile.TemporaryDirectory(prefix="rkbob-") as folder:
        if os.geteuid() != 0:
            path = Path(folder)
            path.chmod(0o500 if read_only else 0o700)
            try:
                yield path
            finally:
                path.chmod(0o700)
            return
        options = f"size={size}" + (",ro" if read_only else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", folder], check=True)
        try:
            yield Path(folder)
        finally:  # lazily: a process that failed may still hold a file open
            subprocess.run(["umount", "--lazy", folder], check=True)


@contextmanager
def read_only_view(folder: Path) -> Iterator[Path]:
    """`folder` seen through a read-only bind mount (root only): what a service meets in
    a folder it cannot write whatever its mode says (a disk mounted read-only, a
    container's read-only volume), with what was in it before."""
    with tempfile.TemporaryDirectory(prefix="rkro-") as view:
        subprocess.run(["mount", "--bind", str(folder), view], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", view], check=True)
            yield Path(view)
        finally:  # lazily: a process that failed may still hold a file open
            subprocess.run(["umount", "--lazy", view], check=True)


def fill(disk: Path) -> None:
    """Write to `disk` until it has no room left (a scratch_disk: gone at umount)."""
    with contextlib.suppress(OSError), (disk / "filler").open("wb", buffering=0) as out:
        while True:
            out.write(b"\0" * 65536)
