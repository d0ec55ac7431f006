"""Which services a command runs, built from retreat.toml and its flags.

Each service's modules are imported only where it runs: a process (or a VM image)
hosting one service loads only that one.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from retreatkit import config, startup
from retreatkit.lanaddress import LanAddress, choose
from retreatkit.serve import Service

MIRROR_FLAGS = ("store", "pypi", "opam", "npm", "apt", "max_size_bytes")


def apply_mirror_flags(section: dict[str, Any], flags: dict[str, Any]) -> None:
    """Flags over [mirror] (a flag given replaces the key, `--apt` all origins at once)."""
    for key in MIRROR_FLAGS:
        if flags.get(key) is not None:
            section[key] = dict(flags[key]) if key == "apt" else flags[key]


NAMESERVER_FLAGS = ("listen", "upstreams", "blocklists", "allow", "record_flags",
                    "forward_flags", "block_mode", "rate_limit")  # fmt: skip


def apply_nameserver_flags(section: dict[str, Any], flags: dict[str, Any]) -> None:
    """`retreatkit nameserver`'s flags over [nameserver], before its values are checked."""
    for key in NAMESERVER_FLAGS:
        if flags.get(key) is not None:
            section[key] = flags[key]


def services(
    args: argparse.Namespace,
    cfg: dict[str, Any],
    lan_address: LanAddress | None = None,
    on_lan: bool = True,
    readings: dict[str, Any] | None = None,
) -> list[Service]:
    """The services this command runs; `lan_address` is what `up` names its own after;
    `on_lan`: the relay and the mirror announce themselves by zeroconf and the mirror offers
    the kit's own wheel (a VM guest's do not: its network is not the LAN's multicast, and
    its kit is compiled modules, nothing to make a wheel of); `readings`: what
    startup.check_config read."""
    flags = {k: v for k, v in vars(args).items() if v is not None}
    out: list[Service] = []
    images = set(cfg["images"]["run"]) if args.command == "up" else set()
    if args.command in ("up", "relay") and "relay" not in images:
        listen = flags.get("listen") if args.command == "relay" else flags.get("relay_listen")
        from retreatkit.relay.hosted import RelayService, relay_limits

        section = {**cfg["relay"], **({"listen": listen} if listen else {})}
        listen_at = config.host_port(section["listen"])
        out.append(RelayService(listen_at, relay_limits(section), on_lan))
    mirror_url: Callable[[], str | None] | None = None
    if args.command in ("up", "mirror") and "mirror" not in images:
        from retreatkit.mirror.hosted import MirrorService

        section = dict(cfg["mirror"])
        if "mirror_listen" in flags:
            section["listen"] = flags["mirror_listen"]
        if args.command == "mirror":
            section.update({k: flags[k] for k in ("listen",) if k in flags})
            apply_mirror_flags(section, flags)
        else:  # the nameserver's URL lists come through this mirror: one fetch for the LAN
            urls = [u for u in cfg["nameserver"]["blocklists"] if "://" in u]
            section["lists"] = list(dict.fromkeys([*section["lists"], *urls]))
        store_key = startup.where(
            "mirror", "store", "--store" if args.command == "mirror" else None
        )
        mirror = MirrorService.from_config(section, on_lan, on_lan, store_key)
        mirror_url = lambda: mirror.url  # noqa: E731
        out.append(mirror)
    if args.command in ("up", "nameserver") and "nameserver" not in images:
        from retreatkit.nameserver.hosted import nameserver_settings
        from retreatkit.nameserver.service import Nameserver

        section = dict(cfg["nameserver"])
        if "nameserver_listen" in flags:
            section["listen"] = flags["nameserver_listen"]
        if args.command == "nameserver":
            apply_nameserver_flags(section, flags)
        own: dict[str, str] = {}
        if lan_address is not None:
            own = startup.own_names(cfg, lan_address)
        reading = (readings or {}).get("nameserver")
        out.append(Nameserver(nameserver_settings(section, own, mirror_url, reading)))
    if images:  # [images] run: these services boot as VM images under a supervisor
        from retreatkit.image.vmservice import guests_for_up

        lan = lan_address or choose(cfg["nameserver"]["address"])
        out.append(guests_for_up(cfg, args.config, lan, announce=on_lan))
    return out
