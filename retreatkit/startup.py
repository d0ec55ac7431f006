"""Before and after `retreatkit up` starts: checks that name the key to change, every port
conflict at once, and the addresses attendees use."""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import threading
from dataclasses import dataclass
from math import inf, isfinite
from pathlib import Path
from typing import Any

from retreatkit import config
from retreatkit.lanaddress import CONFIGURED, LanAddress, bind_error, is_loopback

# keys whose values must be positive (> 0) or at least zero, by section. Each limit and
# timeout is here: at 0 a limit turns every client away and a timeout cuts every one off,
# silently (0 means "no limit" only for the keys under NOT_NEGATIVE that say so)
POSITIVE = {
    "relay": (
        "per_ip", "waiting", "waiting_per_ip", "handshake_timeout", "wait_timeout",
        "idle_timeout", "failed_joins", "pairs",
    ),
    "mirror": (
        "connect_timeout", "headers_timeout", "read_timeout", "index_timeout", "idle_timeout",
        "page_stall_timeout", "per_address", "max_pages_sending_bytes",
        "max_pages_reading_bytes",
    ),
    "nameserver": ("reload_every", "upstream_recheck"),
    "dashboard": ("leak_window",),
}  # fmt: skip
NOT_NEGATIVE = {
    "relay": ("failed_join_wait",),  # 0: no wait between failed joins
    "mirror": ("index_ttl", "max_size_bytes", "min_download_rate", "keep_free_bytes"),
    "nameserver": ("rate_limit", "stale_for"),
}


@dataclass(frozen=True)
class Listener:
    service: str  # relay, mirror, nameserver, admin
    proto: str  # tcp or udp
    host: str
    port: int
    flag: str  # the command-line flag that sets it


def where(section: str, key: str, flag: str | None = None) -> str:
    return f"[{section}] {key}" + (f" (or {flag})" if flag else "")


def check_config(
    cfg: dict[str, Any],
    sections: list[str],
    flags: dict[str, str],
    readings: dict[str, Any] | None = None,
) -> list[str]:
    """Every value that cannot work, each as one line naming its key (and flag). What a
    check had to read (the nameserver's records, its upstreams' addresses) is left in
    `readings`, by section, for the services to take instead of reading it again."""
    problems = []
    for section in [*sections, "admin"]:
        if "listen" in cfg.get(section, {}):
            try:
                # every listen names its port, the nameserver's too: a bare host could
                # mean 53 (what clients ask) or 5300 (the default, no root needed), and
                # either guess, made silently, leaves someone asking the wrong port
                config.host_port(cfg[section]["listen"])
            except ValueError as exc:
                problems.append(f"{where(section, 'listen', flags.get(section))}: {exc}")
    for table, bad, words in (
        (POSITIVE, _not_positive, "above 0"),
        (NOT_NEGATIVE, _negative, "0 or more"),
    ):
        for section, keys in table.items():
            for key in keys if section in [*sections, "dashboard"] else ():
                value = cfg.get(section, {}).get(key)
                if isinstance(value, int | float) and bad(value):
                    key_is = where(section, key, flags.get(f"{section}.{key}"))
                    # TOML has nan and inf: a timeout of nan passed every test and timed
                    # out every handshake at once
                    number = "" if isfinite(value) else "a finite number "
                    problems.append(f"{key_is} must be {number}{words}, not {value}")
    if "mirror" in sections and cfg["mirror"]["store"]:
        store = Path(cfg["mirror"]["store"])
        if store.exists() and not store.is_dir():
            problems.append(f"{where('mirror', 'store')}: {store} is a file; name a folder")
    if "nameserver" in sections:
        from retreatkit.nameserver import hosted

        reading = hosted.read(cfg["nameserver"])
        if readings is not None:
            readings["nameserver"] = reading
        for key, problem in hosted.problems(cfg["nameserver"], reading):
            key_is = where("nameserver", key, flags.get(f"nameserver.{key}"))
            problems.append(f"{key_is}: {problem}")
    return problems


def _not_positive(value: float) -> bool:
    return not 0 < value < inf


def _negative(value: float) -> bool:
    return not 0 <= value < inf


