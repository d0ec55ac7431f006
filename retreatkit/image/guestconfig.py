"""A guest's configuration, carried on a small raw disk: never on qemu's command line,
where any user of the host could read the admin token in the process list.

The disk holds, from byte 0: the line `retreatkit-guest 1`, the JSON document's length
in decimal on a line of its own, the JSON document, then each carried file's bytes in the
order the document lists them, zero-padded to a whole 512-byte sector.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from retreatkit import config
from retreatkit.image import spec as specs

MAGIC = b"retreatkit-guest 1\n"
MAX_DOC = 1024 * 1024
MAX_FILES = 64 * 1024 * 1024  # blocklists carried to the guest, all together
SECTOR = 512


class GuestConfigError(ValueError):
    """The configuration cannot be carried to the guest, or the disk is not one."""


@dataclass
class GuestConfig:
    service: str
    config: dict[str, Any]  # retreat.toml's shape, with addresses as the guest sees them
    token: str  # the admin token the guest's endpoint accepts
    files: dict[str, bytes] = field(default_factory=dict)  # placed in spec.FILES_DIR

    def encode(self) -> bytes:
        names = sorted(self.files)
        doc = {
            "service": self.service,
            "config": self.config,
            "token": self.token,
            "files": [[n, len(self.files[n])] for n in names],
        }
        body = json.dumps(doc, sort_keys=True).encode()
        raw = MAGIC + b"%d\n" % len(body) + body + b"".join(self.files[n] for n in names)
        return raw + b"\0" * (-len(raw) % SECTOR)

    def write(self, path: Path) -> None:
        """Write the disk image readable by this user only: it holds the token."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(self.encode())


def read(stream: IO[bytes]) -> GuestConfig:
    if stream.read(len(MAGIC)) != MAGIC:
        raise GuestConfigError("the configuration disk is not a retreatkit guest configuration")
    length = int(stream.readline(16) or b"0")
    if not 0 < length <= MAX_DOC:
        raise GuestConfigError("the configuration disk's document is too large")
    doc = json.loads(stream.read(length))
    files = {}
    for name, size in doc["files"]:
        if "/" in name or name.startswith(".") or size > MAX_FILES:
            raise GuestConfigError(f"the configuration disk carries a bad file name {name!r}")
        files[name] = stream.read(size)
    return GuestConfig(doc["service"], doc["config"], doc["token"], files)


def _guest_host(host: str) -> str:
    """The host's loopback, as the guest reaches it through qemu's user networking."""
    return (
        specs.HOST_FROM_GUEST if host in ("localhost", "::1") or host.startswith("127.") else host
    )


def _guest_server(text: str) -> str:
    """A DNS server as the guest reaches it. A name is looked up here, as the nameserver
    would look it up on this host: a name only this host knows (its /etc/hosts) works
    in the guest too, one on this host's loopback becomes 10.0.2.2, and the guest's
    start neither waits on a query through qemu's resolver nor fails when that path
    does. IPv4 only: qemu's user network gives the guest no IPv6. A name that does not
    resolve here now is left as it is, for the guest to look up at its start."""
    from retreatkit.nameserver.hosted import address_of, server_text

    host, port = server_text(text)
    with contextlib.suppress(ValueError):
        host = address_of(host, port, socket.AF_INET)
    host = _guest_host(host)
    return config.host_port_text(host, port)


def _guest_servers(rule: object) -> object:
    """A forward rule's server or servers as the guest reaches them; what is neither a
    server nor a list of them is the guest's own check to refuse."""
    if isinstance(rule, str):
        return _guest_server(rule)
    if isinstance(rule, list):
        return [_guest_server(s) if isinstance(s, str) else s for s in rule]
    return rule


def _guest_url(url: str) -> str:
    parts = urlsplit(url)
    if not parts.hostname:
        return url
    netloc = _guest_host(parts.hostname) + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def carried_name(number: int, source: str) -> str:
    """The name a list file carried to the guest has there (in spec.FILES_DIR): numbered,
    since two folders may hold files of one name."""
    return f"{number}-{PurePosixPath(source).name}"


def guest_lists(blocklists: list[str], folder: str = specs.FILES_DIR) -> list[str]:
    """The nameserver's `blocklists` as the guest reads them, in the host's order: a file
    as its carried copy in `folder`, a URL with the host's loopback as the guest reaches it."""
    return [
        _guest_url(source) if "://" in source
        else f"{folder}/{carried_name(number, source)}"
        for number, source in enumerate(blocklists)
    ]  # fmt: skip


