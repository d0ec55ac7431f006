"""The sender's read-and-seal loop alone: CPU per GiB by the size of each read from the file.

    uv run python bench/sender_reads.py [--size-mib 512] [--rounds 5] [--sizes-kib 64,128,256,1024]

In one process, as `bob send` does it: a real session past its handshake and offer, and
the kit's own source.Producer reading one random file (page cache warm) and sealing its
records into 1 MiB batches, which are dropped (the socket's copy is not in this figure).
The read sizes take turns round after round, so a machine whose speed drifts (a shared
host) drifts under all of them alike. CPU is this process's user+sys from getrusage.
Prints the medians; writes nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Sequence

from benchlib import WORK
from benchlib import self_cpu as cpu

from retreatkit.transfer import source
from retreatkit.transfer.records import RECORD_SIZE
from retreatkit.transfer.testing import accepted_pair


def make_file(size_mib: int) -> str:
    path = WORK / f"sender-reads-{size_mib}.bin"
    if not path.exists() or path.stat().st_size != size_mib << 20:
        WORK.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            for _ in range(size_mib):
                out.write(os.urandom(1 << 20))
    with open(path, "rb") as warm:  # into the page cache: what a sender reads was just there
        while warm.read(1 << 24):
            pass
    return str(path)


def one_run(path: str, read_size: int) -> float:
    """CPU seconds to read and seal the whole file with reads of `read_size` bytes."""
    source.READ_SIZE = read_size
    sources = source.collect([path])
    session, _ = accepted_pair(sources.offer)
    producer = source.Producer(session, sources, compress=True)
    start = cpu()
    while producer.fill():
        producer.take()
    producer.take()
    return cpu() - start


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size-mib", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sizes-kib", default="64,128,256,1024")
    args = p.parse_args(argv)
    sizes = [int(s) * 1024 for s in args.sizes_kib.split(",")]
    if any(s % RECORD_SIZE for s in sizes):
        p.error(f"each read size is a whole number of {RECORD_SIZE // 1024} KiB records")
    path = make_file(args.size_mib)
    gib = args.size_mib / 1024
    runs: dict[int, list[float]] = {s: [] for s in sizes}
    for _ in range(args.rounds):
        for size in sizes:
            runs[size].append(one_run(path, size))
    print(f"{args.size_mib} MiB, {args.rounds} rounds; CPU s per GiB read and sealed")
    print(f"{'read KiB':>9} {'median':>8} {'min':>8} {'max':>8}")
    for size, cpus in runs.items():
        per = [c / gib for c in cpus]
        print(f"{size // 1024:>9} {statistics.median(per):8.3f} {min(per):8.3f} {max(per):8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
