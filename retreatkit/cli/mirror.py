"""`retreatkit mirror`'s flags and its other verbs: seed, export, import, add."""

from __future__ import annotations

import argparse
import json
import os
import re
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

from retreatkit import config
from retreatkit.admin import token as admin_token
from retreatkit.mirror import bundle, local
from retreatkit.mirror.errors import MirrorError
from retreatkit.mirror.hosted import default_store
from retreatkit.mirror.stats import human
from retreatkit.mirror.store import Store

SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?$", re.IGNORECASE)
UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
         "KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4}  # fmt: skip


def size(text: str) -> int:
    """`50G`, `500MB`, `2TiB`, `1048576`: bytes (K, M, G, T in powers of 1000, as df -H
    shows them; KiB, MiB, ... in powers of 1024)."""
    match = SIZE.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (say 50G, 500M or bytes)")
    unit = (match[2] or "").upper().removesuffix("B")
    return int(float(match[1]) * UNITS[unit])


def origin(text: str) -> tuple[str, str]:
    name, eq, url = text.partition("=")
    if not eq or not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected NAME=URL, got {text!r}")
    return name.strip(), url.strip()


def add_upstream_flags(parser: argparse.ArgumentParser) -> None:
    """The store and upstreams: the same flags to serve a store and to warm one."""
    parser.add_argument("--store", metavar="DIR", help="default: the user's data folder")
    parser.add_argument("--pypi", metavar="URL", help="PyPI simple index (default: pip's own)")
    parser.add_argument("--opam", metavar="URL", help="opam repository (default: opam's own)")
    parser.add_argument("--npm", metavar="URL", help="npm registry (default: npm's own)")
    parser.add_argument(
        "--apt",
        metavar="NAME=URL",
        type=origin,
        action="append",
        help="an apt archive served under /NAME/, repeatable (default: this machine's)",
    )
    parser.add_argument(
        "--max-size",
        metavar="SIZE",
        type=size,
        dest="max_size_bytes",
        help="keep the store under SIZE (50G, 800MB): least recently used files go first",
    )


def add_arguments(mirror: argparse.ArgumentParser) -> None:
    add_upstream_flags(mirror)
    actions = mirror.add_subparsers(dest="action", metavar="{seed,export,import,add}")
    seed = actions.add_parser(
        "seed", help="warm the mirror before the event from lock files and package lists"
    )
    add_upstream_flags(seed)
    seed.add_argument("--mirror", metavar="URL", help="warm this serving mirror instead of a store")
    seed.add_argument(
        "--platform", action="append", metavar="GLOB",
        help="wheels for these platform tags only (manylinux*_x86_64), repeatable",
    )  # fmt: skip
    seed.add_argument("--python", action="append", metavar="X.Y", help="wheels for these only")
    seed.add_argument(
        "--apt-dist", action="append", metavar="NAME/SUITE",
        help="where Debian package lists are found (debian/bookworm), repeatable",
    )  # fmt: skip
    seed.add_argument("--apt-arch", metavar="ARCH", help="default: this machine's")
    seed.add_argument(
        "--no-depends", action="store_true", help="Debian packages without their Depends"
    )
    seed.add_argument(
        "--kit", action="store_true",
        help="also this retreatkit's own dependencies, so attendees can install bob offline",
    )  # fmt: skip
    seed.add_argument("files", nargs="*", metavar="[KIND:]FILE",
                      help="requirements.txt, pylock.toml, uv.lock, package-lock.json, an opam "
                      "switch export, or opam:LIST, apt:LIST (one name a line)")  # fmt: skip
    export = actions.add_parser("export", help="copy a store into a self-verifying bundle")
    export.add_argument("--store", metavar="DIR", help="default: the user's data folder")
    export.add_argument("dest", metavar="DEST", help="a new or empty folder (a USB stick)")
    take = actions.add_parser("import", help="take a bundle into a store, every file re-hashed")
    take.add_argument("--store", metavar="DIR", help="default: the user's data folder")
    take.add_argument("src", metavar="SRC", help="a folder made by `retreatkit mirror export`")
    add = actions.add_parser("add", help="publish your own wheels and sdists in the local index")
    add.add_argument("--store", metavar="DIR", help="write to this store (no mirror serving it)")
    add.add_argument("--admin", metavar="URL", help="the running mirror's admin endpoint")
    add.add_argument("files", nargs="+", metavar="FILE")


def run(args: argparse.Namespace) -> int:
    """One of the verbs; its exit code (0 done, 1 failed, 2 usage)."""
    try:
        cfg = config.load(args.config)
        if args.action == "seed":
            from retreatkit.cli import seed  # imports the seeding machinery only when asked

            code: int = seed.run(args, cfg)
            return code
        verb = {"export": export, "import": take, "add": add}[args.action]
        return verb(args, cfg)
    except (ValueError, MirrorError, admin_token.TokenError) as exc:
        print(f"retreatkit: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    except KeyboardInterrupt:
        print("retreatkit: stopped", file=sys.stderr)
        return 1


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
        f"Exported {report.blobs} files ({human(report.bytes)}) to {dest};"
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
        f"Imported {report.blobs} files ({human(report.bytes)}) into {root};"
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
