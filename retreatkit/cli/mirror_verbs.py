"""`retreatkit mirror export`, `import` and `add`: a store on a USB stick, and your own files."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from retreatkit import units
from retreatkit.admin import token as admin_token
from retreatkit.mirror import bundle, local
from retreatkit.mirror.hosted import default_store
from retreatkit.mirror.store import Store


def store_path(args: argparse.Namespace, cfg: dict[str, Any]) -> Path:
    return Path(args.store or cfg["mirror"]["store"] or default_store())


def progress_bar(what: str, total: int) -> Progress:
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=console, disable=not console.is_terminal,
    )  # fmt: skip
    bar.add_task(what, total=total)
    return bar


def _damage(lines: list[str]) -> int:
    for line in lines:
        print(line)
    return 1 if lines else 0


def export(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    root, dest = store_path(args, cfg), Path(args.dest)
    blobs, size = bundle.plan_export(root)
    with progress_bar(f"exporting {blobs} files", size) as bar:
        report = bundle.export(root, dest, lambda n: bar.advance(bar.task_ids[0], n))
    print(
        f"Exported {report.blobs} files ({units.size(report.bytes)}) to {dest};"
        f" {report.already} already there."
    )
    return _damage(report.damaged)


def take(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    root, src = store_path(args, cfg), Path(args.src)
    size = sum(p.stat().st_size for p in (src / "blobs").rglob("*") if p.is_file())
    store = Store(root)
    try:
        with progress_bar("importing, every file re-hashed", size) as bar:
            report = bundle.take(store, src, lambda n: bar.advance(bar.task_ids[0], n))
    finally:
        store.close()
    print(
        f"Imported {report.blobs} files ({units.size(report.bytes)}) into {root};"
        f" {report.already} already there."
    )
    if report.damaged:
        for line in report.damaged:
            print(line)
        count = len(report.damaged)
        print(
            f"{count} {'file was' if count == 1 else 'files were'} damaged and skipped:"
            " the mirror fetches them again when their upstream is reachable."
        )
    return 1 if report.damaged else 0


def add(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    files = [Path(f) for f in args.files]
    for path in files:
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
    failed = 0
    if args.store:
        store = Store(Path(args.store))
        try:
            for path in files:
                try:
                    print(local.add(store, path))
                except local.BadFile as exc:
                    print(f"retreatkit: {exc}", file=sys.stderr)
                    failed += 1
        finally:
            store.close()
        return 1 if failed else 0
    admin = args.admin or "http://" + cfg["admin"]["listen"].replace("0.0.0.0", "127.0.0.1")
    token = os.environ.get(admin_token.ENV) or admin_token.read()
    for path in files:
        ok, line = upload(admin.rstrip("/"), token, path)
        print(line if ok else f"retreatkit: {line}", file=sys.stdout if ok else sys.stderr)
        failed += not ok
    return 1 if failed else 0


def upload(admin: str, token: str, path: Path) -> tuple[bool, str]:
    """PUT one file to the running mirror's admin endpoint: (published, the line to show)."""
    if not admin.startswith(("http://", "https://")):
        return False, f"--admin {admin}: expected an http:// URL"
    url = f"{admin}/mirror/files/{urllib.parse.quote(path.name)}"
    with path.open("rb") as body:
        request = urllib.request.Request(  # noqa: S310 - http(s) only, checked above
            url, data=body, method="PUT",
            headers={"Authorization": f"Bearer {token}",
                     "Content-Length": str(path.stat().st_size)},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=600) as r:  # noqa: S310 - our own URL
                return True, str(json.load(r)["published"])
        except urllib.error.HTTPError as exc:
            return False, exc.read().decode("utf-8", "replace").strip()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return False, f"no mirror answers at {admin} ({reason}): start it, or use --store DIR"
