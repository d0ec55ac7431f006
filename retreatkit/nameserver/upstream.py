"""Upstreams: which to ask, in what order, and what their answers say about their health.

A slow uplink is not a dead one: an upstream that has not answered after ATTEMPT_TIMEOUT
is passed on to the next one, but its query stays open, and whichever answers first
within PATIENCE seconds answers (stubs wait 5 s before they ask again). Only a query
with no answer by then counts as a failure. Without this, an uplink whose round trip
took longer than one attempt answered nothing at all: every reply came after we had
given up, was counted as spoofed, and the upstream was marked down.

The clock is the caller's. An upstream is down when it answers none of our questions,
not when some names go unanswered: a zone's own servers can be silent (a dead domain, a
tracker firewalled away) while the upstream answers everything else, and three such
questions asked at once took the LAN's DNS down for everyone, again every 30 s. When
queries unanswered for ATTEMPT_TIMEOUT, with nothing heard from their upstream since,
are enough, with the failures already counted, to take it down, it is asked a check
question beside them (silence.py: a random name under the forwarded zone, or under com,
which only an upstream that reaches beyond its cache answers), one at a time. An
unanswered query counts nothing if the upstream replied to another question of ours
since it was sent, or passed the check; else it is a failure. Three failures in a row
and it is down: passed by for RETRY_AFTER seconds (RFC 8767's failure recheck timer;
the set's `recheck`), then asked the check question (`due`, `check_again`: the caller
sends it), and up again only when it passes; else passed by for another RETRY_AFTER.
Never an attendee's question as the probe: a resolver whose own uplink is gone still
answers the names its cache holds, and one such answer took it for up again, so every
new name waited on it (4 s each) until three took it down once more. The check's name
is one no cache holds (silence.py), and nobody waits on it.

When every upstream is down, asking fails at once: stale answers and SERVFAIL come
without waiting on servers known to be silent. SERVFAIL and REFUSED
from an upstream count as failures (and fail over), never as answers; but they take no
upstream down: an upstream that answers is there, and validating resolvers answer
SERVFAIL for one broken name (dnssec-failed.org), so an attendee asking three of them,
or three zone transfers an upstream refuses, took the LAN's DNS down for everyone. It
shows as `failing`.
An upstream that sends our questions back to us (loops.py found it) is `looping`: asked
nothing until a loop probe says that ended.
"""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from retreatkit.config import host_port_text
from retreatkit.nameserver import reply as replies
from retreatkit.nameserver import wire
from retreatkit.nameserver.errors import BadReply, UpstreamFailed
from retreatkit.nameserver.silence import (
    PASSING,
    Silence,
    check_key,
    check_parent,
    random_label,
)

ATTEMPT_TIMEOUT = 1.5  # then the next upstream is asked too
PATIENCE = 4.0  # how long a query waits for any of them; under a stub's 5 s
RETRY_AFTER = 30.0  # RFC 8767: recheck a failing upstream after ~30 s
FAILURES_TO_DOWN = 3
RCODE_FORMERR, RCODE_SERVFAIL, RCODE_NOTIMP, RCODE_REFUSED = 1, 2, 4, 5
RCODE_NAMES = {1: "FORMERR", 2: "SERVFAIL", 4: "NOTIMP", 5: "REFUSED"}


