"""Disk I/O off the mirror's event loop: what it costs, by way (inline, a thread, aiofiles).

    uv run python bench/mirror_io.py [--rounds 2000] [--fill-mib 64]

In one process under uvloop, as the mirror runs, with the page cache warm:
  read   a small blob read whole (what a hot-cache miss does): 50 KiB and 500 KiB
  fill   a download written in 256 KiB chunks, sha256 on the way in (what a fill does)
  copy   a large file read in 1 MiB chunks (the path when loop.sendfile is missing)
each done inline on the loop, with asyncio.to_thread, and with aiofiles. CPU is this
process's user+sys (every thread) from getrusage; "loop held" is the wall time the event
loop could not run anything else, per operation. Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiofiles
import uvloop
from benchlib import self_cpu as cpu

CHUNK = 256 * 1024
COPY = 1024 * 1024


async def measure(rounds: int, op: Callable[[], Awaitable[float]]) -> tuple[float, float]:
    """(CPU µs per op, loop-held µs per op)."""
    for _ in range(min(50, rounds)):
        await op()
    held, start = 0.0, cpu()
    for _ in range(rounds):
        held += await op()
    return (cpu() - start) / rounds * 1e6, held / rounds * 1e6


def inline_read(path: Path) -> Callable[[], Awaitable[float]]:
    async def op() -> float:
        t = time.perf_counter()
        path.read_bytes()  # noqa: ASYNC240 - the inline way is what is measured
        return time.perf_counter() - t

    return op


def thread_read(path: Path) -> Callable[[], Awaitable[float]]:
    async def op() -> float:
        await asyncio.to_thread(path.read_bytes)
        return 0.0

    return op


def aiofiles_read(path: Path) -> Callable[[], Awaitable[float]]:
    async def op() -> float:
        async with aiofiles.open(path, "rb") as f:
            await f.read()
        return 0.0

    return op


def chunk_writer(way: str, folder: Path, data: bytes) -> Callable[[], Awaitable[float]]:
    """One 256 KiB chunk of a fill: sha256 and a write, like BlobWriter.write."""
    digest = hashlib.sha256()
    fd = os.open(folder / f"fill-{way}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    handle: list[object] = []

    def write() -> None:
        digest.update(data)
        os.write(fd, data)

    async def inline() -> float:
        t = time.perf_counter()
        write()
        return time.perf_counter() - t

    async def thread() -> float:
        await asyncio.to_thread(write)
        return 0.0

    async def with_aiofiles() -> float:
        if not handle:
            handle.append(await aiofiles.open(folder / "fill-aiofiles", "wb"))
        t = time.perf_counter()
        digest.update(data)  # aiofiles moves the write only; the hash stays on the loop
        held = time.perf_counter() - t
        f = handle[0]
        assert hasattr(f, "write")
        await f.write(data)
        return held

    return {"inline": inline, "to_thread": thread, "aiofiles": with_aiofiles}[way]


def chunk_reader(way: str, path: Path, size: int) -> Callable[[], Awaitable[float]]:
    """One 1 MiB chunk of a large file, read in order, like FileSlice's copy."""
    fd = os.open(path, os.O_RDONLY)
    state = {"at": 0}
    handle: list[object] = []

    def step() -> int:
        at = state["at"]
        state["at"] = (at + COPY) % size
        return at

    async def inline() -> float:
        t = time.perf_counter()
        os.pread(fd, COPY, step())
        return time.perf_counter() - t

    async def thread() -> float:
        await asyncio.to_thread(os.pread, fd, COPY, step())
        return 0.0

    async def with_aiofiles() -> float:
        if not handle:
            handle.append(await aiofiles.open(path, "rb"))
        f = handle[0]
        assert hasattr(f, "read") and hasattr(f, "seek")
        if step() == 0:
            await f.seek(0)
        await f.read(COPY)
        return 0.0

    return {"inline": inline, "to_thread": thread, "aiofiles": with_aiofiles}[way]


async def main(rounds: int, fill_mib: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mirror-io-") as tmp:
        folder = Path(tmp)
        print(f"{'operation':<34}{'way':<11}{'CPU µs/op':>10}{'loop held µs/op':>17}")
        for size in (50 * 1024, 500 * 1024):
            path = folder / f"blob-{size}"
            path.write_bytes(os.urandom(size))
            for way, op in (
                ("inline", inline_read(path)),
                ("to_thread", thread_read(path)),
                ("aiofiles", aiofiles_read(path)),
            ):
                used, held = await measure(rounds, op)
                print(f"{f'read a {size // 1024} KiB blob':<34}{way:<11}{used:>10.1f}{held:>17.1f}")
        data = os.urandom(CHUNK)
        chunks = fill_mib * 1024 * 1024 // CHUNK
        for way in ("inline", "to_thread", "aiofiles"):
            used, held = await measure(chunks, chunk_writer(way, folder, data))
            print(f"{'fill: sha256 + write, 256 KiB':<34}{way:<11}{used:>10.1f}{held:>17.1f}")
        big = folder / "large"
        big.write_bytes(os.urandom(fill_mib * 1024 * 1024))
        for way in ("inline", "to_thread", "aiofiles"):
            used, held = await measure(rounds, chunk_reader(way, big, fill_mib * 1024 * 1024))
            print(f"{'copy: read 1 MiB in order':<34}{way:<11}{used:>10.1f}{held:>17.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--fill-mib", type=int, default=64)
    args = parser.parse_args()
    uvloop.run(main(args.rounds, args.fill_mib))
