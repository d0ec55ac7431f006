"""The `retreatkit` command: run the event's services."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from retreatkit import config, hosting, loop, room, serve, startup, version
from retreatkit import lanaddress as lan
from retreatkit.admin import token as admin_token
from retreatkit.cli import image as image_cli
from retreatkit.cli import mirror as mirror_cli

DESCRIPTION = """\
Infrastructure in a bag for events whose internet is slow, metered or gone.
`retreatkit up` runs every service with one admin endpoint; each service can
also run on its own."""


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="retreatkit", description=DESCRIPTION)
    top.add_argument("--version", action=version.Shown)
    top.add_argument("--config", metavar="FILE", type=Path, help="retreat.toml (default: none)")
    commands = "{up,relay,mirror,nameserver,tui,image,vm}"
    sub = top.add_subparsers(dest="command", required=True, metavar=commands)
    admin_help = "admin endpoint (default 127.0.0.1:8080)"
    up = sub.add_parser("up", help="run all services, with the dashboard in a terminal")
    up.add_argument("--admin", metavar="HOST:PORT", help=admin_help)
    up.add_argument("--relay-listen", metavar="HOST:PORT", help="default 0.0.0.0:9000")
    up.add_argument("--mirror-listen", metavar="HOST:PORT", help="default 0.0.0.0:8000")
    up.add_argument(
        "--nameserver-listen", metavar="HOST:PORT", help="UDP and TCP (default 0.0.0.0:5300)"
    )
    up.add_argument(
        "--no-tui",
        action="store_true",
        help="no dashboard: log to stderr (as when not in a terminal)",
    )
    up.add_argument(
        "--address",
        metavar="ADDRESS",
        help="what relay.retreat.lan and mirror.retreat.lan answer"
        " (default: the address of the interface the default route uses)",
    )
    relay = sub.add_parser("relay", help="run bob's relay")
    relay.add_argument("--listen", metavar="HOST:PORT", help="default 0.0.0.0:9000")
    relay.add_argument("--admin", metavar="HOST:PORT", help=admin_help)
    relay.add_argument("--pairs", metavar="N", type=config.pairs, help=config.PAIRS_HELP)
    mirror = sub.add_parser("mirror", help="run the caching package mirror")
    mirror.add_argument("--listen", metavar="HOST:PORT", help="default 0.0.0.0:8000")
    mirror.add_argument("--admin", metavar="HOST:PORT", help=admin_help)
    mirror_cli.add_arguments(mirror)  # upstreams, and seed, export, import, add
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
    ns.add_argument(
        "--forward",
        metavar="DOMAIN=SERVER[:PORT]",
        action="append",
        dest="forward_flags",
        help="send DOMAIN and its names to SERVER (the venue router's own names); repeatable",
    )
    ns.add_argument("--block-mode", choices=("null", "nxdomain"), help="default null")
    ns.add_argument("--rate-limit", type=int, metavar="QPS", help="per client; 0 is off")
    ns.add_argument("--admin", metavar="HOST:PORT", help=admin_help)
    tui = sub.add_parser("tui", help="the organiser's dashboard over running admin endpoints")
    tui.add_argument(
        "--connect",
        metavar="URL",
        action="append",
        default=[],
        help="an admin endpoint, repeatable (default: every one running on this machine,"
        " else 127.0.0.1:8080; and any on the LAN)",
    )
    # `retreatkit up` runs its dashboard so: quitting it stops the services, so q asks
    tui.add_argument("--quit-stops", action="store_true", help=argparse.SUPPRESS)
    tui.add_argument(
        "--token",
        help="a remote endpoint's admin token (better: $RETREATKIT_TOKEN, "
        "which other users cannot see in ps); default: this machine's token file",
    )
    tui.add_argument("--web", action="store_true", help="serve the dashboard as a web page")
    tui.add_argument("--listen", metavar="HOST:PORT", help="with --web (default 127.0.0.1:8081)")
    image_cli.add_parsers(sub)
    return top  # fmt: skip


LISTEN_FLAGS = {"relay": "--relay-listen", "mirror": "--mirror-listen",
                "nameserver": "--nameserver-listen", "admin": "--admin"}  # fmt: skip


# `retreatkit nameserver`'s flags for other keys of [nameserver], named in its errors
NAMESERVER_FLAGS = {"nameserver.upstreams": "--upstream", "nameserver.blocklists": "--blocklist",
                    "nameserver.allow": "--allow",
                    "nameserver.records": "--record", "nameserver.forward": "--forward",
                    "nameserver.block_mode": "--block-mode",
                    "nameserver.rate_limit": "--rate-limit"}  # fmt: skip


def sections_and_flags(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The config sections this command runs, and the flag that sets each one's listen
    (key `SECTION`) or another key (`SECTION.KEY`)."""
    if args.command == "up":
        return ["relay", "mirror", "nameserver"], LISTEN_FLAGS
    flags = {args.command: "--listen", "admin": "--admin"}
    own = {"nameserver": NAMESERVER_FLAGS, "relay": {"relay.pairs": "--pairs"}}
    return [args.command], flags | own.get(args.command, {})


def apply_listen_flags(args: argparse.Namespace, cfg: dict[str, Any]) -> None:
    given = vars(args)
    for section in ("relay", "mirror", "nameserver"):
        own = given.get("listen") if args.command == section else None
        flag = given.get(f"{section}_listen") or own
        if flag:
            cfg[section]["listen"] = flag
    if given.get("admin"):
        cfg["admin"]["listen"] = given["admin"]
    if given.get("pairs"):
        cfg["relay"]["pairs"] = given["pairs"]
    if args.command == "nameserver":
        hosting.apply_nameserver_flags(cfg["nameserver"], given)


