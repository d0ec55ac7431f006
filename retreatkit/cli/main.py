"""The `retreatkit` command: run the event's services."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retreatkit import config, serve

DESCRIPTION = """\
Infrastructure in a bag for events whose internet is slow, metered or gone.
`retreatkit up` runs every service with one admin endpoint; each service can
also run on its own."""


class Usage(Exception):
    """Bad arguments: exit 2."""


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="retreatkit", description=DESCRIPTION)
    top.add_argument("--config", metavar="FILE", type=Path, help="retreat.toml (default: none)")
    sub = top.add_subparsers(dest="command", required=True, metavar="{up,relay}")
    up = sub.add_parser("up", help="run all services (for now: the relay)")
    up.add_argument("--admin", metavar="HOST:PORT", help="admin endpoint (default 127.0.0.1:8080)")
    relay = sub.add_parser("relay", help="run bob's relay")
    relay.add_argument("--listen", metavar="HOST:PORT", help="default 0.0.0.0:9000")
    relay.add_argument(
        "--admin", metavar="HOST:PORT", help="admin endpoint (default 127.0.0.1:8080)"
    )
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = config.load(args.config)
        listen = config.host_port(getattr(args, "listen", None) or cfg["relay"]["listen"])
        admin_at = config.host_port(args.admin or cfg["admin"]["listen"])
    except ValueError as exc:
        print(f"retreatkit: {exc}", file=sys.stderr)
        return 2
    serve.setup_logging()
    limits = serve.relay_limits(cfg["relay"])
    try:
        return serve.run(lambda: serve.serve_relay(listen, admin_at, limits, _say))
    except OSError as exc:
        print(f"ERROR: cannot start: {exc.strerror or exc}", file=sys.stderr)
        return 1


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
