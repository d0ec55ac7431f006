"""The nameserver's settings from [nameserver] and the command line."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from retreatkit import config
from retreatkit.lanaddress import is_own_address
from retreatkit.nameserver.blocklist import normalize
from retreatkit.nameserver.errors import BadRecord
from retreatkit.nameserver.gate import LAN
from retreatkit.nameserver.lists import file_problem, is_url
from retreatkit.nameserver.local import LocalNames, Record, make_record, parse_record
from retreatkit.nameserver.service import Settings as NameserverSettings


def resolv_conf_upstreams(path: Path = Path("/etc/resolv.conf")) -> list[tuple[str, int]]:
    """The system resolver's own upstreams, the default for ours."""
    try:
        lines = path.read_text("utf-8", "replace").splitlines()
    except OSError:
        return []
    return [(parts[1], 53) for parts in (line.split() for line in lines)
            if len(parts) >= 2 and parts[0] == "nameserver"]  # fmt: skip


Address = tuple[str, int]
ITSELF = (  # after an upstream's address
    " is this nameserver itself: every question would come back to it (a loop); name"
    " the venue's resolvers"
)
WILDCARDS = ("0.0.0.0", "::", "")


def is_itself(host: str, port: int, listen: str) -> bool:
    """Whether the upstream `host:port` is the address we listen on: the organiser's own
    machine, given the kit as its resolver (DHCP hands it out to everyone), lists it."""
    try:
        ours, our_port = config.host_port(listen)
    except ValueError:
        return False  # said apart, as a problem of listen
    if port != our_port:
        return False
    if host == ours:
        return True
    if ours not in WILDCARDS:
        return False
    return is_own_address(host)


def system_upstreams(listen: str, path: Path = Path("/etc/resolv.conf")) -> list[Address]:
    """The system resolver's upstreams, but this nameserver itself; ValueError when it
    names only that."""
    named = resolv_conf_upstreams(path)
    others = [(h, p) for h, p in named if not is_itself(h, p, listen)]
    if named and not others:
        itself = ", ".join(config.host_port_text(h, p) for h, p in named)
        raise ValueError(
            f"[nameserver] upstreams (or --upstream): none given, and {path} names only"
            f" {itself},{ITSELF.removeprefix(' is')}"
        )
    return others


S = TypeVar("S")
T = TypeVar("T")
# what the settings read
SETTINGS_KEYS = ("records", "upstreams", "forward", "block_mode", "networks", "allow")
TABLE_FORM = '"NAME" = "ADDRESS" in [nameserver.records]'


@dataclass
class Reading:
    """[nameserver]'s records, upstreams, forwards and block mode, read once at start (a
    name looked up is a query, maybe a slow one): the start-up check reads them and the
    settings take its reading. With what cannot work, as (key, one line)."""

    records: list[Record]
    upstreams: list[Address]
    forward: dict[str, list[Address]]
    block_mode: str
    problems: list[tuple[str, str]]

    def refuse(self) -> None:
        """ValueError naming the first key that cannot work, as the settings read them."""
        for key in SETTINGS_KEYS:
            for where, line in self.problems:
                if where == key:
                    raise ValueError(f"[nameserver] {key}: {line}")


def read(section: dict[str, Any]) -> Reading:
    """Everything in [nameserver] (flags applied) that the settings need, and its problems."""
    found: list[tuple[str, str]] = []

    def each(key: str, items: list[S], parse: Callable[[S], T]) -> list[T]:
        out = []
        for item in items:
            try:
                out.append(parse(item))
            except ValueError as exc:
                found.append((key, str(exc)))
        return out

    upstreams = each("upstreams", section["upstreams"], dns_server)
    records = each("records", table_records(section["records"]), table_record)
    records += each("records", list(section.get("record_flags", [])), parse_record)
    try:
        LocalNames(records).check_loops()  # a loop is refused at start, never answered
    except ValueError as exc:
        found.append(("records", str(exc)))
    forward: dict[str, list[Address]] = {}
    mode = "null"
    try:
        forward = forward_rules(section["forward"], section.get("forward_flags", []))
    except ValueError as exc:
        found.append(("forward", str(exc)))
    try:
        mode = block_mode(section)
    except ValueError as exc:
        found.append(("block_mode", str(exc)))
    each("networks", list(section["networks"]), network)
    each("allow", list(section["allow"]), allowed_domain)
    return Reading(records, upstreams, forward, mode, found)