def say_address(chosen: lan.LanAddress) -> None:
    _say(f"relay.retreat.lan and mirror.retreat.lan answer {chosen.address} ({chosen.how})")
    others = [] if chosen.how == lan.CONFIGURED else lan.other_networks(chosen)
    if others and not chosen.loopback:
        named = ", ".join(f"{name} {address}" for name, address in others)
        _say(
            f"This computer is on other networks too ({named}): if the attendees are on"
            " one of those, pass --address ADDRESS or set address in [nameserver] of"
            " retreat.toml."
        )
    if chosen.loopback:
        _say(
            f"WARNING: {chosen.address} is a loopback address: every attendee asking for"
            " relay.retreat.lan or mirror.retreat.lan would reach their own computer."
            " Start it again once this computer is on the LAN (its services are announced"
            " there as it joins, but these names are set now), or pass --address ADDRESS"
            " or set address in [nameserver] of retreat.toml."
        )


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before the services' own handling of Ctrl-C is in place
        print("retreatkit: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    if args.command == "tui":
        return tui(args)
    if args.command == "mirror" and args.action:
        return mirror_cli.run(args)
    if args.command in image_cli.COMMANDS:
        try:
            cfg = config.load(getattr(args, "sub_config", None) or args.config)
        except ValueError as exc:
            print(f"retreatkit: {exc}", file=sys.stderr)
            return 2
        return image_cli.main(args, cfg)
    sections, flags = sections_and_flags(args)
    try:
        cfg = config.load(args.config)
        apply_listen_flags(args, cfg)
        readings: dict[str, Any] = {}  # what the check read, the services take
        problems = startup.check_config(cfg, sections, flags, readings)
        if args.command == "up":  # [images], whether or not it runs any
            from retreatkit.image import upconfig

            problems += upconfig.problems(cfg)
        if problems:
            for problem in problems:
                print(f"retreatkit: {problem}", file=sys.stderr)
            return 2
        admin_at = config.host_port(cfg["admin"]["listen"])
        address = None
        if args.command == "up":
            address = lan.choose(args.address or cfg["nameserver"]["address"])
        chosen = hosting.services(args, cfg, address, readings=readings)
    except ValueError as exc:
        print(f"retreatkit: {exc}", file=sys.stderr)
        return 2
    conflicts = startup.port_problems(startup.listeners(cfg, sections, flags))
    # every folder start-up writes to: a full or read-only one is said now, not by the
    # service that meets it once those before it have started
    folders = [room.state_folder(admin_token.state_dir())]
    no_room = room.problems([*folders, *(f for s in chosen for f in room.written_by(s))])
    if conflicts or no_room:  # every one at once: the organiser fixes them in one go
        for conflict in conflicts:
            print(f"retreatkit: cannot start: {conflict}", file=sys.stderr)
        for problem in no_room:
            print(f"retreatkit: {problem}", file=sys.stderr)
        running = startup.already_running(cfg["admin"]["listen"]) if conflicts else None
        if running:
            print(f"retreatkit: {running}", file=sys.stderr)
        return 1
    unmade = [problem for s in chosen for problem in room.make_disks(s)]
    if unmade:
        for problem in unmade:
            print(f"retreatkit: {problem}", file=sys.stderr)
        return 1
    if address is not None:
        say_address(address)
    dashboard = None
    if args.command == "up" and not args.no_tui and sys.stdout.isatty() and sys.stdin.isatty():
        from retreatkit.tui.run import in_child

        async def dashboard(url: str, token: str, stop: asyncio.Event) -> None:
            _lines.screen_taken = True
            try:
                await in_child(url, token, args.config, stop)
            finally:
                _lines.screen_taken = False

        log_file = admin_token.state_dir() / "retreatkit.log"
        try:
            serve.setup_logging(to_file=log_file)
        except OSError as exc:  # a read-only or full disk: before anything starts
            why = exc.strerror or str(exc)
            print(f"retreatkit: cannot write the dashboard's log {log_file}: {why}",
                  file=sys.stderr)  # fmt: skip
            return 1
        _lines.to_log = True
    else:
        serve.setup_logging()
    try:
        lan_at = address.address if address is not None else None
        return loop.run(lambda: serve.serve(chosen, admin_at, _say, dashboard, lan=lan_at))
    except (admin_token.TokenError, serve.StartError) as exc:
        print(f"retreatkit: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"retreatkit: cannot start: {exc.strerror or exc}", file=sys.stderr)
        return 1


def tui(args: argparse.Namespace) -> int:
    try:
        cfg = config.load(args.config)
    except ValueError as exc:
        print(f"retreatkit: {exc}", file=sys.stderr)
        return 2
    window = float(cfg["dashboard"]["leak_window"])
    if args.web:
        from retreatkit.tui.web import serve_web

        try:
            listen = config.host_port(args.listen or "127.0.0.1:8081")
        except ValueError as exc:
            print(f"retreatkit: --listen: {exc}", file=sys.stderr)
            return 2
        return serve_web(listen, args.connect, args.token, args.config)
    from retreatkit.tui.run import run

    return run(args.connect, args.token, window, args.quit_stops)


class _Lines:
    """Where lines for the organiser go: stderr; with the dashboard, the log file too,
    since the dashboard holds the terminal (a line on stderr would tear its screen) and
    the terminal may go away."""

    to_log = False
    screen_taken = False


_lines = _Lines()


def _say(line: str) -> None:
    if _lines.to_log:
        logging.getLogger("retreatkit").info(line)
    if not _lines.screen_taken:
        # one write: print() writes the line and its newline apart, and a log record from
        # another thread (the mirror's store check) could land between them
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
