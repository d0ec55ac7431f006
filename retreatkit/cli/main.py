"""The `retreatkit` command: run the event's services."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from retreatkit import config, loop, serve
from retreatkit.cli import image as image_cli

DESCRIPTION = """\
Infrastructure in a bag for events whose internet is slow, metered or gone.
`retreatkit up` runs every service with one admin endpoint; each service can
also run on its own."""


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="retreatkit", description=DESCRIPTION)
    top.add_argument("--config", metavar="FILE", type=Path, help="retreat.toml (default: none)")
    sub = top.add_subparsers(
        dest="command", required=True, metavar="{up,relay,mirror,nameserver,image,vm}"
    )
    admin_help = "admin endpoint (default 127.0.0.1:8080)"
    up = sub.add_parser("up", help="run all services: relay, mirror and nameserver")
    up.add_argument("--admin", metavar="HOST:PORT", help=admin_help)
    relay = sub.add_parser("relay", help="run bob's relay")
    relay.add_argument("--listen", metavar="HOST:PORT", help="default 0.0.0.0:9000")
    relay.add_argument("--admin", metavar="HOST:PORT", help=admin_help)
    mirror = sub.add_parser("mirror", help="run the caching package mirror")
    mirror.add_argument("--listen", metavar="HOST:PORT", help="default 0.0.0.0:8000")
    mirror.add_argument("--store", metavar="DIR", help="default: the user's data folder")
    mirror.add_argument("--pypi", metavar="URL", help="PyPI simple index (default: pip's own)")
    mirror.add_argument("--opam", metavar="URL", help="opam repository (default: opam's own)")
    mirror.add_argument("--admin", metavar="HOST:PORT", help=admin_help)
    ns = sub.add_parser("nameserver", help="run the LAN's caching, blocking nameserver")
    ns.add_argument("--listen", metavar="HOST:PORT", help="UDP and TCP (default 0.0.0.0:5300)")
    ns.add_argument(
        "--upstream",
        metavar="HOST[:PORT]",
        action="append",
        dest="upstreams",
        help="repeatable (default: the nameservers in /etc/resolv.conf)",
    )
    ns.add_argument(
        "--blocklist",
        metavar="PATH|URL",
        action="append",
        dest="blocklists",
        help="hosts, plain-domain or adblock list; repeatable",
    )
    ns.add_argument("--allow", metavar="DOMAIN", action="append", help="never block; repeatable")
    ns.add_argument(
        "--record",
        metavar="NAME=ADDRESS",
        action="append",
        dest="record_flags",
        help="a local name (A/AAAA by the address, or NAME=cname:TARGET); repeatable",
    )
    ns.add_argument("--block-mode", choices=("null", "nxdomain"), help="default null")
    ns.add_argument("--rate-limit", type=int, metavar="QPS", help="per client; 0 is off")
    ns.add_argument("--admin", metavar="HOST:PORT", help=admin_help)
    image_cli.add_parsers(sub)
    return top  # fmt: skip


def services(args: argparse.Namespace, cfg: dict[str, Any]) -> list[serve.Service]:
    flags = {k: v for k, v in vars(args).items() if v is not None}
    out: list[serve.Service] = []
    images = set(cfg["images"]["run"]) if args.command == "up" else set()
    if args.command in ("up", "relay") and "relay" not in images:
        listen = flags.get("listen") if args.command == "relay" else None
        section = {**cfg["relay"], **({"listen": listen} if listen else {})}
        relay = serve.RelayService(config.host_port(section["listen"]), serve.relay_limits(section))
        out.append(relay)
    mirror: serve.MirrorService | None = None
    if args.command in ("up", "mirror") and "mirror" not in images:
        section = dict(cfg["mirror"])
        if args.command == "mirror":
            section.update({k: flags[k] for k in ("listen", "store", "pypi", "opam") if k in flags})
        else:  # the nameserver's URL lists come through this mirror: one fetch for the LAN
            urls = [u for u in cfg["nameserver"]["blocklists"] if "://" in u]
            section["lists"] = list(dict.fromkeys([*section["lists"], *urls]))
        mirror = serve.MirrorService.from_config(section)
        out.append(mirror)
    if args.command in ("up", "nameserver") and "nameserver" not in images:
        from retreatkit.nameserver.service import Nameserver, host_address

        section = dict(cfg["nameserver"])
        if args.command == "nameserver":
            for key in ("listen", "upstreams", "blocklists", "allow", "record_flags"):
                if key in flags:
                    section[key] = flags[key]
            for key in ("block_mode", "rate_limit"):
                if key in flags:
                    section[key] = flags[key]
        own: dict[str, str] = {}
        if args.command == "up":
            address = host_address()
            own = {"relay.retreat.lan": address, "mirror.retreat.lan": address}
        local_mirror = (lambda: mirror.url) if mirror is not None else None
        out.append(Nameserver(serve.nameserver_settings(section, own, local_mirror)))
    if images:  # [images] run: these services boot as VM images under a supervisor
        from retreatkit.image.vmservice import guests_for_up

        out.append(guests_for_up(cfg, args.config))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command in image_cli.COMMANDS:
        try:
            cfg = config.load(getattr(args, "sub_config", None) or args.config)
        except ValueError as exc:
            print(f"retreatkit: {exc}", file=sys.stderr)
            return 2
        return image_cli.main(args, cfg)
    try:
        cfg = config.load(args.config)
        admin_at = config.host_port(args.admin or cfg["admin"]["listen"])
        chosen = services(args, cfg)
    except ValueError as exc:
        print(f"retreatkit: {exc}", file=sys.stderr)
        return 2
    serve.setup_logging()
    try:
        return loop.run(lambda: serve.serve(chosen, admin_at, _say))
    except OSError as exc:
        print(f"ERROR: cannot start: {exc.strerror or exc}", file=sys.stderr)
        return 1


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
