"""What the mirror knows of each upstream: up, down since when, and who may probe (pure).

An upstream is a host (`origin`): a redirect's target is charged for its own failures,
never the upstream that sent the mirror there. What makes one down:

- a failure to reach it at all (no name, no connection, no TLS, no connect in time): one
  is enough. Nothing of the request had reached the upstream, so every other request
  would meet the same;
- silence once connected (no answer's head in time) for `SILENT_PATHS` different
  requests, each asked after its last answer. One path may be silent while the rest
  answer (a stuck backend, one object a CDN node never sends): that request fails alone,
  its client is told why, and nobody else is refused. An upstream silent for everything
  (a dead uplink behind a proxy or portal that still accepts) is silent for any three
  paths, and is down from the third; the same path asked again (a client's retries) is
  one path, not three. A silent request counts nothing once the upstream has answered
  another asked after it (the nameserver's rule for a silent zone, silence.py there).

While it is down nobody waits on it: requests are answered from the store at once, and
one request at a time, after a backoff that doubles up to a cap, is let through as the
probe; the probe met by silence or a failed connect keeps it down. An upstream that
answers, even with an error status, is up: it is reachable.

A path met by silence is kept `quiet` the same way, alone: a client's retries of it
(uv, apt-get and npm retry a 504 on their own) are answered at once for a backoff, not
each after the whole bound again, and then one asks it again.
Times are monotonic seconds, passed in, so tests pin every outcome.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MAX_UPSTREAMS = 1024  # origins remembered; those up are forgotten first
SILENT_PATHS = 3  # different requests met by silence, none answered between: down
MAX_QUIET = 256  # silent paths remembered for each upstream; the oldest go first


class State(enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


class Verdict(enum.Enum):
    GO = "go"  # up or not yet tried: ask it
    PROBE = "probe"  # down, and this request is the one probe allowed now
    WAIT = "wait"  # down: do not ask; answer from the store or fail at once
    QUIET = "quiet"  # up, but this path was silent a moment ago: fail at once


@dataclass
class Quiet:
    """A path its upstream took and did not answer: not asked again before `retry_at`."""

    why: str
    retry_at: float
    failures: int  # silences in a row, which set the backoff


@dataclass
class Upstream:
    origin: str
    state: State = State.UNKNOWN
    down_since: float | None = None
    last_error: str | None = None
    failures: int = 0  # failed probes in a row, which set the backoff
    retry_at: float = 0.0
    probing: bool = False
    heard_at: float = -math.inf  # its last answer
    # the requests (paths) met by silence, asked after its last answer: < SILENT_PATHS
    silent: set[str] = field(default_factory=set)
    quiet: dict[str, Quiet] = field(default_factory=dict)  # the paths silent of late


def origin(url: str) -> str:
    """`scheme://host:port` of a URL: what is up or down together."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname or ''}:{port}"


class Health:
    def __init__(
        self,
        first_backoff: float = 2.0,
        max_backoff: float = 60.0,
        silent_paths: int = SILENT_PATHS,
    ) -> None:
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.silent_paths = silent_paths
        self._upstreams: dict[str, Upstream] = {}

    def get(self, origin: str) -> Upstream:
        upstream = self._upstreams.get(origin)
        if upstream is None:
            if len(self._upstreams) >= MAX_UPSTREAMS:  # index pages choose the hosts
                for name in [n for n, u in self._upstreams.items() if u.state is not State.DOWN]:
                    del self._upstreams[name]
                while len(self._upstreams) >= MAX_UPSTREAMS:  # all down: the oldest go
                    del self._upstreams[next(iter(self._upstreams))]
            upstream = self._upstreams[origin] = Upstream(origin)
        return upstream

    def ask(self, origin: str, now: float, path: str | None = None) -> Verdict:
        u = self.get(origin)
        if u.state is not State.DOWN:
            quiet = u.quiet.get(path) if path is not None else None
            return Verdict.QUIET if quiet is not None and now < quiet.retry_at else Verdict.GO
        if u.probing or now < u.retry_at:
            return Verdict.WAIT
        u.probing = True
        return Verdict.PROBE

    def answered(self, origin: str, now: float, path: str | None = None) -> None:
        """It answered (any status), the request for `path` if given: it is up."""
        u = self.get(origin)
        u.heard_at = max(u.heard_at, now)
        if path is not None:
            u.quiet.pop(path, None)
        u.state, u.down_since, u.failures, u.probing = State.UP, None, 0, False
        u.silent.clear()

    def failed(self, origin: str, now: float, why: str, verdict: Verdict) -> None:
        """It could not be reached. Only the probe's failure lengthens the backoff: requests
        that set out before it went down fail too, and are not news."""
        u = self.get(origin)
        u.last_error = why
        if u.state is State.DOWN and verdict is not Verdict.PROBE:
            return
        if u.state is not State.DOWN:
            u.state, u.down_since, u.failures = State.DOWN, now, 0
            u.silent.clear()
        u.failures += 1
        u.retry_at = now + min(self.max_backoff, self.first_backoff * 2 ** (u.failures - 1))
        u.probing = False

    def silent(
        self, origin: str, path: str, sent: float, now: float, why: str, verdict: Verdict
    ) -> bool:
        """It took the request for `path`, asked at `sent`, and sent no answer in time.
        Whether it is down now: for the probe, or as the `SILENT_PATHS`th path silent
        since its last answer (then `failed`); else this request alone failed, and the
        upstream is as it was."""
        u = self.get(origin)
        self._quieten(u, path, now, why)
        if u.state is not State.DOWN:
            if u.heard_at > sent:  # it answered another request since: this path's own
                return False
            u.silent.add(path)
            if len(u.silent) < self.silent_paths:
                return False
        self.failed(origin, now, why, verdict)
        return True

    def _quieten(self, u: Upstream, path: str, now: float, why: str) -> None:
        before = u.quiet.pop(path, None)
        failures = before.failures + 1 if before is not None else 1
        wait = min(self.max_backoff, self.first_backoff * 2 ** (failures - 1))
        u.quiet[path] = Quiet(why, now + wait, failures)  # the newest last
        if len(u.quiet) > MAX_QUIET:
            del u.quiet[next(iter(u.quiet))]

    def quiet(self, origin: str, path: str) -> Quiet | None:
        """Why, and till when, a path is not asked again (`Verdict.QUIET`)."""
        return self.get(origin).quiet.get(path)

    def abandoned(self, origin: str, verdict: Verdict) -> None:
        """The probe ended without a verdict (cancelled): let another request probe."""
        if verdict is Verdict.PROBE:
            self.get(origin).probing = False

    def all(self) -> list[Upstream]:
        return list(self._upstreams.values())

    def is_down(self, origin: str) -> bool:
        u = self._upstreams.get(origin)
        return u is not None and u.state is State.DOWN

    def retry_in(self, origin: str, now: float) -> float:
        return max(0.0, self.get(origin).retry_at - now)
