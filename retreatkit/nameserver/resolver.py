"""The resolver: a query's bytes in, its answer's bytes out, under the policy of the moment.

The parts it joins are each tested alone: policy.route decides who answers, fill
writes the cache, flight merges identical questions, upstream picks and judges the
servers, loops finds upstreams that send our questions back, stats counts. The clock is
injected and is the only time read here.

Every policy change (lists reloaded, blocking paused or resumed, a record set, the
cache flushed) bumps the generation; an answer cached under an older generation is
checked again before it is served, so a change applies to the very next query.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from retreatkit.lognews import News
from retreatkit.nameserver import answers, fill, trace, wire
from retreatkit.nameserver.cache import Cache, Entry
from retreatkit.nameserver.errors import (
    BadReply,
    CnameLoop,
    TooManyFromOne,
    TooManyWaiting,
    UpstreamFailed,
)
from retreatkit.nameserver.flight import Flights
from retreatkit.nameserver.gate import LOG_AGAIN, MAX_LOGGED
from retreatkit.nameserver.loops import RCODE_NXDOMAIN, Loops, Probe, is_probe
from retreatkit.nameserver.policy import (
    BLOCKED,
    FORWARD,
    LOCAL,
    NODATA,
    NXDOMAIN,
    PTR,
    Policy,
    Route,
)
from retreatkit.nameserver.stats import BLOCKED as BLOCKED_ANSWER
from retreatkit.nameserver.stats import (
    FORMERR,
    FORWARDED,
    REFUSED,
    SERVFAIL,
    STALE,
    UNCOUNTED,
    Stats,
)
from retreatkit.nameserver.stats import LOCAL as LOCAL_ANSWER
from retreatkit.nameserver.upstream import RETRY_AFTER, Answer, UpstreamSet

log = logging.getLogger("retreatkit.nameserver")

STALE_WAIT = 1.8  # RFC 8767: how long a client waits for a refresh before getting stale data
EXPIRE_EVERY = 60.0  # seconds between sweeps of answers past their stale window
TYPE_ANY = 255
META_TYPES = frozenset((249, 250, 251, 252, 253, 254))  # TKEY TSIG IXFR AXFR MAILB MAILA
CLASS_IN = b"\x00\x01"
# questions one address may have in progress at once: a quarter of the flights, an
# eighth of the UDP server's slots. Without it, one attendee asking random names faster
# than a slow uplink answers held them all, and the LAN got SERVFAIL for every name.
# Off with the rate limit (rate_limit = 0): where every client arrives from one address
PER_CLIENT = 256


@dataclass(slots=True)
class Fetched:
    """An upstream's answer, checked once for every client that waited on it."""

    answer: Answer
    cloaked: str | None  # the blocking rule a CNAME target hit (CNAME cloaking)
    generation: int  # the policy generation the check was made under
    ms: float
    entry: Entry | None = None  # the first asker's answer, cached