@dataclass
class Upstream:
    host: str
    port: int = 53
    failures: int = 0  # in a row
    down_until: float = 0.0
    queries: int = 0
    errors: int = 0
    latency_ms: float | None = None  # moving average; None until it has answered
    last_error: str = ""
    edns: bool = True  # False once it refused a query with EDNS and answered one without
    looping: bool = False  # it forwards our questions back to us (loops.py): never asked
    silence: Silence = field(default_factory=Silence)  # when it last answered beyond its cache
    checking: bool = False  # a check question is out (one at a time), or a recheck
    overdue: int = 0  # its queries in progress, unanswered for an attempt's time

    @property
    def address(self) -> str:
        return host_port_text(self.host, self.port)

    @property
    def heard_at(self) -> float:
        """When it last replied to a question of ours or passed a check, on the set's clock."""
        return self.silence.heard_at

    @property
    def down(self) -> bool:
        return self.failures >= FAILURES_TO_DOWN

    def state(self) -> str:
        """`looping` (skipped until a loop probe finds the loop gone), `down` (skipped
        until its recheck), `failing` (its last query failed), `up`, or `unknown` (not
        asked yet)."""
        if self.looping:
            return "looping"
        if self.down:
            return "down"
        if self.failures:
            return "failing"
        return "up" if self.queries else "unknown"

    def answered(self, elapsed: float) -> None:
        """A usable answer to a question of ours. One that comes while it is down (to a
        question asked before) may be from its cache: only the check brings it back."""
        self.queries += 1
        if not self.down:
            self.failures = 0
        self.timed(elapsed)

    def back(self, elapsed: float) -> None:
        """It passed the check while down: it resolves new names again."""
        self.queries += 1
        self.failures = 0
        self.down_until = 0.0
        self.timed(elapsed)

    def timed(self, elapsed: float) -> None:
        ms = elapsed * 1000
        self.latency_ms = ms if self.latency_ms is None else 0.8 * self.latency_ms + 0.2 * ms

    def failed(
        self, now: float, why: str, recheck: float = RETRY_AFTER, answered: bool = False
    ) -> None:
        """A failed query; `answered`: the upstream said so itself (SERVFAIL, REFUSED),
        so it is there: failing, never down (but down already, it stays so: only the
        check brings it back)."""
        self.missed(why)
        if answered:
            if not self.down:
                self.failures = min(self.failures + 1, FAILURES_TO_DOWN - 1)
            return
        self.failures += 1
        if self.down:
            self.down_until = now + recheck

    def missed(self, why: str) -> None:
        """A failed query that counts nothing against the upstream (silence.py spared it)."""
        self.queries += 1
        self.errors += 1
        self.last_error = why


class Transport(Protocol):
    """Sends one query and returns the reply that matches its ID, source and question;
    and runs attempts staggered by `delay` (race.staggered's contract)."""

    async def query(
        self, upstream: Upstream, data: bytes, question: bytes, tcp: bool, timeout: float
    ) -> bytes: ...

    async def race(
        self, attempts: Sequence[Callable[[], Awaitable[Answer | None]]], delay: float
    ) -> tuple[Answer | None, list[int]]: ...


@dataclass(slots=True)
class Answer:
    raw: bytes
    reply: replies.Reply | None  # None: a layout reply.digest leaves to dnspython
    upstream: Upstream


class RandomIds:
    """Query IDs from the operating system's CSPRNG (RFC 5452 9.2), read in batches: one
    getrandom call per 2048 IDs instead of one per query."""

    BATCH = 4096

    def __init__(self) -> None:
        self._ids: list[int] = []

    def __call__(self) -> int:
        ids = self._ids
        if not ids:
            raw = os.urandom(self.BATCH)
            ids.extend(int.from_bytes(raw[i : i + 2], "big") for i in range(0, self.BATCH, 2))
        return ids.pop()


