"""Cache writes: what an upstream's reply or our own answer becomes in the cache (no I/O).

An upstream reply takes the byte path (reply.template) unless it must be rewritten:
private addresses of a public name to drop (DNS rebinding), or a layout reply.digest
leaves to dnspython. Either way the entry keeps each RRset's own TTL and caches for
the smallest in the answer, or for a negative answer min(SOA TTL, SOA MINIMUM)
(RFC 2181 5.2, RFC 2308 5).
"""

from __future__ import annotations

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from retreatkit.nameserver import answers, wire
from retreatkit.nameserver import reply as replies
from retreatkit.nameserver.cache import Cache, Entry
from retreatkit.nameserver.errors import BadReply
from retreatkit.nameserver.upstream import Answer
from retreatkit.nameserver.wire import MAX_TTL, Query

MAX_MESSAGE = 65535


def encode(response: dns.message.Message) -> bytes:
    """Wire form at full size: cutting to what a client takes is the caller's job (TC).
    An answer over 65535 bytes fits no DNS message, over UDP or TCP: it is SERVFAIL
    (`response` is emptied for it), as when the upstream gives nothing to answer with."""
    wire_form = fitted(response)
    if wire_form is not None:
        return wire_form
    response.answer.clear()
    response.authority.clear()
    response.additional.clear()
    response.flags &= ~dns.flags.AA
    response.set_rcode(dns.rcode.SERVFAIL)
    return response.to_wire(max_size=MAX_MESSAGE)


def fitted(response: dns.message.Message) -> bytes | None:
    """Wire form at full size, or None when it is over 65535 bytes (a 65535-byte upstream
    reply without OPT, given our OPT; a local CNAME to a name with a reply that big)."""
    try:
        return response.to_wire(max_size=MAX_MESSAGE)
    except dns.exception.TooBig:
        return None


def own(
    cache: Cache,
    query: Query,
    response: dns.message.Message,
    kind: int,
    now: float,
    generation: int,
) -> Entry:
    """Our own answer (a local name, a block), good until the policy changes."""
    return cache.put_own(query.key, wire.template_of(encode(response)), kind, now, generation)


def targets(answer: Answer) -> tuple[str, ...]:
    """The CNAME targets in an upstream's answer section (CNAME cloaking checks)."""
    if answer.reply is not None:
        return answer.reply.targets
    message = _parse(answer.raw)
    return tuple(
        rdata.target.to_text(omit_final_dot=True).lower()
        for rrset in message.answer
        if rrset.rdtype == dns.rdatatype.CNAME
        for rdata in rrset
    )


def forwarded(
    cache: Cache,
    query: Query,
    data: bytes,
    answer: Answer,
    rebind_ok: bool,
    now: float,
    generation: int,
) -> tuple[Entry, bool]:
    """The client's answer from an upstream's, cached; and whether rebinding protection
    dropped records from it."""
    reply = answer.reply
    if reply is not None and (rebind_ok or not reply.private):
        template = replies.template(reply, query, data)
        return cache.put(query.key, template, reply.ttl, now, generation, reply.targets), False
    response, dropped = answers.from_upstream(
        dns.message.from_wire(data), _parse(answer.raw), rebind_ok
    )
    wire_form = fitted(response)
    if wire_form is None:  # the resolver's SERVFAIL (or stale answer), nothing cached
        raise BadReply(f"reply over {MAX_MESSAGE} bytes with this client's OPT")
    template = wire.template_of(wire_form)
    entry = cache.put(query.key, template, cache_ttl(response), now, generation, targets(answer))
    return entry, dropped


