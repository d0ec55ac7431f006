"""What the mirror knows of each upstream: up, down since when, and who may probe (pure).

An upstream that cannot be reached (no name, no connection, no answer in time) is down.
While it is down nobody waits on it: requests are answered from the store at once, and
one request at a time, after a backoff that doubles up to a cap, is let through as the
probe. An upstream that answers, even with an error status, is up: it is reachable.
Times are monotonic seconds, passed in, so tests pin every outcome.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_UPSTREAMS = 1024  # origins remembered; those up are forgotten first


class State(enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


class Verdict(enum.Enum):
    GO = "go"  # up or not yet tried: ask it
    PROBE = "probe"  # down, and this request is the one probe allowed now
    WAIT = "wait"  # down: do not ask; answer from the store or fail at once


@dataclass
class Upstream:
    origin: str
    state: State = State.UNKNOWN
    down_since: float | None = None
    last_error: str | None = None
    failures: int = 0  # failed probes in a row, which set the backoff
    retry_at: float = 0.0
    probing: bool = False


def origin(url: str) -> str:
    """`scheme://host:port` of a URL: what is up or down together."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname or ''}:{port}"


class Health:
    def __init__(self, first_backoff: float = 2.0, max_backoff: float = 60.0) -> None:
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self._upstreams: dict[str, Upstream] = {}

    def get(self, origin: str) -> Upstream:
        upstream = self._upstreams.get(origin)
        if upstream is None:
            if len(self._upstreams) >= MAX_UPSTREAMS:  # index pages choose the hosts
                for name in [n for n, u in self._upstreams.items() if u.state is not State.DOWN]:
                    del self._upstreams[name]
            upstream = self._upstreams[origin] = Upstream(origin)
        return upstream

    def ask(self, origin: str, now: float) -> Verdict:
        u = self.get(origin)
        if u.state is not State.DOWN:
            return Verdict.GO
        if u.probing or now < u.retry_at:
            return Verdict.WAIT
        u.probing = True
        return Verdict.PROBE

    def answered(self, origin: str) -> None:
        """It answered (any status): it is up."""
        u = self.get(origin)
        u.state, u.down_since, u.failures, u.probing = State.UP, None, 0, False

    def failed(self, origin: str, now: float, why: str, verdict: Verdict) -> None:
        """It could not be reached. Only the probe's failure lengthens the backoff: requests
        that set out before it went down fail too, and are not news."""
        u = self.get(origin)
        u.last_error = why
        if u.state is State.DOWN and verdict is not Verdict.PROBE:
            return
        if u.state is not State.DOWN:
            u.state, u.down_since, u.failures = State.DOWN, now, 0
        u.failures += 1
        u.retry_at = now + min(self.max_backoff, self.first_backoff * 2 ** (u.failures - 1))
        u.probing = False

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
