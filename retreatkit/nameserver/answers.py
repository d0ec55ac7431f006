"""Answers built with dnspython: local names, blocks, RFC 8482 ANY, errors (no I/O).

DNSSEC bits (RFC 4035 3.1, RFC 6840 5.8): the OPT we send back echoes the client's DO;
CD is copied; AD is set only on an upstream's data the upstream marked AD, and only
for a client that asked with DO or AD. Our own data (local names, blocks) is never AD:
nobody validated it.
"""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from retreatkit.nameserver.local import Record
from retreatkit.nameserver.policy import is_private
from retreatkit.nameserver.wire import MAX_TTL, UDP_PAYLOAD

LOCAL_TTL = 60
BLOCK_TTL = 60
EDE_BLOCKED = dns.edns.EDECode.BLOCKED  # RFC 8914: 15
SOA_MNAME = "ns.retreat.lan."
SOA_RNAME = "hostmaster.retreat.lan."


def response_for(
    query: dns.message.Message, options: list[dns.edns.Option] | None = None
) -> dns.message.Message:
    """An empty response: ID, question, RD and CD copied, RA set, OPT regenerated per hop."""
    response = dns.message.make_response(query, recursion_available=True)
    response.flags |= query.flags & dns.flags.CD
    if query.edns >= 0:
        response.use_edns(
            0, query.ednsflags & dns.flags.DO, payload=UDP_PAYLOAD, options=options or []
        )
    return response


def soa(zone: str, ttl: int = BLOCK_TTL) -> dns.rrset.RRset:
    return dns.rrset.from_text(
        zone.rstrip(".") + ".", ttl, "IN", "SOA",
        f"{SOA_MNAME} {SOA_RNAME} 1 3600 600 86400 {ttl}",
    )  # fmt: skip


def local(query: dns.message.Message, chain: list[Record], apex: str) -> dns.message.Message:
    """Authoritative data for a local name, CNAMEs followed through local names; with no
    data of the asked type, NODATA with the zone apex's SOA."""
    response = response_for(query)
    response.flags |= dns.flags.AA
    question = query.question[0]
    if question.rdtype == dns.rdatatype.SOA and chain == [] and _is_apex(question.name, apex):
        response.answer.append(soa(apex))
        response.answer[0].name = question.name
        return response
    asked = question.name.to_text(omit_final_dot=True).lower()
    by_owner: dict[tuple[str, str], dns.rrset.RRset] = {}
    for record in chain:
        # the asked name as the client wrote it (case kept); targets as we know them
        owner = question.name if record.name == asked else dns.name.from_text(record.name)
        value = record.value + ("." if record.rtype == "CNAME" else "")
        rrset = by_owner.get((record.name, record.rtype))
        if rrset is None:
            rrset = dns.rrset.from_text(owner, LOCAL_TTL, "IN", record.rtype, value)
            by_owner[(record.name, record.rtype)] = rrset
            response.answer.append(rrset)
        else:
            rrset.add(dns.rrset.from_text(owner, LOCAL_TTL, "IN", record.rtype, value)[0])
    if not response.answer:
        response.authority.append(soa(apex))
    return response


def _is_apex(name: dns.name.Name, apex: str) -> bool:
    return name.to_text(omit_final_dot=True).lower() == apex


def ptr(query: dns.message.Message, target: str) -> dns.message.Message:
    response = response_for(query)
    response.flags |= dns.flags.AA
    response.answer.append(
        dns.rrset.from_text(query.question[0].name, LOCAL_TTL, "IN", "PTR", target + ".")
    )
    return response


def nodata(query: dns.message.Message, apex: str) -> dns.message.Message:
    """NOERROR, no answer, the SOA of the zone's apex (RFC 2308 2.2): the name is ours
    and exists, with no data of the asked type."""
    response = response_for(query)
    response.flags |= dns.flags.AA
    response.authority.append(soa(apex))
    return response


def nxdomain(query: dns.message.Message, apex: str) -> dns.message.Message:
    """NXDOMAIN with the SOA of the zone's apex (RFC 2308 3), so stubs cache the refusal."""
    response = response_for(query)
    response.set_rcode(dns.rcode.NXDOMAIN)
    response.flags |= dns.flags.AA
    response.authority.append(soa(apex))
    return response