def sibling(cache: Cache, query: Query, data: bytes, than: Entry | None = None) -> Entry | None:
    """The client's answer made from one cached for another client of the same question,
    cached under its own key; None if there is none it may have, or none fresher than
    `than` (the client's own answer, expired).

    Clients differ in EDNS, DO, CD and AD (a glibc stub asks without EDNS, dig and macOS
    with it): each is its own cache key, but the upstream's data is the same. Without
    this, a name cached for one kind of client was asked upstream again for the other,
    and with the uplink down it was SERVFAIL for them, fresh or stale in the cache.
    Taken: the same DO and CD first; an answer made with DO, its DNSSEC records left out
    (RFC 4035 3.2.1); one made without CD for a client that set CD. Never one made with
    CD for a client without it (the upstream did not validate it), nor one without DO
    for a client with it (no signatures to validate), nor, for a client asking with AD,
    one made for a client that did not (its AD bit, the upstream's word, was dropped).
    """
    bits = query.key[-1]
    base = query.key[:-1]
    wanted = bits & (wire.KEY_DO | wire.KEY_CD)
    best = than
    for other in (wanted, wanted & ~wire.KEY_CD, wanted | wire.KEY_DO, wire.KEY_DO):
        if other & wire.KEY_CD and not bits & wire.KEY_CD:
            continue
        for extra in (0, wire.KEY_EDNS, wire.KEY_AD, wire.KEY_EDNS | wire.KEY_AD):
            told = (other | extra) & (wire.KEY_DO | wire.KEY_AD)
            if bits & (wire.KEY_DO | wire.KEY_AD) and not told:
                continue  # the upstream's AD bit was not kept for that client (RFC 6840)
            found = cache.get(base + bytes((other | extra,)))
            if (
                found is not None
                and not found.own
                and (best is None or found.expires > best.expires)
            ):
                best = found
        if best is not than:
            break
    if best is None or best is than:
        return None
    response = _rebuilt(best, query, data)
    if response is None:
        return None
    if not bits & wire.KEY_DO:
        answers.without_dnssec(response)
    ttl = round(best.expires - best.stored_at)
    wire_form = fitted(response)
    if wire_form is None:
        return None  # too big with this client's OPT: it is asked upstream for itself
    template = wire.template_of(wire_form)
    return cache.put(query.key, template, ttl, best.stored_at, best.generation, best.targets)


def unsigned_stale(
    cache: Cache, query: Query, data: bytes, now: float
) -> tuple[bytes, Entry] | None:
    """For a client asking with DO when nothing else answers (the upstream failed, and
    nothing it may have is fresh or stale): an answer cached for a client without DO,
    within its stale window, rendered stale for this one without AD, and the entry it
    came from (the caller checks its CNAME targets against lists changed since). None if
    there is none.

    sibling() never serves these to a DO client (no signatures to validate), and while
    the upstream answers that stands. With it gone, the choice is SERVFAIL or the same
    stale data every other client gets: a stub that reads DO answers without validating
    (dig +dnssec) takes it, and so does systemd-resolved in allow-downgrade mode, which
    then takes the nameserver for one without DNSSEC for a while. A strict validator
    refuses it; systemd-resolved with DNSSEC=yes then fails every name through this
    nameserver until it tries DNSSEC again, where the SERVFAIL failed this name alone.
    Never cached for this client: once the upstream is back, the nameserver answers it
    signed again.
    """
    bits = query.key[-1]
    if not bits & wire.KEY_DO:
        return None
    base = query.key[:-1]
    best: Entry | None = None
    for cd in (bits & wire.KEY_CD, 0):  # never one made with CD for a client without it
        for extra in (0, wire.KEY_EDNS, wire.KEY_AD, wire.KEY_EDNS | wire.KEY_AD):
            found = cache.get(base + bytes((cd | extra,)))
            if (
                found is not None
                and not found.own
                and now < found.stale_until
                and (best is None or found.expires > best.expires)
            ):
                best = found
    if best is None:
        return None
    response = _rebuilt(best, query, data)
    if response is None:
        return None
    response.flags &= ~dns.flags.AD  # nothing here was validated for this client
    wire_form = fitted(response)
    if wire_form is None:
        return None
    return wire.template_of(wire_form).render(query, data, wire.STALE), best


def _rebuilt(entry: Entry, query: Query, data: bytes) -> dns.message.Message | None:
    """Another client's cached answer as it was stored (age 0), rebuilt for this client:
    its OPT, CD, AD; None if it does not parse."""
    raw = entry.template.render(query, data, 0)
    try:
        response, _ = answers.from_upstream(dns.message.from_wire(data), _parse(raw), True)
    except (BadReply, dns.exception.DNSException):
        return None
    return response


def cache_ttl(response: dns.message.Message) -> int:
    """How long an answer is fresh: its shortest RRset; a negative answer (the SOA in
    authority, after a CNAME chain too) no longer than min(SOA TTL, MINIMUM) (RFC 2308 5)."""
    negative = None
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            negative = int(min(MAX_TTL, rrset.ttl, *(rdata.minimum for rdata in rrset)))
            break
    if response.answer:
        ttl = min(MAX_TTL, *(rrset.ttl for rrset in response.answer))
        return ttl if negative is None else min(ttl, negative)
    return replies.NEGATIVE_NO_SOA_TTL if negative is None else negative


def _parse(raw: bytes) -> dns.message.Message:
    try:
        return dns.message.from_wire(raw, ignore_trailing=True)
    except dns.exception.DNSException as exc:
        raise BadReply(f"malformed reply: {exc}") from None
