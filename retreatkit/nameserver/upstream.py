"""Upstreams: which to ask, in what order, and what their answers say about their health.

The clock is the caller's. An upstream that fails three times in a row is down for
RETRY_AFTER seconds (RFC 8767's failure recheck timer); then one query at a time
probes it while the others pass it by. When every upstream is down and none is due a
probe, asking fails at once: stale answers and SERVFAIL come without waiting on
servers known to be silent. SERVFAIL and REFUSED from an upstream count as failures
(and fail over), never as answers.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from retreatkit.nameserver import reply as replies
from retreatkit.nameserver import wire
from retreatkit.nameserver.errors import BadReply, UpstreamFailed

ATTEMPT_TIMEOUT = 1.5
RETRY_AFTER = 30.0  # RFC 8767: recheck a failing upstream after ~30 s
FAILURES_TO_DOWN = 3
RCODE_SERVFAIL, RCODE_REFUSED = 2, 5


@dataclass
class Upstream:
    host: str
    port: int = 53
    failures: int = 0  # in a row
    down_until: float = 0.0
    probing: bool = False  # a probe is out: nobody else asks until it ends
    queries: int = 0
    errors: int = 0
    latency_ms: float = 0.0  # moving average
    last_error: str = ""

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def down(self) -> bool:
        return self.failures >= FAILURES_TO_DOWN

    def state(self) -> str:
        if self.down:
            return "down"
        return "up" if self.queries else "unknown"

    def answered(self, elapsed: float) -> None:
        self.queries += 1
        self.failures = 0
        self.down_until = 0.0
        ms = elapsed * 1000
        self.latency_ms = ms if self.latency_ms == 0 else 0.8 * self.latency_ms + 0.2 * ms

    def failed(self, now: float, why: str) -> None:
        self.queries += 1
        self.errors += 1
        self.failures += 1
        self.last_error = why
        if self.down:
            self.down_until = now + RETRY_AFTER


class Transport(Protocol):
    """Sends one query and returns the reply that matches its ID, source and question."""

    async def query(
        self, upstream: Upstream, data: bytes, question: bytes, tcp: bool, timeout: float
    ) -> bytes: ...


@dataclass
class Answer:
    raw: bytes
    reply: replies.Reply | None  # None: a layout reply.digest leaves to dnspython
    upstream: Upstream


@dataclass
class UpstreamSet:
    servers: list[Upstream]
    transport: Transport
    clock: Callable[[], float]
    timeout: float = ATTEMPT_TIMEOUT
    random_id: Callable[[], int] = field(default=lambda: secrets.randbits(16))

    def plan(self, now: float) -> list[Upstream]:
        """Who to ask, in order: every upstream that is up, and any down one whose
        recheck is due and not already being probed."""
        return [u for u in self.servers if not u.down or (not u.probing and now >= u.down_until)]

    def next_check(self, now: float) -> float:
        waits = [u.down_until - now for u in self.servers if u.down]
        return max(0.0, min(waits)) if waits else 0.0

    async def ask(self, key: bytes) -> Answer:
        """The first good answer to the question in cache key `key`; UpstreamFailed if none."""
        plan = self.plan(self.clock())
        if not self.servers:
            raise UpstreamFailed("no upstream configured")
        if not plan:
            wait = self.next_check(self.clock())
            raise UpstreamFailed(f"every upstream is down; the next check is in {wait:.0f} s")
        question = key[:-1]
        last = ""
        for upstream in plan:
            probe = upstream.down
            if probe:
                upstream.probing = True
            started = self.clock()
            try:
                answer = await self._one(upstream, key, question)
            except (UpstreamFailed, TimeoutError, OSError) as exc:
                why = str(exc) or ("no answer in time" if isinstance(exc, TimeoutError) else
                                   type(exc).__name__)  # fmt: skip
                upstream.failed(self.clock(), why)
                last = f"{upstream.address}: {why}"
                continue
            finally:
                if probe:
                    upstream.probing = False
            rcode = answer.reply.rcode if answer.reply is not None else wire.HEADER.unpack_from(
                answer.raw)[1] & 0xF  # fmt: skip
            if rcode in (RCODE_SERVFAIL, RCODE_REFUSED):
                why = "SERVFAIL" if rcode == RCODE_SERVFAIL else "REFUSED"
                upstream.failed(self.clock(), why)
                last = f"{upstream.address}: {why}"
                continue
            upstream.answered(self.clock() - started)
            return answer
        raise UpstreamFailed(last)

    async def _one(self, upstream: Upstream, key: bytes, question: bytes) -> Answer:
        for tcp in (False, True):
            qid = self.random_id()
            data = wire.upstream_query(qid, key)
            raw = await self.transport.query(
                upstream, data, question, tcp, self.timeout * (1 + tcp)
            )
            try:
                reply = replies.digest(raw, question)
            except replies.Unusual:
                return Answer(raw, None, upstream)
            if not reply.truncated:
                return Answer(raw, reply, upstream)
            if tcp:
                raise BadReply("truncated over TCP")
        raise AssertionError("unreachable")
