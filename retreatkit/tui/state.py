"""What the dashboard knows: the last status of each endpoint, figures over time, alarms.

Pure: the caller passes every status and the time it was read, so tests pin it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from retreatkit.tui.fmt import get, number, size
from retreatkit.tui.guests import Guest
from retreatkit.tui.trend import Series

SERVICES = ("relay", "mirror", "nameserver")
# a service's warnings raised as alarms (a line then says how many more): 100,000 of them
# stalled the overview
MAX_WARNINGS = 20
MAX_SERVICES = 16  # of a process's list of the services it hosts (it hosts four kinds)
# figures watched for leaks: (label, path in /status)
WATCHED = (
    ("relay open connections", ("relay", "connections_open")),
    ("relay waiting senders", ("relay", "waiting_senders")),
    ("mirror open connections", ("mirror", "connections_open")),
    ("nameserver open connections", ("nameserver", "connections_open")),
    ("process memory", ("process", "memory_bytes")),
    ("process open files", ("process", "open_files")),
)
# how much more a figure must end than it began to be called a leak: Python's memory
# creeps up by a few pages (8 KiB in 10 minutes, seen idle) and leaks nothing
LEAST_GROWTH = {"process memory": float(1 << 20)}
UNITS = {"process memory": size}
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
    url: str = ""
    # given by the organiser (on the command line, or noted on this machine), not found on
    # the LAN nor listed as a guest: only such an endpoint's guests are watched
    named: bool = False
    # a supervising endpoint's guests (None: it supervises none, or they were not read)
    guests: list[Guest] | None = None
    guests_error: str | None = None
    # a guest's own endpoint: (the supervising endpoint, the guest's name), and the guest
    # as the supervisor last listed it
    guest_of: tuple[str, str] | None = None
    guest: Guest | None = None
    # a supervisor that ends with its last guest (the one `retreatkit vm start` leaves in
    # the background), unreachable once none of its guests ran: it ended, as it should
    ended: bool = False

    def services(self) -> list[str]:
        if self.status is None:
            return [self.guest.service] if self.guest is not None else []
        hosted = get(self.status, "process", "services")
        if isinstance(hosted, list):
            return [s for s in hosted[:MAX_SERVICES] if isinstance(s, str)]
        return [s for s in SERVICES if isinstance(self.status.get(s), dict)]

    def guest_down(self) -> bool:
        """A guest's endpoint whose guest is not running: every service on it is down,
        whatever its last status said."""
        return self.guest is not None and not self.guest.running

    def section(self, service: str) -> dict[str, Any]:
        value = (self.status or {}).get(service)
        return value if isinstance(value, dict) else {}

    def is_up(self, service: str) -> bool | None:
        """True, False, or None when unreachable. A section without `up` counts as up:
        the process that hosts it answered for it."""
        if self.guest_down():
            return False
        if self.error is not None or self.status is None:
            return None
        up = self.section(service).get("up")
        return up if isinstance(up, bool) else service in self.services()

    def state_of(self, service: str) -> str:
        """How the overview names a service's state: up, DOWN, unreachable, or for a
        guest's service the guest's own state (stopped, restarting, failed, starting)."""
        if self.ended:
            return "ended"
        if self.guest is not None and (self.guest_down() or self.error or not self.status):
            if self.guest_down():
                return self.guest.state
            if self.guest.booting():
                return "starting"
        return {True: "up", False: "DOWN", None: "unreachable"}[self.is_up(service)]

    def ends_when_idle(self) -> bool:
        return self.section("vm").get("ends_when_idle") is True

    def line(self, key: str) -> Series:
        if key not in self.series:
            self.series[key] = Series()
        return self.series[key]


class DashboardState:
    def __init__(self, endpoints: list[str], leak_window: float = 600.0) -> None:
        self.endpoints = {name: EndpointState(name) for name in endpoints}
        self.leak_window = leak_window
        # (supervisor, guest): why the guest's endpoint is not watched (its token not had)
        self.unwatched: dict[tuple[str, str], str] = {}

    def add(self, name: str, url: str = "", guest_of: tuple[str, str] | None = None) -> None:
        """An endpoint found while running (a guest's, from its supervisor's list)."""
        self.endpoints[name] = EndpointState(name, url=url, guest_of=guest_of)

    def record_guests(
        self, endpoint: str, guests: list[Guest] | None, error: str | None = None
    ) -> None:
        """A supervisor's guests (or why they could not be read); each guest's endpoint
        learns its guest's state."""
        state = self.endpoints[endpoint]
        state.guests_error = error
        if guests is None:
            return
        state.guests = guests
        by_name = {g.name: g for g in guests}
        for e in self.endpoints.values():
            if e.guest_of is not None and e.guest_of[0] == endpoint:
                guest = by_name.get(e.guest_of[1])
                if guest is not None and new_run(e.guest, guest):
                    # the status read from the guest came from a process that is gone:
                    # what it said (up, its figures) is over until the guest answers again
                    # (a booting guest's forwarded port can hold a read for seconds)
                    e.status = None
                e.guest = guest

    def not_watched_now(self, supervisor: str) -> list[str]:
        """The guests' endpoints of `supervisor` watched no longer: those of a guest it no
        longer lists (removed) or lists stopped, on purpose. Their last status would read
        as current, and `cannot connect` as an alarm; actions would go to them. One the
        organiser named too stays: it was watched before it was known as a guest."""
        state = self.endpoints[supervisor]
        if state.guests is None:
            return []
        listed = {g.name: g for g in state.guests}
        return [
            e.name
            for e in self.endpoints.values()
            if e.guest_of is not None
            and e.guest_of[0] == supervisor
            and not e.named
            and (e.guest_of[1] not in listed or listed[e.guest_of[1]].state == "stopped")
        ]

    def forget(self, endpoint: str) -> None:
        """An endpoint not watched any more, and whatever it said."""
        self.endpoints.pop(endpoint, None)

    def guests(self) -> list[tuple[str, Guest]]:
        """Every guest every supervisor lists: (the supervisor, the guest)."""
        return [(e.name, g) for e in self.endpoints.values() for g in e.guests or []]

    def watching(self, supervisor: str, guest: str) -> EndpointState | None:
        """The endpoint watched for a supervisor's guest, if any."""
        for e in self.endpoints.values():
            if e.guest_of == (supervisor, guest):
                return e
        return None

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
            # its last list had nothing running: the supervisor went away with its last
            # guest, as a background one does (`retreatkit vm start` starts one again)
            state.ended = state.ends_when_idle() and not any(
                g.state in ("running", "restarting") for g in state.guests or []
            )
            return
        state.error = None
        state.ended = False
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

    def hosting(self, service: str) -> list[EndpointState]:
        """Every endpoint that hosts `service`, in the order they were added."""
        return [e for e in self.endpoints.values() if service in e.services()]

    def alarms(self, now: float) -> list[str]:
        """One line each: unreachable endpoints, services down, their warnings and their
        processes', leaks."""
        out = []
        for e in self.endpoints.values():
            if e.guest is not None and (e.guest_down() or (e.error and e.guest.booting())):
                pass  # its supervisor's list says why (below), not "cannot connect"
            elif e.error is not None and not e.ended:
                out.append(e.error)
            if e.guests_error is not None:
                out.append(e.guests_error)
            for g in e.guests or []:
                out += guest_alarm(g)
            if e.guest_down():
                continue  # what its last status said is over
            out.extend(warnings_of(e.section("process")))  # its log not written
            for service in e.services():
                if e.is_up(service) is False:
                    out.append(f"{service} on {e.name} is down")
                out.extend(f"{service}: {w}" for w in warnings_of(e.section(service)))
            for label, _ in WATCHED:
                if label in e.series:
                    least = LEAST_GROWTH.get(label, 0.0)
                    leak = e.series[label].leak(label, self.leak_window, now, least)
                    if leak is not None:
                        out.append(f"leak? {leak.line(UNITS.get(label))} on {e.name}")
        return out