@dataclass
class UpstreamSet:
    servers: list[Upstream]
    transport: Transport
    clock: Callable[[], float]
    timeout: float = ATTEMPT_TIMEOUT  # then the next upstream is asked as well
    patience: float = PATIENCE  # the longest a question waits for any upstream
    random_id: Callable[[], int] = field(default_factory=RandomIds)
    recheck: float = RETRY_AFTER  # seconds a down upstream is passed by, then probed
    zone: str = ""  # the domain forwarded to these servers; "" for the default upstreams
    check_label: Callable[[], str] = random_label  # the check question's name, under `zone`
    # told of each answer and failure, after the upstream's state took it (statelog)
    note: Callable[[Upstream, str, float], None] | None = None

    def plan(self, now: float) -> list[Upstream]:
        """Who to ask, in order: every upstream that is neither down nor looping."""
        servers = self.servers
        for u in servers:
            if u.failures >= FAILURES_TO_DOWN or u.looping:
                break
        else:
            return servers  # all up: the common case, asked on every cache miss
        return [u for u in servers if not u.looping and not u.down]

    def due(self, now: float) -> list[Upstream]:
        """The down upstreams whose recheck is due, to be asked the check (check_again)."""
        return [
            u for u in self.servers
            if u.down and not u.looping and not u.checking and now >= u.down_until
        ]  # fmt: skip

    async def check_again(self, upstream: Upstream) -> bool:
        """Ask a down upstream the check question: whether it passed, and so is up again.
        Else it is passed by for another `recheck` seconds, why in its last_error."""
        upstream.checking = True
        started = self.clock()
        try:
            why = await self._check(upstream, started + self.patience)
        finally:
            upstream.checking = False
        if why:
            self._failed(upstream, why)
            return False
        now = self.clock()
        upstream.silence.heard(now)
        upstream.back(now - started)
        self._noted(upstream)
        return True

    def next_check(self, now: float) -> float:
        waits = [u.down_until - now for u in self.servers if u.down and not u.looping]
        return max(0.0, min(waits)) if waits else 0.0

    async def ask(self, key: bytes) -> Answer:
        """The first good answer to the question in cache key `key`; UpstreamFailed if none."""
        plan = self.plan(self.clock())
        if not self.servers:
            raise UpstreamFailed("no upstream configured")
        if not plan:
            if all(u.looping for u in self.servers):
                raise UpstreamFailed("every upstream sends our questions back to us (a loop)")
            wait = self.next_check(self.clock())
            looping = " or looping" if any(u.looping for u in self.servers) else ""
            raise UpstreamFailed(
                f"every upstream is down{looping}; the next check is in {wait:.0f} s"
            )
        question = key[:-1]
        deadline = self.clock() + self.patience
        if len(plan) == 1:  # the common case: nothing to stagger
            only = self._attempt(plan[0], key, question, deadline)
            result = await self._settle(plan[0], only, deadline)
            if isinstance(result, Answer):
                return result
            raise UpstreamFailed(result)
        why: list[str] = []
        sent = [math.inf] * len(plan)  # when each attempt started

        def attempt(index: int, upstream: Upstream) -> Callable[[], Awaitable[Answer | None]]:
            async def run() -> Answer | None:
                sent[index] = self.clock()
                result = await self._settle(
                    upstream, self._attempt(upstream, key, question, deadline), deadline
                )
                if isinstance(result, Answer):
                    return result
                why.append(result)
                return None

            return run

        answer, overtaken = await self.transport.race(
            [attempt(i, u) for i, u in enumerate(plan)], self.timeout
        )
        for index in overtaken:
            # silent for a whole attempt while another answered: a failure, as a silent
            # upstream always was (down after three, then passed by), unless it answered
            # since (its check question, cut short by the winner, may not have come)
            self._unanswered(plan[index], "no answer in time", sent[index])
        if answer is None:
            raise UpstreamFailed(why[-1] if why else "no answer in time")
        return answer

    async def _attempt(
        self, upstream: Upstream, key: bytes, question: bytes, deadline: float
    ) -> tuple[bytes, replies.Reply | None]:
        """One upstream's reply: over UDP, waited for until `deadline` (our clock), and
        over TCP when that one is truncated."""
        edns = upstream.edns
        raw, reply = await self._udp(upstream, key, question, deadline, edns)
        if edns and _rcode(raw, reply) in (RCODE_FORMERR, RCODE_NOTIMP):
            # RFC 6891 7: a server that does not speak EDNS (an old venue router) refuses
            # the OPT record; asked again without it, it answers, and is asked so from now
            raw, reply = await self._udp(upstream, key, question, deadline, False)
            if _rcode(raw, reply) not in (RCODE_FORMERR, RCODE_NOTIMP):
                upstream.edns = False
        if reply is not None and reply.truncated:
            raw = await self._query(upstream, key, question, True, self.timeout * 2, upstream.edns)
            reply = replies.digest(raw, question)
            if reply.truncated:
                raise BadReply("truncated over TCP")
        return raw, reply

    async def _udp(
        self, upstream: Upstream, key: bytes, question: bytes, deadline: float, edns: bool
    ) -> tuple[bytes, replies.Reply | None]:
        wait = max(0.0, deadline - self.clock())
        raw = await self._query(upstream, key, question, False, wait, edns)
        upstream.silence.heard(self.clock())
        try:
            return raw, replies.digest(raw, question)
        except replies.Unusual:
            return raw, None  # well formed, in a layout left to dnspython

    async def _settle(
        self,
        upstream: Upstream,
        attempt: Awaitable[tuple[bytes, replies.Reply | None]],
        deadline: float,
    ) -> Answer | str:
        """An attempt's outcome, told to the upstream's health: the Answer, or why not.
        Unanswered for a whole ATTEMPT_TIMEOUT, nothing heard from the upstream since it
        was sent, and enough of them so to take it down: the upstream is asked the check
        question beside it (one at a time)."""
        started = self.clock()
        overdue = False

        async def query() -> Answer:
            raw, reply = await attempt
            return Answer(raw, reply, upstream)

        async def check() -> None:
            nonlocal overdue
            overdue = True
            upstream.overdue += 1
            if (
                upstream.checking
                or upstream.heard_at > started  # it is there
                or upstream.failures + upstream.overdue < FAILURES_TO_DOWN  # no harm yet
            ):
                return
            upstream.checking = True
            try:
                if not await self._check(upstream, deadline):  # it reached the zone's servers
                    upstream.silence.heard(self.clock())
            finally:
                upstream.checking = False

        try:
            answer, _ = await self.transport.race([query, check], self.timeout)
        except (UpstreamFailed, TimeoutError, OSError, replies.Unusual) as exc:
            why = str(exc) or ("no answer in time" if isinstance(exc, TimeoutError) else
                               type(exc).__name__)  # fmt: skip
            return self._unanswered(upstream, why, started)
        finally:
            if overdue:
                upstream.overdue -= 1
        assert answer is not None  # query() answers or raises
        raw, reply = answer.raw, answer.reply
        now = self.clock()
        upstream.silence.heard(now)
        rcode = _rcode(raw, reply)
        if rcode in (RCODE_SERVFAIL, RCODE_REFUSED):
            why = "SERVFAIL" if rcode == RCODE_SERVFAIL else "REFUSED"
            return self._failed(upstream, why, answered=True)
        upstream.answered(now - started)
        self._noted(upstream)
        return answer

    def _unanswered(self, upstream: Upstream, why: str, sent: float) -> str:
        """No usable answer to a query sent at `sent`: a failure of the upstream unless it
        has answered since (silence.py)."""
        if not upstream.silence.spares(sent):
            return self._failed(upstream, why)
        upstream.missed(why)  # its zone's servers are silent, not it
        self._noted(upstream)
        return f"{upstream.address}: {why}"

    async def _check(self, upstream: Upstream, deadline: float) -> str:
        """Ask the check question (silence.py), waiting until `deadline` at most: "" if
        it passed (the upstream reaches the zone's servers), else why not."""
        key = check_key(check_parent(self.zone), self.check_label())
        wait = max(0.0, deadline - self.clock())
        try:
            raw = await self._query(upstream, key, key[:-1], False, wait, upstream.edns)
        except TimeoutError:
            return "no answer in time"
        except (UpstreamFailed, OSError) as exc:
            return str(exc) or type(exc).__name__
        rcode = _rcode(raw, None)
        if rcode in PASSING:
            return ""
        name = RCODE_NAMES.get(rcode, f"rcode {rcode}")
        return f"{name} to the check question, a name no cache holds"

    async def probe(self, upstream: Upstream, key: bytes) -> int | None:
        """The rcode `upstream` answers the question in cache key `key` with, or None for
        no answer: a loop probe (loops.py), which counts for nothing in its health."""
        try:
            raw = await self._query(upstream, key, key[:-1], False, self.patience, upstream.edns)
        except (UpstreamFailed, TimeoutError, OSError):
            return None
        return int(wire.HEADER.unpack_from(raw)[1] & 0xF)

    def _failed(self, upstream: Upstream, why: str, answered: bool = False) -> str:
        upstream.failed(self.clock(), why, self.recheck, answered)
        self._noted(upstream)
        return f"{upstream.address}: {why}"

    def _noted(self, upstream: Upstream) -> None:
        if self.note is not None:
            self.note(upstream, self.zone, self.clock())

    def _query(
        self,
        upstream: Upstream,
        key: bytes,
        question: bytes,
        tcp: bool,
        timeout: float,
        edns: bool = True,
    ) -> Awaitable[bytes]:
        data = wire.upstream_query(self.random_id(), key, edns)
        return self.transport.query(upstream, data, question, tcp, timeout)


def _rcode(raw: bytes, reply: replies.Reply | None) -> int:
    return reply.rcode if reply is not None else wire.HEADER.unpack_from(raw)[1] & 0xF
