"""Cache writes: what an upstream's reply or our own answer becomes in the cache (no I/O).

An upstream reply takes the byte path (reply.template) unless it must be rewritten:
private addresses of a public name to drop (DNS rebinding), or a layout reply.digest
leaves to dnspython. Either way the entry keeps each RRset's own TTL and caches for
the smallest in the answer, or for a negative answer min(SOA TTL, SOA MINIMUM)
(RFC 2181 5.2, RFC 2308 5).
"""

from __future__ import annotations

import dns.exception
import dns.message
import dns.rdatatype

from retreatkit.nameserver import answers, wire
from retreatkit.nameserver import reply as replies
from retreatkit.nameserver.cache import Cache, Entry
from retreatkit.nameserver.errors import BadReply
from retreatkit.nameserver.upstream import Answer
from retreatkit.nameserver.wire import MAX_TTL, Query

MAX_MESSAGE = 65535


def encode(response: dns.message.Message) -> bytes:
    """Wire form at full size: cutting to what a client takes is the caller's job (TC)."""
    return response.to_wire(max_size=MAX_MESSAGE)


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
    template = wire.template_of(encode(response))
    entry = cache.put(query.key, template, cache_ttl(response), now, generation, targets(answer))
    return entry, dropped


def cache_ttl(response: dns.message.Message) -> int:
    if response.answer:
        return min(MAX_TTL, *(rrset.ttl for rrset in response.answer))
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            return int(min(MAX_TTL, rrset.ttl, *(rdata.minimum for rdata in rrset)))
    return replies.NEGATIVE_NO_SOA_TTL


def _parse(raw: bytes) -> dns.message.Message:
    try:
        return dns.message.from_wire(raw, ignore_trailing=True)
    except dns.exception.DNSException as exc:
        raise BadReply(f"malformed reply: {exc}") from None