class Resolver:
    def __init__(
        self,
        policy: Policy,
        upstreams: Mapping[str, UpstreamSet],
        cache: Cache | None = None,
        stats: Stats | None = None,
        block_mode: str = "null",
        clock: Callable[[], float] = time.monotonic,
        stale_wait: float = STALE_WAIT,
        loops: Loops | None = None,
        per_client: int = PER_CLIENT,
    ) -> None:
        self.policy = policy
        self.upstreams = dict(upstreams)  # forward zone ("" = the default) -> its servers
        self.cache = cache if cache is not None else Cache()
        self.stats = stats if stats is not None else Stats()
        self.block_mode = block_mode
        self.clock = clock
        self.stale_wait = stale_wait
        self.generation = 0
        self.paused_until = 0.0  # blocking is paused until then (clock time); 0: it is on
        self.next_tick = 0.0
        self._next_expire = 0.0
        self.flights: Flights[Fetched] = Flights()
        self.busy = News(LOG_AGAIN, MAX_LOGGED)  # the flights' cap, said in the log once in a while
        self.per_client = per_client  # 0: no bound per address
        self.asking: dict[str, int] = {}  # questions in progress by address
        if loops is None:
            # the default upstreams only: a forward rule's server answers its own zone and
            # may well send the rest of the world to us (a router's dnsmasq for `lan`,
            # whose upstream is this nameserver): a probe outside the zone would come
            # back and take a zone that loops nowhere off the air
            servers = [(zone, u) for zone, group in self.upstreams.items() for u in group.servers
                       if not zone]  # fmt: skip
            recheck = min((group.recheck for group in self.upstreams.values()), default=RETRY_AFTER)
            loops = Loops(servers, recheck)
        self.loops = loops

    # -- policy changes ------------------------------------------------------------------

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        self.generation += 1

    def pause(self, seconds: float) -> None:
        """Pause blocking for `seconds` (0 resumes). The end falls on a whole second of
        the clock, when the once-a-second tick runs, so it too applies to the next query."""
        if seconds <= 0:
            self.paused_until = 0.0
            self.set_policy(self.policy.with_pause(False))
            return
        self.paused_until = math.ceil(self.clock() + seconds)
        self.set_policy(self.policy.with_pause(True))

    def flush(self, name: str) -> int:
        dropped = self.cache.flush(name)
        self.generation += 1  # the servers' exact-bytes answers go with it
        return dropped

    def tick(self, now: float) -> None:
        """Once a second: fold counts, end a pause that is over, drop long-dead answers."""
        self.next_tick = math.floor(now) + 1
        self.stats.tick()
        if self.paused_until and now >= self.paused_until:
            self.paused_until = 0.0
            self.set_policy(self.policy.with_pause(False))
        if now >= self._next_expire:
            self._next_expire = now + EXPIRE_EVERY
            self.cache.expire(now)

    # -- cache hits ----------------------------------------------------------------------

    def hit(self, query: wire.Query, data: bytes, now: float) -> tuple[bytes, Entry] | None:
        """A fresh cached answer under the current policy, or None: resolve() decides."""
        entry = self.cache.get(query.key)
        if entry is None or entry.generation != self.generation or now >= entry.expires:
            return None
        age = None if entry.own else int(now - entry.stored_at)
        return entry.template.render(query, data, age), entry

    # -- everything else -----------------------------------------------------------------

    async def resolve(
        self,
        data: bytes,
        client: str,
        max_size: int | None,
        query: wire.Query | None = None,
        counted: bool = False,
    ) -> bytes | None:
        """The answer to any query bytes, or None to stay silent (not a query at all).
        `query` is wire.parse(data) when the caller has it already; `counted`: this very
        question was answered and counted before (its answer never sent), so it is not
        counted again."""
        tally = UNCOUNTED if counted else self.stats
        now = self.clock()
        if now >= self.next_tick:
            self.tick(now)
        if query is None:
            query = wire.parse(data)
        if query is None:
            parsed = self._unusual(data, client, now, tally)
            if parsed is None or isinstance(parsed, bytes):
                return parsed
            query, data = parsed
        asking = self.asking
        asking[client] = asking.get(client, 0) + 1
        try:
            out = await self._plain(query, data, client, now, tally)
        finally:
            left = asking[client] - 1
            if left:
                asking[client] = left
            else:
                del asking[client]
        if max_size is not None and len(out) > max_size:
            return wire.truncated(out, query.edns, bool(query.key[-1] & wire.KEY_DO))
        return out

    def _unusual(
        self, data: bytes, client: str, now: float, tally: Stats
    ) -> bytes | tuple[wire.Query, bytes] | None:
        """What wire.parse left: errors, or the query rewritten plainly for _plain."""
        try:
            message = dns.message.from_wire(data)
        except dns.exception.DNSException:
            if len(data) < 12 or data[2] & 0x80:
                return None
            tally.answered(now, client, "", FORMERR, 1)
            # header only, our ID echoed, QR and FORMERR set: the client learns it was us
            return struct.pack(">HHHHHH", struct.unpack_from(">H", data)[0], 0x8001, 0, 0, 0, 0)
        if message.flags & dns.flags.QR:
            return None  # a response sent to us: never answer those (reflection loops)
        name = message.question[0].name.to_text(True).lower() if message.question else ""
        if message.edns > 0:
            response = answers.badvers(message)
        elif message.opcode() != dns.opcode.QUERY:
            response = answers.error(message, dns.rcode.NOTIMP)
        elif len(message.question) != 1:
            response = answers.error(message, dns.rcode.FORMERR)
        else:
            # a compression pointer in the question, extra records: ask it plainly
            q = message.question[0]
            plain = dns.message.make_query(
                q.name, q.rdtype, q.rdclass, use_edns=0 if message.edns == 0 else False,
                want_dnssec=bool(message.ednsflags & dns.flags.DO), payload=message.payload,
            )  # fmt: skip
            plain.id = message.id
            plain.flags = message.flags
            query = wire.parse(plain.to_wire())
            if query is not None:
                return query, plain.to_wire()
            response = answers.error(message, dns.rcode.FORMERR)
        tally.answered(now, client, name, FORMERR, response.rcode())
        return fill.encode(response)

    async def _plain(
        self, query: wire.Query, data: bytes, client: str, now: float, tally: Stats
    ) -> bytes:
        key = query.key
        name, qtype = wire.key_name(key), wire.key_type(key)
        if key[-3:-1] != CLASS_IN:
            tally.answered(now, client, name, REFUSED, 5, key=key)
            return _bare(query, data, 5)
        if qtype in META_TYPES:
            # RFC 6895 3.1: meta-types are no questions to forward (zone transfers, TSIG);
            # an upstream refuses them, and that is no failure of its
            tally.answered(now, client, name, REFUSED, 5, key=key)
            return _bare(query, data, 5)
        if is_probe(key):
            return self._came_back(query, data, client, now, name, tally)
        if qtype == TYPE_ANY:
            response = answers.minimal_any(dns.message.from_wire(data))
            own = fill.own(self.cache, query, response, LOCAL_ANSWER, now, self.generation)
            tally.answered(now, client, name, LOCAL_ANSWER, 0, key=key)
            return own.template.render(query, data, None)
        route = self.policy.route(name, qtype)
        if route.kind != FORWARD:
            return await self._own(query, data, client, now, route, name, qtype, tally)
        entry: Entry | None = self.cache.get(key)
        if entry is not None and entry.own:
            entry = None  # our answer under an older policy: the name is forwarded now
        if entry is None or now >= entry.expires:
            # another kind of client (with or without EDNS, DO...) may have a newer answer
            entry = fill.sibling(self.cache, query, data, entry) or entry
        if entry is not None and entry.generation != self.generation:
            # the lists changed since it was cached: its CNAME chain may be listed now
            listed = self._cloaked(name, entry.targets)
            if listed is not None:
                tally.cname_blocked += 1
                return await self._own(
                    query, data, client, now, Route(BLOCKED, listed), name, qtype, tally
                )
            entry.generation = self.generation
        if entry is not None and now < entry.expires:
            tally.hit(now, client, entry)
            return entry.template.render(query, data, int(now - entry.stored_at))
        return await self._forward(query, data, client, now, route, name, entry, tally)

    def _came_back(
        self, query: wire.Query, data: bytes, client: str, now: float, name: str, tally: Stats
    ) -> bytes:
        """A question under the loop probes' name (loops.py): never forwarded, where it
        would go round again, but answered NXDOMAIN here, as RFC 6761 6.2 has a resolver
        answer `.test` names; and if it is a probe of ours, the upstream it went to loops.
        Never cached: each one that reaches us is seen."""
        probe = self.loops.came_back(query.key)
        if probe is not None:
            if trace.on():
                trace.log.debug("loop: our probe %s came back to us from %s: upstream %s"
                                " forwards our questions to us", trace.shown(name), client,
                                probe.upstream.address)  # fmt: skip
            group = self.upstreams[probe.zone]
            if group.note is not None:
                group.note(probe.upstream, probe.zone, now)
        tally.answered(now, client, name, LOCAL_ANSWER, RCODE_NXDOMAIN, key=query.key)
        return _bare(query, data, RCODE_NXDOMAIN)

    async def check_loop(self, probe: Probe) -> None:
        """Ask a loop probe's upstream (loops.Loops.due made it) and take its reply."""
        group = self.upstreams[probe.zone]
        rcode = None
        try:
            rcode = await group.probe(probe.upstream, probe.key)
        finally:  # whatever happened, the next probe is not held up by this one
            now = self.clock()
            if self.loops.answered(probe, rcode, now - probe.sent_at) and group.note:
                group.note(probe.upstream, probe.zone, now)

    async def _own(
        self,
        query: wire.Query,
        data: bytes,
        client: str,
        now: float,
        route: Route,
        name: str,
        qtype: int,
        tally: Stats,
    ) -> bytes:
        message = dns.message.from_wire(data)
        kind = LOCAL_ANSWER
        if route.kind == LOCAL:
            assert route.found is not None
            try:
                chain, outside = self.policy.local.chase(name, _type_text(qtype))
            except CnameLoop:  # refused when records are set; never followed if one slips in
                tally.answered(now, client, name, SERVFAIL, 2, key=query.key)
                return _bare(query, data, 2)
            response = answers.local(message, chain, route.zone)
            if outside is not None:
                # a local CNAME to a name outside: ask for it as any client would
                listed = await self._follow(response, query, name, outside, qtype)
                if listed is not None:
                    tally.cname_blocked += 1
                    return await self._own(
                        query, data, client, now, Route(BLOCKED, listed), name, qtype, tally
                    )
                tally.answered(now, client, name, LOCAL_ANSWER, response.rcode(), key=query.key)
                if trace.on():
                    trace.log.debug("%s: %s", self._asked(name, qtype, client),
                                    _own_text(route, response.rcode()))  # fmt: skip
                return fill.encode(response)
        elif route.kind == PTR:
            response = answers.ptr(message, route.zone)
        elif route.kind == NODATA:
            response = answers.nodata(message, route.zone)
        elif route.kind == NXDOMAIN:
            response = answers.nxdomain(message, route.zone)
        else:
            response = answers.blocked(message, self.block_mode, route.zone)
            kind = BLOCKED_ANSWER
        entry = fill.own(self.cache, query, response, kind, now, self.generation)
        tally.answered(now, client, name, kind, entry.rcode, key=query.key)
        if trace.on():
            trace.log.debug(
                "%s: %s", self._asked(name, qtype, client), _own_text(route, entry.rcode)
            )
        return entry.template.render(query, data, None)

    async def _follow(
        self,
        response: dns.message.Message,
        query: wire.Query,
        name: str,
        target: str,
        qtype: int,
    ) -> str | None:
        """Add the answer for `target` to `response` as a client asking for it would get it
        (its forward rule, the cache, serve-stale; SERVFAIL when nothing answers); the rule
        blocking `name` when the chain reaches a listed name (CNAME cloaking)."""
        route = self.policy.route(target, qtype)
        listed = self._cloaked(name, (target,))
        if listed is not None or route.kind != FORWARD:
            return listed
        labels = b"".join(bytes((len(p),)) + p.encode("ascii") for p in target.split("."))
        key = labels + b"\0" + query.key[-5:]
        asked = wire.upstream_query(0, key)  # as if a client asked for the target
        target_query = wire.parse(asked)
        if target_query is None:
            return None
        now = self.clock()
        entry = self.cache.get(target_query.key)
        if entry is not None and entry.own:
            entry = None  # our answer under an older policy: the name is forwarded now
        if entry is not None and now < entry.expires:
            raw, targets = entry.template.render(target_query, asked, entry.age(now)), entry.targets
        else:
            stale_ok = entry is not None and now < entry.stale_until
            flight = self.flights.join(
                wire.upstream_key(target_query.key),
                lambda: self._fetch(target_query, asked, route, target),
            )
            try:
                wait = self.stale_wait if stale_ok else None
                fetched = await asyncio.wait_for(asyncio.shield(flight), wait)
            except (UpstreamFailed, BadReply, TimeoutError):
                if entry is not None and stale_ok:
                    raw = entry.template.render(target_query, asked, wire.STALE)
                    targets = entry.targets
                else:
                    # a DO client's last resort, as for the target asked itself (_forward)
                    unsigned = fill.unsigned_stale(self.cache, target_query, asked, now)
                    if unsigned is None:
                        response.answer.clear()
                        response.set_rcode(dns.rcode.SERVFAIL)
                        return None
                    raw, targets = unsigned[0], unsigned[1].targets
            else:
                raw, targets = fetched.answer.raw, fill.targets(fetched.answer)
        listed = self._cloaked(name, targets)
        if listed is not None:
            return listed
        upstream = dns.message.from_wire(raw, ignore_trailing=True)
        # what the cache keeps of it: a fresh reply has not been through rebinding checks
        # (the entry _fetch stored was, and counted what it dropped)
        found = list(upstream.answer) if route.rebind_ok else answers.public_only(upstream.answer)
        response.answer += found
        response.set_rcode(dns.rcode.Rcode.make(upstream.rcode() & 0xF))
        return None

    async def _forward(
        self,
        query: wire.Query,
        data: bytes,
        client: str,
        now: float,
        route: Route,
        name: str,
        entry: Entry | None,
        tally: Stats,
    ) -> bytes:
        key = query.key
        stale_ok = entry is not None and now < entry.stale_until
        ukey = wire.upstream_key(key)
        try:
            if self.per_client and self.asking.get(client, 0) > self.per_client:
                raise TooManyFromOne(
                    f"{client} has {self.per_client} questions waiting on the upstreams, the most"
                    " one address may"
                )
            if stale_ok:
                # the refresh goes on after a stale answer, and caches what it gets
                flight = self.flights.join(ukey, lambda: self._fetch(query, data, route, name))
                fetched = await asyncio.wait_for(asyncio.shield(flight), self.stale_wait)
            else:
                fetched = await self.flights.run(
                    ukey, lambda: self._fetch(query, data, route, name)
                )
        except (UpstreamFailed, BadReply, TimeoutError) as exc:
            later = self.clock()
            if isinstance(exc, TooManyFromOne):
                if self.busy.news(client, later):
                    log.warning(
                        "%s (a slow uplink, or a flood of names): its new questions get a"
                        " stale answer or SERVFAIL until some are answered", exc,
                    )  # fmt: skip
            elif isinstance(exc, TooManyWaiting) and self.busy.news("", later):
                log.warning(
                    "%s (a slow uplink, or a flood of names): new questions get a stale"
                    " answer or SERVFAIL until some are answered", exc,
                )  # fmt: skip
            if stale_ok and entry is not None:
                tally.answered(later, client, name, STALE, entry.rcode, key=key,
                                    ms=(later - now) * 1000)  # fmt: skip
                if trace.on():
                    trace.log.debug("%s: stale answer served, cached %.0f s ago (%s)",
                                    self._asked(name, wire.key_type(key), client),
                                    later - entry.stored_at, self._why(exc))  # fmt: skip
                return entry.template.render(query, data, wire.STALE)
            unsigned = await self._unsigned_stale(query, data, client, (now, later), name, tally)
            if unsigned is not None:
                if trace.on():
                    trace.log.debug("%s: another kind of client's stale answer served, without"
                                    " its DNSSEC records (%s)",
                                    self._asked(name, wire.key_type(key), client),
                                    self._why(exc))  # fmt: skip
                return unsigned
            tally.answered(later, client, name, SERVFAIL, 2, key=key,
                                ms=(later - now) * 1000)  # fmt: skip
            if trace.on():
                trace.log.debug("%s: SERVFAIL, nothing stale to serve (%s)",
                                self._asked(name, wire.key_type(key), client),
                                self._why(exc))  # fmt: skip
            return _bare(query, data, 2)
        later = self.clock()
        if fetched.cloaked is not None:
            tally.cname_blocked += 1
            return await self._own(query, data, client, later, Route(BLOCKED, fetched.cloaked),
                                   name, wire.key_type(key), tally)  # fmt: skip
        entry = fetched.entry
        if entry is None or entry.key != key:
            # asked with other EDNS or AD bits than the first asker: its own answer
            try:
                entry = self._store(query, data, fetched, route)
            except BadReply:
                tally.answered(later, client, name, SERVFAIL, 2, key=key)
                return _bare(query, data, 2)
        tally.answered(later, client, name, FORWARDED, entry.rcode, key=key, ms=fetched.ms)
        if trace.on():
            trace.log.debug("%s: forwarded to %s, %s in %.0f ms",
                            self._asked(name, wire.key_type(key), client),
                            fetched.answer.upstream.address, trace.rcode_text(entry.rcode),
                            fetched.ms)  # fmt: skip
        return entry.template.render(query, data, int(later - entry.stored_at))

    async def _unsigned_stale(
        self,
        query: wire.Query,
        data: bytes,
        client: str,
        when: tuple[float, float],
        name: str,
        tally: Stats,
    ) -> bytes | None:
        """A DO client's last resort, the upstream failed (fill.unsigned_stale): another
        client's stale answer, or the block for it if the lists changed since and its
        CNAME chain is listed now."""
        asked, now = when
        found = fill.unsigned_stale(self.cache, query, data, now)
        if found is None:
            return None
        out, held = found
        if held.generation != self.generation:
            listed = self._cloaked(name, held.targets)
            if listed is not None:
                tally.cname_blocked += 1
                route = Route(BLOCKED, listed)
                return await self._own(
                    query, data, client, now, route, name, wire.key_type(query.key), tally
                )
        tally.answered(now, client, name, STALE, out[3] & 0xF, key=query.key,
                            ms=(now - asked) * 1000)  # fmt: skip
        return out

    async def _fetch(self, query: wire.Query, data: bytes, route: Route, name: str) -> Fetched:
        """Ask upstream; check the answer once for everyone waiting on it, and cache it as
        built for the first asker (even when that asker has gone with a stale answer)."""
        started = self.clock()
        answer = await self.upstreams[route.zone].ask(wire.upstream_key(query.key))
        fetched = Fetched(
            answer,
            self._cloaked(name, fill.targets(answer)),
            self.generation,
            (self.clock() - started) * 1000,
        )
        if fetched.cloaked is None:
            fetched.entry = self._store(query, data, fetched, route)
        return fetched

    def _store(self, query: wire.Query, data: bytes, fetched: Fetched, route: Route) -> Entry:
        entry, dropped = fill.forwarded(
            self.cache, query, data, fetched.answer, route.rebind_ok, self.clock(),
            fetched.generation,
        )  # fmt: skip
        self.stats.rebinding_dropped += dropped
        return entry

    def _asked(self, name: str, qtype: int, client: str) -> str:
        """How a DEBUG line names a query: its name (escaped), its type and who asked."""
        return f"{trace.shown(name)} {_type_text(qtype)} from {client}"

    def _why(self, exc: Exception) -> str:
        if type(exc) is TimeoutError:  # the stale answer's wait, not an upstream's
            return f"no answer within {self.stale_wait:g} s; the refresh goes on"
        return str(exc) or type(exc).__name__

    def _cloaked(self, name: str, targets: tuple[str, ...]) -> str | None:
        """The rule blocking a CNAME target of `name` (blocky, Pi-hole and AdGuard Home
        block the name too); an allowed name is never blocked this way. A public name
        whose CNAME leads to a name only the LAN answers (policy.lan_only) is blocked as
        `name` itself: DNS rebinding with no address to drop, which a stub that follows
        CNAMEs itself (systemd-resolved) completed by asking for the LAN's name next."""
        if not targets or self.policy.allowed(name):
            return None
        for target in targets:
            listed = self.policy.blocked(target)
            if listed is not None:
                return listed
        policy = self.policy
        if (
            not policy.lan_only(name)
            and policy.forward_zone(name) is None  # the venue's names may point anywhere
            and any(map(policy.lan_only, targets))
        ):
            return name
        return None