def blocked(query: dns.message.Message, mode: str, listed: str) -> dns.message.Message:
    """Null addresses (the default) or NXDOMAIN, with an SOA at the listed name so stubs
    cache the refusal, and RFC 8914's extended error "Blocked"."""
    apex = listed.removeprefix("*.")
    options: list[dns.edns.Option] = [dns.edns.EDEOption(EDE_BLOCKED, "Blocked")]
    question = query.question[0]
    if mode == "nxdomain":
        response = response_for(query, options)
        response.set_rcode(dns.rcode.NXDOMAIN)
        response.flags |= dns.flags.AA
        response.authority.append(soa(apex))
        return response
    response = response_for(query, options)
    response.flags |= dns.flags.AA
    if question.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        null = "0.0.0.0" if question.rdtype == dns.rdatatype.A else "::"
        rdtype = dns.rdatatype.to_text(question.rdtype)
        response.answer.append(dns.rrset.from_text(question.name, BLOCK_TTL, "IN", rdtype, null))
    else:
        response.authority.append(soa(apex))
    return response


def minimal_any(query: dns.message.Message) -> dns.message.Message:
    """RFC 8482: answer ANY with one small synthesized HINFO, not everything we know."""
    response = response_for(query)
    response.answer.append(
        dns.rrset.from_text(query.question[0].name, 3600, "IN", "HINFO", '"RFC8482" ""')
    )
    return response


def error(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    response = response_for(query)
    response.set_rcode(rcode)
    return response


def badvers(query: dns.message.Message) -> dns.message.Message:
    """RFC 6891 6.1.3: an EDNS version we do not speak gets BADVERS and our version, 0."""
    response = dns.message.make_response(query, recursion_available=True)
    response.use_edns(0, 0, payload=UDP_PAYLOAD)
    response.set_rcode(dns.rcode.BADVERS)
    return response


def from_upstream(
    query: dns.message.Message, reply: dns.message.Message, rebind_ok: bool
) -> tuple[dns.message.Message, bool]:
    """The client's answer from an upstream reply that the byte path left to us: sections
    copied with each RRset's own TTL, AD as the module says, private addresses of a
    public name dropped unless `rebind_ok` (DNS rebinding). Returns (answer, dropped)."""
    response = response_for(query)
    response.set_rcode(dns.rcode.Rcode.make(reply.rcode() & 0xF))
    if reply.flags & dns.flags.AD and (
        query.flags & dns.flags.AD or query.ednsflags & dns.flags.DO
    ):
        response.flags |= dns.flags.AD
    response.answer = list(reply.answer)
    response.authority = list(reply.authority)
    response.additional = list(reply.additional)
    for rrset in (*response.answer, *response.authority, *response.additional):
        rrset.ttl = 0 if rrset.ttl & 0x80000000 else min(rrset.ttl, MAX_TTL)
    dropped = False
    if not rebind_ok:
        kept = public_only(response.answer)
        dropped = len(kept) != len(response.answer)
        response.answer = kept
    return response, dropped


def public_only(rrsets: list[dns.rrset.RRset]) -> list[dns.rrset.RRset]:
    """The RRsets but those with a private address (DNS rebinding)."""
    return [rrset for rrset in rrsets if not _private_rrset(rrset)]


DNSSEC_TYPES = (dns.rdatatype.RRSIG, dns.rdatatype.NSEC, dns.rdatatype.NSEC3)


def without_dnssec(response: dns.message.Message) -> dns.message.Message:
    """For a client that did not ask with DO (RFC 4035 3.2.1): no signatures or denial
    records, but for a question about those very types."""
    asked = response.question[0].rdtype if response.question else None
    for section in (response.answer, response.authority, response.additional):
        section[:] = [r for r in section if r.rdtype not in DNSSEC_TYPES or r.rdtype == asked]
    return response


def _private_rrset(rrset: dns.rrset.RRset) -> bool:
    if rrset.rdtype not in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return False
    return any(is_private(rdata.address) for rdata in rrset)
