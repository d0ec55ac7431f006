"""What the dashboard knows: the last status of each endpoint, figures over time, alarms.

Pure: the caller passes every status and the time it was read, so tests pin it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from retreatkit.tui.fmt import get, number
from retreatkit.tui.trend import Series

SERVICES = ("relay", "mirror", "nameserver")
# figures watched for leaks: (label, path in /status)
WATCHED = (
    ("relay open connections", ("relay", "connections_open")),
    ("relay waiting senders", ("relay", "waiting_senders")),
    ("mirror open connections", ("mirror", "connections_open")),
    ("nameserver open connections", ("nameserver", "connections_open")),
    ("process memory", ("process", "memory_bytes")),
    ("process open files", ("process", "open_files")),
)
# the counter behind each service's throughput
THROUGHPUT = {
    "relay": (("relay", "bytes_relayed"),),
    "mirror": (("mirror", "bytes_from_cache"), ("mirror", "bytes_from_upstream")),
    "nameserver": (("nameserver", "queries"),),
}


@dataclass
class EndpointState:
    name: str
    status: dict[str, Any] | None = None
    error: str | None = None
    series: dict[str, Series] = field(default_factory=dict)

    def services(self) -> list[str]:
        if self.status is None:
            return []
        hosted = get(self.status, "process", "services")
        if isinstance(hosted, list):
            return [s for s in hosted if isinstance(s, str)]
        return [s for s in SERVICES if isinstance(self.status.get(s), dict)]

    def section(self, service: str) -> dict[str, Any]:
        value = (self.status or {}).get(service)
        return value if isinstance(value, dict) else {}

    def is_up(self, service: str) -> bool | None:
        """True, False, or None when unreachable. A section without `up` counts as up:
        the process that hosts it answered for it."""
        if self.error is not None or self.status is None:
            return None
        up = self.section(service).get("up")
        return up if isinstance(up, bool) else service in self.services()

    def line(self, key: str) -> Series:
        if key not in self.series:
            self.series[key] = Series()
        return self.series[key]


class DashboardState:
    def __init__(self, endpoints: list[str], leak_window: float = 600.0) -> None:
        self.endpoints = {name: EndpointState(name) for name in endpoints}
        self.leak_window = leak_window

    def record(
        self,
        endpoint: str,
        now: float,
        status: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """A poll's outcome: the status read at `now`, or the one-line error."""
        state = self.endpoints[endpoint]
        if error is not None:
            state.error = error
            return
        state.error = None
        state.status = status
        for label, path in WATCHED:
            value = number(get(status, *path))
            if value is not None:
                state.line(label).add(now, value)
        for service, paths in THROUGHPUT.items():
            values = [number(get(status, *p)) for p in paths]
            known = [v for v in values if v is not None]
            if known:
                state.line(f"{service} throughput").add(now, sum(known))

    def hosting(self, service: str) -> EndpointState | None:
        """The first endpoint that hosts `service` (reachable ones first)."""
        found = [e for e in self.endpoints.values() if service in e.services()]
        found.sort(key=lambda e: e.error is not None)
        return found[0] if found else None

    def alarms(self, now: float) -> list[str]:
        """One line each: unreachable endpoints, services down, their warnings, leaks."""
        out = []
        for e in self.endpoints.values():
            if e.error is not None:
                out.append(e.error)
            for service in e.services():
                if e.is_up(service) is False:
                    out.append(f"{service} on {e.name} is down")
                warnings = e.section(service).get("warnings")
                if isinstance(warnings, list):
                    out.extend(f"{service}: {w}" for w in warnings if isinstance(w, str))
            for label, _ in WATCHED:
                if label in e.series:
                    leak = e.series[label].leak(label, self.leak_window, now)
                    if leak is not None:
                        out.append(f"leak? {leak.line()} on {e.name}")
        return out