def _type_text(qtype: int) -> str:
    return dns.rdatatype.to_text(dns.rdatatype.RdataType.make(qtype))


def _own_text(route: Route, rcode: int) -> str:
    """What a DEBUG line says of an answer made here, not upstream."""
    if route.kind == BLOCKED:
        return f"blocked by the rule {trace.shown(route.zone)}, {trace.rcode_text(rcode)}"
    if route.kind == LOCAL:
        zone = trace.shown(route.zone)
        return f"answered from the local records of {zone}, {trace.rcode_text(rcode)}"
    if route.kind == PTR:
        return f"answered here: a local address, named {trace.shown(route.zone)}"
    return f"answered {trace.rcode_text(rcode)} here, under {trace.shown(route.zone)}"


def _bare(query: wire.Query, data: bytes, rcode: int) -> bytes:
    """Header, question and our OPT: for SERVFAIL and REFUSED, made without dnspython."""
    flags = (query.flags & (wire.FLAG_RD | wire.FLAG_CD)) | wire.FLAG_QR | wire.FLAG_RA | rcode
    bits = query.key[-1]
    head = wire.HEADER.pack(query.id, flags, 1, 0, 0, 1 if query.edns else 0)
    return (
        head
        + data[12 : query.question_end]
        + (wire.opt(bool(bits & wire.KEY_DO)) if query.edns else b"")
    )
