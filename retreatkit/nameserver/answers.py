"""Answers built with dnspython: local names, blocks, RFC 8482 ANY, upstream replies (no I/O)."""

from __future__ import annotations

import ipaddress

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from retreatkit.nameserver.policy import Record
from retreatkit.nameserver.wire import UDP_PAYLOAD

LOCAL_TTL = 60
BLOCK_TTL = 60
NEGATIVE_NO_SOA_TTL = 10
MAX_TTL = 86400
EDE_BLOCKED = dns.edns.EDECode.BLOCKED  # RFC 8914: 15
SOA_MNAME = "ns.retreat.lan."
SOA_RNAME = "hostmaster.retreat.lan."

# RFC 1918 / 6761 / 6762 and friends: reverse names that never leave the LAN
PRIVATE_NETS = [
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.168.0.0/16", "::1/128", "::/128", "fc00::/7", "fe80::/10",
    )
]  # fmt: skip


def is_private(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in PRIVATE_NETS if net.version == ip.version)


def response_for(query: dns.message.Message) -> dns.message.Message:
    """An empty response: ID, question and RD copied, RA set, OPT regenerated per hop."""
    response = dns.message.make_response(query, recursion_available=True)
    if query.edns >= 0:
        response.use_edns(0, payload=UDP_PAYLOAD)
    return response


def soa(zone: str) -> dns.rrset.RRset:
    return dns.rrset.from_text(
        zone, BLOCK_TTL, "IN", "SOA", f"{SOA_MNAME} {SOA_RNAME} 1 3600 600 86400 {BLOCK_TTL}"
    )


def local(query: dns.message.Message, records: list[Record]) -> dns.message.Message:
    """Authoritative data for a local name; CNAMEs are not chased beyond the record."""
    response = response_for(query)
    response.flags |= dns.flags.AA
    question = query.question[0]
    wanted = dns.rdatatype.to_text(question.rdtype)
    for record in records:
        if (
            record.rtype == wanted
            or record.rtype == "CNAME"
            or question.rdtype == dns.rdatatype.ANY
        ):
            value = record.value + ("." if record.rtype == "CNAME" else "")
            response.answer.append(
                dns.rrset.from_text(question.name, LOCAL_TTL, "IN", record.rtype, value)
            )
    if not response.answer:
        response.authority.append(soa(str(question.name)))
    return response


def ptr(query: dns.message.Message, target: str) -> dns.message.Message:
    response = response_for(query)
    response.flags |= dns.flags.AA
    response.answer.append(
        dns.rrset.from_text(query.question[0].name, LOCAL_TTL, "IN", "PTR", target + ".")
    )
    return response


def nxdomain(query: dns.message.Message, zone: str | None = None) -> dns.message.Message:
    response = response_for(query)
    response.set_rcode(dns.rcode.NXDOMAIN)
    response.flags |= dns.flags.AA
    response.authority.append(soa(zone or str(query.question[0].name)))
    return response


def blocked(query: dns.message.Message, mode: str, listed: str) -> dns.message.Message:
    """Null addresses (the default) or NXDOMAIN with an SOA so stubs cache the refusal."""
    question = query.question[0]
    if mode == "nxdomain":
        response = nxdomain(query, listed + ".")
    else:
        response = response_for(query)
        response.flags |= dns.flags.AA
        if question.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            null = "0.0.0.0" if question.rdtype == dns.rdatatype.A else "::"
            rdtype = dns.rdatatype.to_text(question.rdtype)
            response.answer.append(
                dns.rrset.from_text(question.name, BLOCK_TTL, "IN", rdtype, null)
            )
        else:
            response.authority.append(soa(listed + "."))
    if query.edns >= 0:
        response.use_edns(
            0, payload=UDP_PAYLOAD, options=[dns.edns.EDEOption(EDE_BLOCKED, "Blocked")]
        )
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


def from_upstream(
    query: dns.message.Message, reply: dns.message.Message, rebind_ok: bool
) -> tuple[dns.message.Message, int, bool]:
    """The client's answer from an upstream reply: (message, cache TTL, rebinding dropped).

    Sections are copied, OPT is ours (RFC 6891: per hop), and the TTL to cache is the
    minimum of the records (RFC 2181), or for a negative answer min(SOA TTL, MINIMUM)
    (RFC 2308).
    """
    response = response_for(query)
    response.set_rcode(dns.rcode.Rcode.make(reply.rcode()))
    response.answer = [rrset for rrset in reply.answer]
    response.authority = [rrset for rrset in reply.authority]
    response.additional = [rrset for rrset in reply.additional]
    dropped = False
    if not rebind_ok:
        kept = [rrset for rrset in response.answer if not _private_rrset(rrset)]
        dropped = len(kept) != len(response.answer)
        response.answer = kept
    if response.answer:
        ttl = min(rrset.ttl for rrset in response.answer)
    else:
        soas = [r for r in reply.authority if r.rdtype == dns.rdatatype.SOA]
        if soas:
            ttl = min(soas[0].ttl, min(rdata.minimum for rdata in soas[0]))
        else:
            ttl = NEGATIVE_NO_SOA_TTL
    return response, max(0, min(ttl, MAX_TTL)), dropped


def _private_rrset(rrset: dns.rrset.RRset) -> bool:
    if rrset.rdtype not in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return False
    return any(is_private(rdata.address) for rdata in rrset)


def reverse_is_private(name: dns.name.Name) -> bool:
    """A PTR question about a private address: it has no business going upstream."""
    text = name.to_text(omit_final_dot=True).lower()
    try:
        if text.endswith(".in-addr.arpa"):
            octets = text.removesuffix(".in-addr.arpa").split(".")
            if len(octets) != 4:
                return any(text.endswith(z) for z in ("10.in-addr.arpa", "168.192.in-addr.arpa"))
            return is_private(".".join(reversed(octets)))
        if text.endswith(".ip6.arpa"):
            nibbles = text.removesuffix(".ip6.arpa").split(".")
            if len(nibbles) != 32:
                return False
            full = "".join(reversed(nibbles))
            return is_private(":".join(full[i : i + 4] for i in range(0, 32, 4)))
    except ValueError:
        return False
    return False
