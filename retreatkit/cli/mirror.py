"""`retreatkit mirror`'s flags, and the dispatch to its other verbs: seed, export, import, add.

Every `retreatkit` command builds its parser from here, so this module imports only
argparse: the verbs' machinery (rich, the store, bundles) loads when a verb runs, and
`retreatkit nameserver` or `retreatkit relay` start 0.2 s sooner.
"""

from __future__ import annotations

import argparse
import re
import sys

from retreatkit import config
from retreatkit.admin import token as admin_token
from retreatkit.mirror.errors import MirrorError

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


# a verb's copy of a flag `mirror` has too: given after the verb it wins, and its default
# never puts None over the value given before the verb (`mirror --store DIR seed ...`)
KEPT = argparse.SUPPRESS


def add_upstream_flags(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """The store and upstreams: the same flags to serve a store and to warm one."""
    parser.add_argument(
        "--store", metavar="DIR", default=default, help="default: the user's data folder"
    )
    parser.add_argument(
        "--pypi", metavar="URL", default=default, help="PyPI simple index (default: pip's own)"
    )
    parser.add_argument(
        "--opam", metavar="URL", default=default, help="opam repository (default: opam's own)"
    )
    parser.add_argument(
        "--npm", metavar="URL", default=default, help="npm registry (default: npm's own)"
    )
    parser.add_argument(
        "--apt",
        default=default,
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
        default=default,
        help="keep the store under SIZE (50G, 800MB): least recently used files go first",
    )


def add_arguments(mirror: argparse.ArgumentParser) -> None:
    add_upstream_flags(mirror)
    actions = mirror.add_subparsers(dest="action", metavar="{seed,export,import,add}")
    seed = actions.add_parser(
        "seed", help="warm the mirror before the event from lock files and package lists"
    )
    add_upstream_flags(seed, KEPT)
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
                      "switch export, or opam:LIST, apt:LIST (one name a line); exactly what "
                      "they list (a requirements.txt from pip freeze or uv pip compile lists "
                      "the dependencies too), and what builds their sdists; Debian packages "
                      "with their Depends")  # fmt: skip
    export = actions.add_parser("export", help="copy a store into a self-verifying bundle")
    export.add_argument(
        "--store", metavar="DIR", default=KEPT, help="default: the user's data folder"
    )
    export.add_argument("dest", metavar="DEST", help="a new or empty folder (a USB stick)")
    take = actions.add_parser("import", help="take a bundle into a store, every file re-hashed")
    take.add_argument(
        "--store", metavar="DIR", default=KEPT, help="default: the user's data folder"
    )
    take.add_argument("src", metavar="SRC", help="a folder made by `retreatkit mirror export`")
    add = actions.add_parser("add", help="publish your own wheels and sdists in the local index")
    add.add_argument(
        "--store", metavar="DIR", default=KEPT, help="write to this store (no mirror serving it)"
    )
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
        from retreatkit.cli import mirror_verbs

        verb = {"export": mirror_verbs.export, "import": mirror_verbs.take,
                "add": mirror_verbs.add}[args.action]  # fmt: skip
        return verb(args, cfg)
    except (ValueError, MirrorError, admin_token.TokenError) as exc:
        print(f"retreatkit: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    except KeyboardInterrupt:  # as every command Ctrl-C stops, and as a shell counts it
        print("retreatkit: interrupted", file=sys.stderr)
        return 130
