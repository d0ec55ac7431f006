"""The dashboard under a log flood: key-press latency and memory while lines arrive.

A fake admin endpoint streams RATE log lines a second for SECONDS over `GET /logs`; the
dashboard runs headless (Textual's test driver) on the logs screen, and every 100 ms a
key is pressed (switching the service filter) and the time until the app has handled it
is taken. RSS is sampled each second. Run: `uv run python bench/dashboard.py` (the full
10,000 lines/s for 30 s); `--rate 500 --seconds 2` checks that it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import time
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retreatkit.admin.process import rss_bytes
from retreatkit.tui.app import Dashboard
from retreatkit.tui.sources import Endpoint
from retreatkit.tui.testing import FakeAdmin, canned, serve


class Flood(FakeAdmin):
    rate: int = 10_000
    seconds: float = 30.0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path != "/logs":
            return web.json_response(canned() if request.path == "/status" else {})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        seq, start, tick = 0, time.monotonic(), 0.01  # 100 batches a second
        while time.monotonic() - start < self.seconds:
            due = int((time.monotonic() - start) * self.rate)
            chunk = []
            while seq < due:
                seq += 1
                record = {"seq": seq, "at": "2026-01-01T10:00:00.000+00:00",
                          "service": ("relay", "mirror", "nameserver")[seq % 3],
                          "level": "INFO", "logger": "retreatkit.relay",
                          "message": f"line {seq} from 10.0.0.{seq % 250} [bold]x[/]"}  # fmt: skip
                chunk.append(f"data: {json.dumps(record)}\n\n")
            if chunk:
                await response.write("".join(chunk).encode())
            await asyncio.sleep(tick)
        await asyncio.Event().wait()
        return response


async def run(rate: int, seconds: float) -> dict[str, float]:
    flood = Flood()
    flood.rate, flood.seconds = rate, seconds
    latencies: list[float] = []
    rss: list[int] = []
    with serve(flood) as fake:
        app = Dashboard([Endpoint(fake.url)], interval=1.0)
        async with app.run_test(size=(160, 50)) as pilot:
            await pilot.press("5")
            start = time.monotonic()
            next_sample = start
            while time.monotonic() - start < seconds:
                t0 = time.perf_counter()
                await pilot.press("s")  # returns once the app has handled the key
                latencies.append((time.perf_counter() - t0) * 1000)
                if time.monotonic() >= next_sample:
                    rss.append(rss_bytes() or 0)
                    next_sample += 1.0
                await asyncio.sleep(0.1)
            received = app.logs.received
    latencies.sort()
    return {
        "lines_received": received,
        "lines_per_second": received / seconds,
        "keys": len(latencies),
        "key_ms_median": statistics.median(latencies),
        "key_ms_p99": latencies[int(len(latencies) * 0.99) - 1] if latencies else 0.0,
        "key_ms_max": latencies[-1],
        "rss_mib_first": rss[0] / 2**20,
        "rss_mib_last": rss[-1] / 2**20,
        "rss_mib_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=10_000, help="log lines a second")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    result = asyncio.run(run(args.rate, args.seconds))
    for key, value in result.items():
        print(f"{key:18} {value:,.1f}")


if __name__ == "__main__":
    main()