def listeners(cfg: dict[str, Any], sections: list[str], flags: dict[str, str]) -> list[Listener]:
    out = []
    for section in [*sections, "admin"]:
        host, port = config.host_port(cfg[section]["listen"])
        flag = flags.get(section, "")
        out.append(Listener(section, "tcp", host, port, flag))
        if section == "nameserver":
            out.append(Listener(section, "udp", host, port, flag))
    return out


def _overlap(a: Listener, b: Listener) -> bool:
    wild = ("0.0.0.0", "::", "")
    return (
        a.proto == b.proto
        and a.port == b.port
        and (a.host == b.host or a.host in wild or b.host in wild)
    )


def port_problems(wanted: list[Listener]) -> list[str]:
    """Every listener that cannot bind now, each as one line naming the key to change."""
    problems = []
    for i, a in enumerate(wanted):
        for b in wanted[:i]:
            if a.port and _overlap(a, b) and a.service != b.service:
                problems.append(
                    f"{a.service} and {b.service} both want {a.proto.upper()} port {a.port}: "
                    f"change {where(a.service, 'listen', a.flag)}"
                )
    seen: set[tuple[str, str]] = set()
    in_use: dict[str, int] = {}  # service -> where its "in use" line is in problems
    for listener in wanted:
        if listener.port == 0 or (listener.service, listener.proto) in seen:
            continue
        seen.add((listener.service, listener.proto))
        why = _try_bind(listener)
        if why is None or why in problems:  # a host that does not resolve: once, not per proto
            continue
        key = where(listener.service, "listen", listener.flag)
        if why.endswith(_IN_USE + key):
            if listener.service in in_use:
                # UDP and TCP both held (another DNS server on the port): one line
                problems[in_use[listener.service]] = (
                    f"{listener.service}: UDP and TCP {listener.host}:{listener.port} are in"
                    f" use by another program: change {key}"
                )
                continue
            in_use[listener.service] = len(problems)
        problems.append(why)
    return problems


_IN_USE = " is in use by another program: change "


