"""What reading a peer's offer costs the receiver before it shows the prompt: CPU and memory.

Two offers of 100,000 entries: a hostile one at the size limit (a chain of 44 folders,
every file at the bottom, so every path repeats all 44 names), and one shaped like a
big source tree (six levels). CPU is the decode alone, median of --rounds; memory is
the peak tracemalloc sees during a separate decode (tracemalloc slows it down).

    uv run python bench/offer.py [--rounds 3] [--no-write]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import tracemalloc

from benchlib import cpu_model, stamp, write_section

from retreatkit.transfer.offer import MAX_ENTRIES, MAX_OFFER, Entry, Offer

# measured once, when the reader changed, and kept with each run's figures
BEFORE = """\
Before, the same run with the offer read as one JSON document (json.loads, then each
entry checked; `git stash` of retreatkit/transfer/offer.py, same machine, minutes
before): hostile 2.91 CPU s and 351 MB peak, source tree 0.67 s and 81 MB. The hostile
offer's 4.5 million path names were 4.5 million strings; read entry by entry, a path
holds its folder's own names, and a name checked once is not checked again. Offers no
honest bob sends (tests/transfer/test_offer.py pins them), against this reader as first
written, with plain quantifiers and folders checked only once all entries were read: a
name of 4 million escapes (8 MB) took 583 MB of the matcher's backtracking records, now
8 MB; 20,000 paths of 64 names never listed as folders (14 MB) 134 MB and 5.0 CPU s
before the first was refused, now 15 MB and 0.00 s. A name of 2 million control
characters (12 MB) took 306 MB to show in its error, escaped whole before it was cut,
now 36 MB.
"""


def chain_offer(depth: int, name: str, entries: int = MAX_ENTRIES) -> bytes:
    """`depth - 1` nested folders named `name` plus a number, then files at the bottom."""
    folders = [
        Entry(tuple(f"{name}{d:02d}" for d in range(n)), is_dir=True) for n in range(1, depth)
    ]
    bottom = folders[-1].path
    files = [Entry((*bottom, f"f{i}"), size=1) for i in range(entries - len(folders))]
    return Offer(entries=(*folders, *files)).encode()[4:]


def measure(body: bytes, rounds: int) -> tuple[float, float]:
    """The median CPU seconds of a decode, and the peak MB tracemalloc saw in one."""
    cpu = []
    for _ in range(rounds):
        start = time.process_time()
        Offer.decode(body)
        cpu.append(time.process_time() - start)
    tracemalloc.start()
    try:
        Offer.decode(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return statistics.median(cpu), peak / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only, keep RESULTS.md")
    args = parser.parse_args()
    offers = {
        "hostile: 44 folders deep, 2-letter names": chain_offer(45, "ab"),
        "source tree: 6 levels, 8-letter names": chain_offer(6, "abcdefgh"),
    }
    rows = []
    for label, body in offers.items():
        assert len(body) <= MAX_OFFER, label
        cpu, peak = measure(body, args.rounds)
        rows.append(f"| {label} | {len(body) / 1e6:.1f} | {cpu:.2f} | {peak:.0f} |")
        print(rows[-1], flush=True)
    text = "\n".join(
        [
            "## bob offers (bench/offer.py)",
            "",
            f"Command ({stamp()}):",
            "",
            f"    uv run python bench/offer.py --rounds {args.rounds}",
            "",
            f"Machine: {cpu_model()}, Python {platform.python_version()}. 100,000 entries each;"
            " CPU is Offer.decode alone (median), memory the peak tracemalloc saw in it.",
            "",
            "| offer | MB | decode CPU s | peak MB |",
            "|---|---|---|---|",
            *rows,
            "",
            BEFORE,
        ]
    )
    if not args.no_write:
        write_section("## bob offers (bench/offer.py)", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
