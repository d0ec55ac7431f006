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
from datetime import UTC, datetime

from benchlib import cpu_model, git_commit, write_section

from retreatkit.transfer.offer import MAX_ENTRIES, MAX_OFFER, Entry, Offer


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
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join(
        [
            "## bob offers (bench/offer.py)",
            "",
            f"Command (commit {git_commit()}, {when}):",
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
        ]
    )
    if not args.no_write:
        write_section("## bob offers (bench/offer.py)", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
