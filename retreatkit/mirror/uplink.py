"""Upstream requests, each bounded in time and never sent to an upstream known to be down;
what each one's end says of its host's health (health.py), said in the log when it changes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from retreatkit import units
from retreatkit.mirror import faults, hops, redirects
from retreatkit.mirror.errors import (
    BadUpstreamData,
    MirrorError,
    UpstreamDown,
    UpstreamError,
    UpstreamStillQuiet,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from retreatkit.mirror.health import Health, Verdict, origin
from retreatkit.mirror.resolver import Sessions
from retreatkit.mirror.stats import Stats

log = logging.getLogger("retreatkit.mirror")


@dataclass
class Limits:
    connect_timeout: float = 5.0  # name resolution and TCP connect, in total
    headers_timeout: float = 10.0  # from the request sent to the answer's headers
    read_timeout: float = 30.0  # the longest silence mid-body
    index_timeout: float = 60.0  # how long a client waits for a page not held (it goes on)
    max_size: int = 8 * 1024**3
    downloads: int = 32  # upstream downloads at once; more wait their turn
    pages: int = 64  # upstream index pages at once; more wait their turn, in a page's bound
    min_rate: float = 1024.0  # bytes a second a download must bring, over each window; 0: any
    rate_window: float = 60.0


class Uplink:
    """The mirror's one way upstream: its session, its bounds, its clock (tests move it
    by hand), and the health of every host it asks."""

    def __init__(
        self,
        session: aiohttp.ClientSession | Sessions,
        limits: Limits,
        stats: Stats,
        health: Health,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # a session given made (tests) or made when first wanted (resolver.Sessions)
        self.sessions = session if isinstance(session, Sessions) else Sessions(session)
        self.limits = limits
        self.stats = stats
        self.health = health
        self.clock = clock

    # -- one bounded request --------------------------------------------------------------

    async def open(
        self, url: str, headers: Mapping[str, str], what: str, method: str = "GET"
    ) -> aiohttp.ClientResponse:
        """The upstream's answer, headers read; the caller reads the body and releases it.
        `what` names the request in errors (a file's name, an index's URL). A failure is
        charged to the host that failed (a redirect's target, perhaps), as health.py says."""
        limits = self.limits
        # `connect` covers name resolution too; sock_connect would not, and a resolver
        # that never answers then holds every request for the resolver's own timeouts.
        # It would cover a wait for a free pooled connection too, which says nothing of
        # the upstream: the session's pool has no limit (resolver.session), the waits
        # for a turn are the fetcher's own (`downloads`, `pages`), before this
        timeout = aiohttp.ClientTimeout(
            connect=limits.connect_timeout, sock_read=limits.read_timeout
        )
        bound = limits.connect_timeout + limits.headers_timeout
        trip = hops.Trip(url)
        try:
            async with asyncio.timeout(bound):
                session = await self.sessions.get()
                return await self._follow(session, method, trip, headers, timeout, what)
        except TimeoutError as exc:
            if isinstance(exc, aiohttp.ConnectionTimeoutError):  # the name, or the handshake
                why, connected = f"no connection within {limits.connect_timeout:g} s", False
            elif isinstance(exc, aiohttp.ServerTimeoutError):  # sock_read: silent once connected
                why, connected = f"no answer within {limits.read_timeout:g} s", True
            else:  # the whole bound: connected by then, or not
                why, connected = f"no answer within {bound:g} s", trip.hop.peer is not None
            if connected:
                self._silent(trip, why)
            else:
                self._unreachable(trip, why)
            raise UpstreamTimeout(trip.line(what, why)) from None
        except aiohttp.ClientConnectorDNSError as exc:
            why = f"its name does not resolve ({faults.why(exc.os_error)})"
            self._unreachable(trip, why)
            raise UpstreamUnreachable(trip.line(what, why)) from None
        except (aiohttp.ClientError, OSError) as exc:
            fault = faults.of(exc)
            if fault is faults.Fault.UNREACHABLE:
                cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
                why = faults.why(cause)
                self._unreachable(trip, why)
                raise UpstreamUnreachable(trip.line(what, why)) from None
            # it answered, badly, or hung up: this request fails, the upstream is not down
            if fault is faults.Fault.ANSWERED:
                self._answered(trip)
            else:
                self._abandoned(trip)
            raise UpstreamError(faults.words(exc, what)) from None
        except BaseException:  # a redirect not followed, a host known down, a cancel
            self._abandoned(trip)
            raise

    async def _follow(
        self,
        session: aiohttp.ClientSession,
        method: str,
        trip: hops.Trip,
        headers: Mapping[str, str],
        timeout: aiohttp.ClientTimeout,
        what: str,
    ) -> aiohttp.ClientResponse:
        """The answer at the end of the upstream's redirects, those the mirror follows
        (redirects.py): the same headers each time, the same method (only GET and HEAD
        are asked, which a 303 keeps too). Whether the upstream asked is near is where
        its first request connected; if it is not, the session's connector keeps each
        later one off near addresses (hops.py, resolver.session): the addresses checked
        are those connected to, where a name checked by a lookup of its own may answer
        the connect's with another. `trip` is where it is, for the caller's accounting."""
        here = None  # whether the upstream asked is on this machine or its link
        for _ in range(redirects.MOST + 1):
            response = await self._hop(session, method, trip, headers, timeout, what)
            location = response.headers.get("Location")
            if response.status not in redirects.STATUSES or location is None:
                return response
            response.release()
            at = redirects.target(trip.url, location, what)
            if here is None:
                here = trip.hop.peer is not None and redirects.near(trip.hop.peer)
            trip.to(at, hops.Hop(refuse=None if here else redirects.near))
        raise redirects.too_many(what)

    async def _hop(
        self,
        session: aiohttp.ClientSession,
        method: str,
        trip: hops.Trip,
        headers: Mapping[str, str],
        timeout: aiohttp.ClientTimeout,
        what: str,
    ) -> aiohttp.ClientResponse:
        """One request of a trip, to its host unless that host is known down, or silent
        for this very request a moment ago (then the answer at once, as for the upstream
        asked). Its answer, whatever it is, says the host is up."""
        verdict = self.health.ask(trip.origin, self.clock(), trip.url)
        if verdict is Verdict.WAIT:
            self.stats.upstream_skipped += 1
            raise self.down(trip.url, trip.via, what)
        if verdict is Verdict.QUIET:
            self.stats.upstream_skipped += 1
            raise self.quiet(trip, what)
        trip.verdict, trip.sent = verdict, self.clock()
        told = hops.HOP.set(trip.hop)
        try:
            response = await session.request(
                method, trip.url, headers=headers, timeout=timeout, allow_redirects=False
            )
        except aiohttp.ClientConnectorError:
            if trip.hop.refused:
                raise redirects.refused(what, trip.url) from None
            raise
        finally:
            hops.HOP.reset(told)
        self._answered(trip)
        return response

    def down(self, url: str, via: str | None = None, what: str = "") -> UpstreamDown:
        """The answer to a request for `url` while its upstream is known down: at once,
        saying when the mirror asks it again (a request that comes then is the probe).
        `via`: the host whose redirect for `what` led to `url`."""
        where = origin(url)
        upstream = self.health.get(where)
        wait = self.health.retry_in(where, self.clock())
        when = f"next try in {math.ceil(wait)} s"  # under a second is 1 s, never 0
        if upstream.probing or wait <= 0:  # this request, or one before it, is the probe
            when = "trying it again now"
        if via is None:
            return UpstreamDown(f"{self.why_down(url)}; {when}")
        why = upstream.last_error or "unreachable"
        host = urlsplit(url).netloc
        return UpstreamDown(
            f"upstream {via} redirected {what} to {host}, which is down ({why}); {when}"
        )

    def quiet(self, trip: hops.Trip, what: str) -> UpstreamStillQuiet:
        """The answer to a request its host was silent for a moment ago (a client's
        retry): what it was told then, and when the mirror asks again."""
        quiet = self.health.quiet(trip.origin, trip.url)
        why = quiet.why if quiet is not None else "no answer"
        wait = quiet.retry_at - self.clock() if quiet is not None else 0.0
        return UpstreamStillQuiet(f"{trip.line(what, why)}; next try in {math.ceil(wait)} s")

    def why_down(self, url: str) -> str:
        """`upstream HOST is down (WHY)`, for `url` (or an origin) known down."""
        why = self.health.get(origin(url)).last_error or "unreachable"
        return f"upstream {urlsplit(url).netloc} is down ({why})"

    def _answered(self, trip: hops.Trip) -> None:
        """Its host answered: up, and said so if it was down (the line that ends "is
        down")."""
        where = trip.origin
        since = self.health.get(where).down_since if self.health.is_down(where) else None
        self.health.answered(where, self.clock(), trip.url)
        trip.verdict = None
        if since is not None:
            log.info("upstream %s is back up (down for %.0f s)", where, self.clock() - since)

    def _unreachable(self, trip: hops.Trip, why: str) -> None:
        """Its host could not be reached: down."""
        if trip.verdict is None:  # no request under way (the session, still being made)
            return
        where = trip.origin
        was_down = self.health.is_down(where)
        self.health.failed(where, self.clock(), why, trip.verdict)
        trip.verdict = None
        if not was_down:
            log.warning("upstream %s is down: %s", where, why)

    def _silent(self, trip: hops.Trip, why: str) -> None:
        """Its host took the request and did not answer in time: down only if it is
        silent for others too (health.py); else this request alone fails."""
        if trip.verdict is None:
            return
        where = trip.origin
        was_down = self.health.is_down(where)
        now = self.clock()
        down = self.health.silent(where, trip.url, trip.sent, now, why, trip.verdict)
        trip.verdict = None
        if down and not was_down:
            many = self.health.silent_paths
            log.warning("upstream %s is down: %s, to %d different requests", where, why, many)

    def _abandoned(self, trip: hops.Trip) -> None:
        """The hop under way ended with no word on its host (a hang-up, a cancel)."""
        if trip.verdict is not None:
            self.health.abandoned(trip.origin, trip.verdict)
            trip.verdict = None

    def count(self, exc: MirrorError) -> None:
        """One home for counting an upstream's failure, whatever request met it."""
        if isinstance(exc, BadUpstreamData):
            self.stats.verify_failures += 1
        elif isinstance(exc, UpstreamError) and not isinstance(
            exc, UpstreamDown | UpstreamStillQuiet
        ):  # refused at once, not asked: counted as skipped where refused (_hop)
            self.stats.upstream_errors += 1

    def floor(self) -> faults.Floor:
        return faults.Floor(self.limits.min_rate, self.limits.rate_window, self.clock())

    def keep_up(self, floor: faults.Floor, size: int, what: str) -> None:
        """Another `size` bytes of `what` came: cut it if it comes slower than the floor."""
        if not floor.keeps_up(size, self.clock()):
            rate, window = units.size(int(floor.rate)), floor.window
            raise UpstreamTimeout(f"upstream sent {what} at under {rate}/s for {window:g} s")
