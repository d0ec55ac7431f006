"""VM guests as a supervising endpoint lists them (`GET /vm/guests`), and which of their
admin endpoints the dashboard may watch (no Textual here).

A guest's own admin endpoint needs a token even for reads: the guest's own, never its
host's (which opens every guest and service there). The dashboard asks the supervisor for
it and sends it only where the organiser already sends the supervisor's: the supervisor's
host, or this machine's loopback when the supervisor is on this machine. A guest whose
admin port is forwarded to its host's loopback cannot be reached from another machine.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from retreatkit.lanaddress import is_loopback, is_own_address
from retreatkit.tui.fmt import MAX_ROWS, number
from retreatkit.tui.sources import endpoint_url

STATES = ("running", "stopped", "restarting", "failed")
BOOT_GRACE = 60.0  # seconds a running guest may take to answer before it counts as down


@dataclass(frozen=True)
class Guest:
    name: str
    service: str
    state: str  # one of STATES, or what the supervisor said (shown as it is)
    uptime_seconds: float | None
    restarts: int | None
    memory_bytes: float | None  # qemu's resident memory
    cpu_seconds: float | None  # qemu's user+system time
    memory_mb: float | None  # the guest's own memory
    last_exit: str | None
    admin: str | None  # its admin endpoint's URL, as the supervisor wrote it
    up: bool = False  # running, and its admin endpoint answered its supervisor
    address: str | None = None  # HOST:PORT its service is forwarded from, as the supervisor says

    @property
    def running(self) -> bool:
        return self.state == "running"

    def booting(self) -> bool:
        """Running, but too recently started to be expected to answer yet."""
        return self.running and (self.uptime_seconds or 0.0) < BOOT_GRACE


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def parse(doc: Any) -> list[Guest]:
    """The guests in a `/vm/guests` answer; ValueError (one line) if it is not one.
    Items that are not guests are left out: one bad item hides no other guest. Those past
    MAX_ROWS are too (the supervisor's status counts them all)."""
    items = doc.get("guests") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise ValueError('/vm/guests is not {"guests": [...]}')
    found: list[Guest] = []
    for item in items[:MAX_ROWS]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        restarts = number(item.get("restarts"))
        found.append(
            Guest(
                name=item["name"],
                service=_text(item.get("service")) or "?",
                state=_text(item.get("state")) or "?",
                uptime_seconds=number(item.get("uptime_seconds")),
                restarts=None if restarts is None else int(restarts),
                memory_bytes=number(item.get("memory_bytes")),
                cpu_seconds=number(item.get("cpu_seconds")),
                memory_mb=number(item.get("memory_mb")),
                last_exit=_text(item.get("last_exit")),
                admin=_text(item.get("admin")),
                up=item.get("up") is True,
                address=_text(item.get("address")),
            )
        )
    return found


TOKEN = re.compile(r"[A-Za-z0-9_-]{16,256}")  # as admin/token.py makes them (URL-safe)


def token_of(doc: Any) -> str:
    """The token in a `/vm/guests/NAME/token` answer; ValueError (one line) if there is none
    that can go in a header."""
    token = doc.get("token") if isinstance(doc, dict) else None
    if not isinstance(token, str) or not TOKEN.fullmatch(token):
        raise ValueError("its supervisor's answer for its admin token holds no token")
    return token


@functools.lru_cache(maxsize=64)  # asked at each poll for a guest it cannot watch
def is_local(host: str) -> bool:
    """Loopback, or a literal address of this machine (one a socket can bind)."""
    host = host.strip("[]")
    if is_loopback(host):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: not resolved here (no DNS on the dashboard's loop)
    return is_own_address(str(address))


def watch_url(supervisor: str, admin: str | None) -> tuple[str | None, str]:
    """(the URL to watch a guest's admin endpoint at, or None; why not, in a few words)."""
    if admin is None:
        return None, "admin not reported"
    try:
        url = endpoint_url(admin)
    except ValueError:
        return None, "admin URL not understood"
    host = urlsplit(url).hostname or ""
    own = urlsplit(supervisor).hostname or ""
    if host == own:
        return url, ""
    if is_loopback(host):
        if is_local(own):
            return url, ""
        return None, f"admin on {own}'s loopback only"
    return None, f"admin on {host}, not the supervisor's host: --connect {url} to watch it"