def _try_bind(lst: Listener) -> str | None:
    key = where(lst.service, "listen", lst.flag)
    kind = socket.SOCK_STREAM if lst.proto == "tcp" else socket.SOCK_DGRAM
    address = f"{lst.host}:{lst.port}"
    try:
        infos = socket.getaddrinfo(lst.host, lst.port, type=kind, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return f"{lst.service}: cannot resolve {lst.host!r}: change {key}"
    family, _, _, _, sockaddr = infos[0]
    exc = bind_error(lst.proto, family, sockaddr)
    if exc is None:
        return None
    if exc.errno == errno.EADDRINUSE:
        return f"{lst.service}: {lst.proto.upper()} {address}{_IN_USE}{key}"
    if exc.errno == errno.EACCES:
        return (
            f"{lst.service}: port {lst.port} needs root or CAP_NET_BIND_SERVICE "
            f"(docs/operations.md, 'Port 53 without root'), or change {key}"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{lst.service}: {lst.host} is not an address of this machine: change {key}"
    return f"{lst.service}: cannot listen on {address}: {exc.strerror}: change {key}"


ALREADY_TIMEOUT = 2.0  # seconds, in all, to ask the admin endpoint in the way who it is
ALREADY_MAX = 262_144  # bytes of its /status read at most: anyone may hold that port


def already_running(admin: str) -> str | None:
    """When the admin endpoint `up` wants is held by a retreatkit that answers there (an
    `up` whose terminal was lost, one under systemd), what it runs, as one line: its ports
    are "in use by another program", which is retreatkit itself. None for anything else,
    or for no whole answer within ALREADY_TIMEOUT (a thread bounds it, however a holder of
    the port trickles). Reads are open on loopback without the token (admin/access.py)."""
    host, port = config.host_port(admin)
    if host in ("0.0.0.0", "::", ""):
        host = "::1" if host == "::" else "127.0.0.1"
    where = config.host_port_text(host, port)
    found: list[tuple[int, list[str]]] = []
    asking = threading.Thread(target=_ask, args=(f"http://{where}/status", found), daemon=True)
    asking.start()
    asking.join(ALREADY_TIMEOUT)
    if not found:
        return None  # not ours, or not answering: the lines above say what is in use
    pid, services = found[0]
    return (
        f"retreatkit already runs here (PID {pid}: {', '.join(services)}; admin {where}):"
        " `retreatkit tui` opens its dashboard, or stop it first"
    )


def _ask(url: str, found: list[tuple[int, list[str]]]) -> None:
    # imported here: only a second `up` asks, and with http.client it is a fifth of what
    # a guest's service would otherwise load for nothing before it answers
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    try:
        with opener.open(url, timeout=ALREADY_TIMEOUT) as answer:
            process = json.loads(answer.read(ALREADY_MAX))["process"]
        found.append((int(process["pid"]), [str(s) for s in process["services"]]))
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        pass


def own_names(cfg: dict[str, Any], lan: LanAddress) -> dict[str, str]:
    """The names `up` gives the relay and the mirror (for its nameserver's records): at the
    address the organiser configured, else each at the address it listens on when that is
    one address of this machine other than loopback, else at the LAN address chosen. A
    relay bound to 10.201.0.1 alone was named after another interface's address, where
    attendees found nothing listening."""
    out = {}
    for service in ("relay", "mirror"):
        host, _ = config.host_port(cfg[service]["listen"])
        own = lan.how != CONFIGURED and _one_address(host)
        out[f"{service}.retreat.lan"] = host if own else lan.address
    return out


def _one_address(host: str) -> bool:
    """`host` is one IP address other than loopback: not every address, not a name (what
    a name names is not ours to say)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not (address.is_unspecified or address.is_loopback)


def reach(host: str, lan_address: str) -> tuple[str, str]:
    """(the address attendees use for a service bound to `host`, a note when they cannot)."""
    if is_loopback(host):
        return host, " (loopback only: attendees cannot reach it)"
    if host in ("0.0.0.0", "::", ""):
        if is_loopback(lan_address):
            return lan_address, " (this machine has no LAN address yet)"
        return lan_address, ""
    return host, ""


def attendee_addresses(
    bound: dict[str, tuple[str, int]], lan_address: str, public: dict[str, str] | None = None
) -> dict[str, str]:
    """Where attendees reach each service this process hosts, `HOST:PORT` as `reach`
    gives it (the mirror's `public_url` when the organiser set one): what the dashboard
    shows beside each service, where the admin endpoint's address is no service's."""
    public = public or {}
    return {
        name: public.get(name) or config.host_port_text(reach(host, lan_address)[0], port)
        for name, (host, port) in bound.items()
    }


def attendee_lines(
    bound: dict[str, tuple[str, int]],
    lan_address: str,
    named: bool,
    public: dict[str, str] | None = None,
) -> list[str]:
    """What the organiser tells attendees, one line per service this process hosts; `named`
    when the nameserver here gives relay.retreat.lan and mirror.retreat.lan; `public`, the
    URL the organiser set for a service (the mirror's `public_url`), which its page uses."""
    public = public or {}
    lines = []
    if "relay" in bound:
        host, port = bound["relay"]
        address, note = reach(host, lan_address)
        shown = (
            f"relay.retreat.lan:{port} ({address}:{port})"
            if named and not note
            else f"{address}:{port}"
        )
        lines.append(f"bob relay: {shown}{note}")
    if "mirror" in bound:
        host, port = bound["mirror"]
        address, note = reach(host, lan_address)
        name = "mirror.retreat.lan" if named and not note else address
        url = f"http://{name}:{port}"
        if public.get("mirror"):  # the organiser's word (a reverse proxy, a name)
            url, note = public["mirror"].rstrip("/"), ""
        lines.append(
            f"package mirror: {url}/ (its page shows the pip, uv, opam, npm and apt lines){note}"
        )
    if "nameserver" in bound:
        host, port = bound["nameserver"]
        address, note = reach(host, lan_address)
        # on loopback DHCP has nothing to hand out: the note says so
        advice = "" if is_loopback(host) else f" ({dhcp_advice(host, port)})"
        lines.append(f"DNS server: {address} port {port}{advice}{note}")
    return lines


def dhcp_advice(host: str, port: int) -> str:
    """What makes the nameserver one DHCP can hand out: DHCP names a server, never a
    port (option 6, RFC 2132), so clients ask it on 53."""
    if port == 53:
        return "hand it out by DHCP"
    return f"DHCP needs port 53: listen on {config.host_port_text(host, 53)}"