def network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A network that may ask (`10.0.0.0/8`, `fd00::/8`); an address is one host."""
    try:
        return ipaddress.ip_network(text.strip())
    except ValueError:
        pass
    try:
        meant = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f"not a network: {text!r} (expected ADDRESS/PREFIX, like 10.0.0.0/8)"
        ) from None
    raise ValueError(f"{text!r} has host bits set: the network is {str(meant)!r}")


def allowed_domain(text: str) -> str:
    """A domain the blocklists never block, with every name under it."""
    name = normalize(text)
    if name is None:
        raise ValueError(f"not a domain: {text!r} (expected a name like cdn.example)")
    return name


def nameserver_settings(
    section: dict[str, Any],
    own: dict[str, str],
    mirror: Callable[[], str | None] | None = None,
    reading: Reading | None = None,
) -> NameserverSettings:
    """Settings from [nameserver]; `own` names the services of this process (name -> address);
    `mirror` says where this process's own mirror is, if it hosts one; `reading` is the
    start-up check's, when one ran (a VM guest's start has none)."""
    if reading is None:
        reading = read(section)
    reading.refuse()
    named = {r.name for r in reading.records}
    records = reading.records + [parse_record(f"{n}={a}") for n, a in own.items() if n not in named]
    return NameserverSettings(
        listen=config.host_port(section["listen"]),  # HOST:PORT: see startup.check_config
        upstreams=reading.upstreams or system_upstreams(section["listen"]),
        blocklists=list(section["blocklists"]),
        allow=list(section["allow"]),
        records=records,
        forward=reading.forward,
        block_mode=reading.block_mode,
        networks=list(section["networks"]) or list(LAN),
        rate_limit=int(section["rate_limit"]),
        stale_for=float(section["stale_for"]),
        reload_every=float(section["reload_every"]),
        upstream_recheck=float(section["upstream_recheck"]),
        mirror=mirror or (lambda: section["mirror"] or None),
    )


def list_problems(section: dict[str, Any]) -> list[tuple[str, str]]:
    """Blocklist files that cannot be read now. A list given by URL is not fetched: the
    event may have no uplink yet, and a URL that fails later keeps its last good copy."""
    found = []
    for source in section["blocklists"]:
        problem = None if is_url(source) else file_problem(source)
        if problem is not None:
            found.append(("blocklists", f"{source}: {problem}"))
    return found


def problems(section: dict[str, Any], reading: Reading | None = None) -> list[tuple[str, str]]:
    """What in [nameserver] (flags applied) cannot work, as (key, one line), found before
    anything listens; `reading`, if given, is `read(section)` done already."""
    reading = reading or read(section)
    servers = [("upstreams", u) for u in reading.upstreams]
    servers += [("forward", u) for zone in reading.forward.values() for u in zone]
    itself = [
        (key, f"{config.host_port_text(host, port)}{ITSELF}")
        for key, (host, port) in servers
        if is_itself(host, port, section["listen"])
    ]
    return [*list_problems(section), *reading.problems, *itself]


def table_records(table: dict[str, Any]) -> list[tuple[str, Any]]:
    """[nameserver.records] as (name, value) pairs, kept apart: a name is never split at
    an `=` of its own. A list gives one name several values (an A and an AAAA)."""
    return [
        (name, one) for name, value in table.items()
        for one in (value if isinstance(value, list) else [value])
    ]  # fmt: skip


def table_record(pair: tuple[str, Any]) -> Record:
    name, value = pair
    if not isinstance(value, str):
        raise BadRecord(f"expected an IP address or cname:TARGET for {name}, got {value!r}")
    return make_record(name, value, TABLE_FORM)


def block_mode(section: dict[str, Any]) -> str:
    mode = section["block_mode"]
    if mode not in ("null", "nxdomain"):
        raise ValueError(f"expected null or nxdomain, got {mode!r}")
    return str(mode)


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
    host, port = server_text(text)
    return address_of(host, port), port


def server_text(text: str) -> tuple[str, int]:
    """A DNS server as written, (host, port), nothing looked up."""
    try:
        return str(ipaddress.ip_address(text.strip("[]"))), 53
    except ValueError:
        host, port = config.host_port(text, 53)
    if port == 0:  # a port to listen on may be the kernel's pick; a server's is not
        raise ValueError(f"port 0 is no server's port, in {text!r} (53 is DNS)")
    return host, port


def address_of(host: str, port: int, family: int = socket.AF_UNSPEC) -> str:
    """`host` if it is an address, else the first address its name resolves to."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, port, family, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as exc:
        why = exc.strerror if isinstance(exc, socket.gaierror) else "not a host name"
        raise ValueError(f"cannot resolve {host!r} ({why}): give its address") from None
    return str(found[0][4][0])