def warnings_of(section: dict[str, Any]) -> list[str]:
    """A section's first MAX_WARNINGS warnings, and a line with how many more it has."""
    warnings = section.get("warnings")
    if not isinstance(warnings, list):
        return []
    said = [w for w in warnings[:MAX_WARNINGS] if isinstance(w, str)]
    hidden = len(warnings) - MAX_WARNINGS
    return [*said, f"{hidden:,} more warnings"] if hidden > 0 else said


def guest_alarm(g: Guest) -> list[str]:
    """A guest that should run and does not, in one line. A stopped one was stopped on
    purpose (or never started: a supervisor lists every guest ever defined), and a failed
    one is in its supervisor's own warnings already, with its last exit."""
    if g.state in ("running", "failed", "stopped"):
        return []
    line = f"guest {g.name} is {g.state}: its {g.service} is down"
    if g.state == "restarting" and g.restarts:
        line += f" (restart {g.restarts}"
        line += f"; last exit: {g.last_exit})" if g.last_exit else ")"
    return [line]


def new_run(before: Guest | None, now: Guest) -> bool:
    """Whether the guest's qemu is not the one it was (or there is none): it is not
    running, it restarted, or it runs for less time than it did."""
    if not now.running:
        return True
    if before is None:
        return False
    if not before.running or before.restarts != now.restarts:
        return True
    return (now.uptime_seconds or 0.0) < (before.uptime_seconds or 0.0)
