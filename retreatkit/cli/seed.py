"""`retreatkit mirror seed`: warm a serving mirror, or a store directly, and say what it did."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from retreatkit import hosting, loop, units
from retreatkit.mirror import seedfiles, upstreams
from retreatkit.mirror.hosted import MirrorService
from retreatkit.mirror.seed import AptScope, Filters, Seeder, SeedError, Summary

SERVING_FLAGS = ("store", "pypi", "opam", "npm", "apt", "max_size_bytes")


def wants(args: argparse.Namespace) -> seedfiles.Read:
    found = seedfiles.Read()
    for name in args.files:
        kind, path = seedfiles.kind_of(name)
        part = seedfiles.read(kind, path)
        found.wants += part.wants
        found.notes += part.notes
    if args.kit:
        part = seedfiles.running_kit()
        found.wants += part.wants
        found.notes += part.notes
    return found


def scope(args: argparse.Namespace) -> AptScope:
    dists = []
    for item in args.apt_dist or []:
        origin, sep, suite = item.partition("/")
        if not sep or not origin or not suite or "/" in suite:
            raise ValueError(f"--apt-dist {item}: expected NAME/SUITE (debian/bookworm)")
        dists.append((origin, suite))
    arch = args.apt_arch or upstreams.dpkg_arch()
    return AptScope(tuple(dists), arch, not args.no_depends)


def run(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    given = [f for f in SERVING_FLAGS if getattr(args, f, None) is not None]
    if args.mirror and given:
        flags = ", ".join("--" + f.replace("_bytes", "").replace("_", "-") for f in given)
        raise ValueError(f"--mirror warms a serving mirror with its own upstreams: drop {flags}")
    if not args.files and not args.kit:
        raise ValueError("name the files to seed from (or --kit)")
    read = wants(args)
    filters = Filters(tuple(args.platform or ()), tuple(args.python or ()))
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, disable=not console.is_terminal,
    )  # fmt: skip

    async def main() -> int:
        with bar:
            task = bar.add_task("reading indexes", total=None)
            summary = await seed(
                args, cfg, read.wants, filters, scope(args),
                lambda n: bar.update(task, total=n, description=f"fetching {n} files"),
                lambda: bar.advance(task),
            )  # fmt: skip
        return report(summary, read.notes)

    try:
        return loop.run(main)
    except SeedError as exc:
        print(f"retreatkit: {exc}", file=sys.stderr)
        return 1


async def seed(
    args: argparse.Namespace, cfg: dict[str, Any], wanted: list[seedfiles.Want],
    filters: Filters, apt: AptScope, on_total: Any, on_item: Any,
) -> Summary:  # fmt: skip
    """Through the serving mirror at --mirror, or a private one over the store, on loopback."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        if args.mirror:
            seeder = Seeder(session, args.mirror, filters, apt, on_total, on_item)
            return await seeder.run(wanted)
        section = dict(cfg["mirror"])
        hosting.apply_mirror_flags(section, vars(args))
        section["listen"] = "127.0.0.1:0"
        service = MirrorService.from_config(section)
        await service.start(CollectorRegistry(), lambda line: None)
        try:
            assert service.url is not None
            seeder = Seeder(session, service.url, filters, apt, on_total, on_item)
            return await seeder.run(wanted)
        finally:
            if service.own_wheel is not None:
                await asyncio.gather(service.own_wheel, return_exceptions=True)
            await service.stop()


def report(s: Summary, notes: list[str]) -> int:
    total = s.fetched + s.already + len(s.failed)
    print(
        f"Seeded {total} files: {s.fetched} fetched ({units.size(s.fetched_bytes)}),"
        f" {s.already} already there, {len(s.failed)} failed."
    )
    for what, why in sorted(s.failed):
        print(f"  failed: {what}: {why}")
    for note in [*notes, *s.notes]:
        print(f"  note: {note}")
    sys.stdout.flush()
    return 1 if s.failed else 0
