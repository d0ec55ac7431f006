"""The nameserver's settings from [nameserver] and the command line."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from retreatkit import config
from retreatkit.nameserver.blocklist import normalize
from retreatkit.nameserver.gate import LAN
from retreatkit.nameserver.lists import file_problem, is_url
from retreatkit.nameserver.local import LocalNames, Record, parse_record
from retreatkit.nameserver.service import Settings as NameserverSettings


def resolv_conf_upstreams(path: Path = Path("/etc/resolv.conf")) -> list[tuple[str, int]]:
    """The system resolver's own upstreams, the default for ours."""
    try:
        lines = path.read_text("utf-8", "replace").splitlines()
    except OSError:
        return []
    return [(parts[1], 53) for parts in (line.split() for line in lines)
            if len(parts) >= 2 and parts[0] == "nameserver"]  # fmt: skip


def nameserver_settings(
    section: dict[str, Any],
    own: dict[str, str],
    mirror: Callable[[], str | None] | None = None,
) -> NameserverSettings:
    """Settings from [nameserver]; `own` names the services of this process (name -> address);
    `mirror` says where this process's own mirror is, if it hosts one."""
    records = _keyed("records", local_records, section)
    named = {r.name for r in records}
    records += [parse_record(f"{n}={a}") for n, a in own.items() if n not in named]
    upstreams = _keyed("upstreams", upstream_servers, section) or resolv_conf_upstreams()
    forward = _keyed("forward", forward_servers, section)
    return NameserverSettings(
        listen=config.host_port(section["listen"]),  # HOST:PORT: see startup.check_config
        upstreams=upstreams,
        blocklists=list(section["blocklists"]),
        allow=list(section["allow"]),
        records=records,
        forward=forward,
        block_mode=_keyed("block_mode", block_mode, section),
        networks=list(section["networks"]) or list(LAN),
        rate_limit=int(section["rate_limit"]),
        stale_for=float(section["stale_for"]),
        reload_every=float(section["reload_every"]),
        upstream_recheck=float(section["upstream_recheck"]),
        mirror=mirror or (lambda: section["mirror"] or None),
    )


def problems(section: dict[str, Any]) -> list[tuple[str, str]]:
    """What in [nameserver] (flags applied) cannot work, as (key, one line), found before
    anything listens. A list given by URL is not fetched: the event may have no uplink
    yet, and a URL that fails later keeps its last good copy."""
    found = []
    for source in section["blocklists"]:
        problem = None if is_url(source) else file_problem(source)
        if problem is not None:
            found.append(("blocklists", f"{source}: {problem}"))
    for upstream in section["upstreams"]:
        try:
            dns_server(upstream)
        except ValueError as exc:
            found.append(("upstreams", str(exc)))
    records = []
    for text in record_texts(section):
        try:
            records.append(parse_record(text))
        except ValueError as exc:
            found.append(("records", str(exc)))
    try:
        LocalNames(records).check_loops()
    except ValueError as exc:
        found.append(("records", str(exc)))
    read: Callable[[dict[str, Any]], object]
    for key, read in (("forward", forward_servers), ("block_mode", block_mode)):
        try:
            read(section)
        except ValueError as exc:
            found.append((key, str(exc)))
    return found


T = TypeVar("T")


def _keyed(key: str, read: Callable[[dict[str, Any]], T], section: dict[str, Any]) -> T:
    """`read(section)`, its error naming the key (where `problems` did not run first)."""
    try:
        return read(section)
    except ValueError as exc:
        raise ValueError(f"[nameserver] {key}: {exc}") from None


def record_texts(section: dict[str, Any]) -> list[str]:
    """[nameserver] records (a table) and --record flags, each as NAME=VALUE."""
    table = [f"{name}={value}" for name, value in section["records"].items()]
    return table + list(section.get("record_flags", []))


def local_records(section: dict[str, Any]) -> list[Record]:
    records = [parse_record(text) for text in record_texts(section)]
    LocalNames(records).check_loops()  # a loop is refused at start, never answered
    return records


def block_mode(section: dict[str, Any]) -> str:
    mode = section["block_mode"]
    if mode not in ("null", "nxdomain"):
        raise ValueError(f"expected null or nxdomain, got {mode!r}")
    return str(mode)


def upstream_servers(section: dict[str, Any]) -> list[tuple[str, int]]:
    return [dns_server(u) for u in section["upstreams"]]


def forward_servers(section: dict[str, Any]) -> dict[str, list[tuple[str, int]]]:
    return forward_rules(section["forward"], section.get("forward_flags", []))


def forward_rules(table: dict[str, Any], flags: list[str]) -> dict[str, list[tuple[str, int]]]:
    """[nameserver.forward] (domain = "server" or a list) and --forward DOMAIN=SERVER flags."""
    rules: dict[str, list[tuple[str, int]]] = {}
    pairs = [(d, s) for d, v in table.items() for s in (v if isinstance(v, list) else [v])]
    for flag in flags:
        domain, eq, server = flag.partition("=")
        if not eq:
            raise ValueError(f"expected --forward DOMAIN=SERVER, got {flag!r}")
        pairs.append((domain, server))
    for domain, server in pairs:
        name = normalize(domain)
        if name is None or not isinstance(server, str):
            raise ValueError(f'expected DOMAIN = "SERVER[:PORT]", got {domain!r}')
        rules.setdefault(name, []).append(dns_server(server))
    return rules


def dns_server(text: str) -> tuple[str, int]:
    """`ADDRESS`, `HOST:PORT` or `[V6]:PORT`; a bare IPv6 address is port 53.

    A host name is looked up once, here, and its first address kept: each upstream
    socket is connected to one fixed address, whose replies alone count (RFC 5452), and
    a name looked up again for every new socket would block the event loop, maybe on
    a query to ourselves. A name that does not resolve at start stops the start.
    """
    try:
        return str(ipaddress.ip_address(text.strip("[]"))), 53
    except ValueError:
        host, port = config.host_port(text, 53)
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as exc:
        why = exc.strerror if isinstance(exc, socket.gaierror) else "not a host name"
        raise ValueError(f"cannot resolve {host!r} ({why}): give its address") from None
    return str(found[0][4][0]), port