GUEST_KEEP_FREE = 16 * 1024 * 1024  # what a store disk of the mirror's own keeps free

# Through qemu's user networking (not passt) every client arrives from 10.0.2.2, so a bound
# "per client" is one bound for the whole LAN. Those bounds are raised to LAN-wide ones:
# the relay's 64 connections (32 transfers) and its 8 failed joins (then one per 15 s),
# left as they are, would let one guesser or a few typing attendees refuse everyone.
GUEST_RELAY = {
    "per_ip": 256,  # connections: 128 transfers at once
    "waiting_per_ip": 128,  # senders waiting
    "failed_joins": 64,  # failed joins by the whole LAN at once ...
    "failed_join_wait": 1.0,  # ... then one a second; guessing also widens nameplates
}
GUEST_MIRROR_CONNECTIONS = 1 << 16


def render(
    service: str, cfg: dict[str, Any], token: str, disk: bool, keeps_clients: bool = False
) -> GuestConfig:
    """The guest's configuration from this host's retreat.toml: listen on the guest's own
    ports, reach the host's loopback at 10.0.2.2, carry local blocklists as files.
    `keeps_clients`: the guest sees each client's own address (passt), so its bounds per
    client stay as configured."""
    image = specs.spec(service)
    out = copy.deepcopy(config.DEFAULTS)
    section = copy.deepcopy(cfg[service])
    out["admin"]["listen"] = f"0.0.0.0:{specs.ADMIN_PORT}"
    section["listen"] = f"0.0.0.0:{image.ports[0][1]}"
    files: dict[str, bytes] = {}
    if service == "relay" and not keeps_clients:
        for key in ("per_ip", "waiting_per_ip", "failed_joins"):
            section[key] = max(int(section[key]), GUEST_RELAY[key])
        section["failed_join_wait"] = min(
            float(section["failed_join_wait"]), GUEST_RELAY["failed_join_wait"]
        )
    if service == "mirror":
        from retreatkit.mirror import upstreams

        section["store"] = f"{specs.DATA_MOUNT}/mirror" if disk else "/run/mirror"
        section["pypi"] = _guest_url(section["pypi"] or upstreams.default_pypi() or "")
        section["opam"] = _guest_url(section["opam"] or upstreams.default_opam() or "")
        section["npm"] = _guest_url(section["npm"] or upstreams.default_npm() or "")
        apt = section["apt"] or upstreams.default_apt()
        section["apt"] = {name: _guest_url(url) for name, url in apt.items()}
        section["lists"] = [_guest_url(u) for u in section["lists"]]
        if disk:  # the disk is the store's alone: no other program needs its free space
            section["keep_free_bytes"] = min(int(section["keep_free_bytes"]), GUEST_KEEP_FREE)
        if not keeps_clients:
            # one address for the whole LAN (above): its cap is the mirror's total one,
            # which its open-file limit sets (uv alone opens up to 50 connections at once)
            section["per_address"] = GUEST_MIRROR_CONNECTIONS
    if service == "nameserver":
        # without upstreams of its own the guest asks qemu's resolver, which asks the host's
        ups = [_guest_server(u) for u in section["upstreams"]]
        section["upstreams"] = ups or [f"{specs.DNS_FROM_GUEST}:53"]
        section["forward"] = {z: _guest_servers(v) for z, v in section["forward"].items()}
        section["mirror"] = _guest_url(section["mirror"]) if section["mirror"] else ""
        for number, source in enumerate(section["blocklists"]):
            if "://" not in source:
                name = carried_name(number, source)
                try:
                    files[name] = Path(source).read_bytes()
                except OSError as exc:
                    why = exc.strerror
                    raise GuestConfigError(f"cannot read blocklist {source}: {why}") from None
        section["blocklists"] = guest_lists(section["blocklists"])
        if not keeps_clients:
            # through qemu's user networking every client arrives from 10.0.2.2: a limit
            # per client would be one limit for the whole LAN
            section["rate_limit"] = 0
    if sum(len(b) for b in files.values()) > MAX_FILES:
        raise GuestConfigError("blocklists larger than 64 MiB cannot be carried to a guest")
    out[service] = section
    return GuestConfig(service, out, token, files)
