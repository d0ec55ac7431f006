"""retreat.toml: every key has an embedded default, so no file is needed."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, Any] = {
    "admin": {"listen": "127.0.0.1:8080"},
    "relay": {
        "listen": "0.0.0.0:9000",
        "per_ip": 64,
        "waiting": 1000,
        "waiting_per_ip": 20,
        "handshake_timeout": 10.0,
        "wait_timeout": 600.0,
        "idle_timeout": 300.0,
        "failed_joins": 8,  # joins an address may fail at once (a guess at a nameplate) ...
        "failed_join_wait": 15.0,  # ... then one more every this many seconds
        "pairs": 256,  # transfers the relay forwards at once, in all
    },
    "bob": {"relay": "relay.retreat.lan:9000"},
    "mirror": {
        "listen": "0.0.0.0:8000",
        "store": "",  # empty: the user's data folder
        "pypi": "",  # empty: from pip's own configuration
        "opam": "",  # empty: from opam's own configuration
        "npm": "",  # empty: the registry npm on this machine uses
        "apt": {},  # origin name = archive URL; empty: the origins of this machine's apt
        "apt_keyrings": [],  # keys a new Release must verify by, besides this machine's apt's
        "max_size_bytes": 0,  # the store's size limit (least recently used go); 0: the disk
        "max_pages_sending_bytes": 268435456,  # index pages on their way to clients, each once
        "page_stall_timeout": 60.0,  # a client that takes none of a page for this long is cut
        "max_pages_reading_bytes": 67108864,  # index pages read and processed at once
        "allow_upstream": [],  # local (course) projects that may also list upstream files
        "index_ttl": 600.0,
        "connect_timeout": 5.0,  # an upstream's name and TCP connect, in total
        "headers_timeout": 10.0,  # request sent -> the upstream's answer
        "read_timeout": 30.0,  # the longest silence mid-download
        "index_timeout": 60.0,  # a client's wait for a page not held (its fetch goes on)
        "min_download_rate": 1024,  # bytes/s a download must bring over each minute; 0: any
        "lists": [],  # other URLs to keep for the LAN, served at /lists/<key> (blocklists)
        "public_url": "",  # what the page on / tells attendees; empty: the name they used
        "keep_free_bytes": 536870912,  # disk space the store leaves free
        "per_address": 256,  # connections from one client address
        "idle_timeout": 15.0,  # a client connection with no complete request
    },
    "nameserver": {
        "listen": "0.0.0.0:5300",
        "upstreams": [],  # empty: the nameservers in /etc/resolv.conf
        "blocklists": [],
        "allow": [],
        "records": {},  # name = "address", "cname:target" or a list; "*.zone" for a wildcard
        "forward": {},  # domain = "server[:port]" or a list of them (conditional forwarding)
        "address": "",  # what relay/mirror.retreat.lan answer; empty: the LAN interface's
        "block_mode": "null",
        "networks": [],  # empty: loopback, RFC 1918, link-local, CGNAT and ULA
        "rate_limit": 1000,  # queries per second per client; 0 turns it off
        "stale_for": 86400.0,
        "reload_every": 86400.0,
        "upstream_recheck": 30.0,  # seconds a down upstream is passed by, then probed
        "mirror": "",  # fetch URL blocklists through this mirror; `up` uses its own
    },
    "dashboard": {
        "leak_window": 600.0,  # seconds a figure must only grow before the overview flags it
    },
    "images": {
        "run": [],  # services `retreatkit up` runs as VM images instead of in its process
        "dir": "",  # where `up` builds them; empty: the cache folder
        "kernel": "auto",  # own (retreatkit image kernel), debian (cloud), auto: own if built
        "memory": 128,  # MB of guest memory
        "network": "auto",  # passt (clients keep their addresses), user (qemu's); auto: passt
        "disk": "",  # the mirror guest's store disk; empty: mirror.disk in the data folder
        "disk_size": "4G",  # when that disk is made
    },
}


KINDS = {
    int: "a whole number",
    float: "a number",
    str: "a string",
    bool: "true or false",
    list: "a list",
    dict: "a table",
}


SCALARS = (int, float, str)


def _toml(value: Any) -> str:
    """A value as the file writes it (`"2G"`, `true`, `64`), or what it is (`a list`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    return "a table" if isinstance(value, dict) else "a list"


class ConfigError(ValueError):
    """retreat.toml is unreadable or names an unknown key."""


def load(path: Path | None) -> dict[str, Any]:
    merged = copy.deepcopy(DEFAULTS)
    if path is None:
        return merged
    import tomllib  # only a file needs the parser; a VM guest's settings come as JSON

    try:
        doc = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    for section, values in doc.items():
        if section not in merged or not isinstance(values, dict):
            raise ConfigError(f"{path}: unknown section [{section}]")
        for key, value in values.items():
            if key not in merged[section]:
                raise ConfigError(f"{path}: unknown key {key!r} in [{section}]")
            default = merged[section][key]
            if type(value) is not type(default) and not (
                type(value) is int and type(default) is float  # not a bool: `true` is no 1.0
            ):
                like = (
                    f", like {_toml(default)}" if default != "" and type(default) in SCALARS else ""
                )
                raise ConfigError(
                    f"{path}: [{section}] {key} should be {KINDS[type(default)]}{like}; "
                    f"got {_toml(value)}"
                )
            if isinstance(default, list):
                # every list of the defaults is a list of strings (names, URLs, networks)
                for item in value:
                    if not isinstance(item, str):
                        raise ConfigError(
                            f"{path}: [{section}] {key} should be a list of strings; "
                            f"got {_toml(item)} in it"
                        )
            merged[section][key] = value
    return merged


def host_port_text(host: str, port: int) -> str:
    """`HOST:PORT` as `host_port` reads it back: an IPv6 address in brackets (`[::]:5300`)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` or (with a default port) `HOST`."""
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        if default_port is None:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        host, port = text, str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


PAIRS_HELP = (
    "transfers the relay forwards at once; past it, new ones are told busy and meet"
    f" on the LAN instead (default {DEFAULTS['relay']['pairs']}, [relay] pairs)"
)


def pairs(text: str) -> int:
    """The relay's --pairs."""
    if not text.isdigit() or not 1 <= int(text) <= 100_000:
        raise argparse.ArgumentTypeError(f"not a number of transfers (1 to 100000): {text!r}")
    return int(text)
