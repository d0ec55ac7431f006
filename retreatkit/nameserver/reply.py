"""An upstream's reply read on bytes, and the client's answer built from it (no I/O).

The miss path: an uncached question costs a walk over the reply's records, not a
dnspython parse and rebuild. The answer keeps the reply's records byte for byte: its
question is the client's, at the same offset and of the same length (only the case
differs), so every compression pointer in the records still points where it did.
What we change: the header, the question's case, the TTLs, and the OPT (RFC 6891: it
is per hop; the upstream's is dropped, ours goes last).
"""

from __future__ import annotations

import struct

from retreatkit.nameserver import wire
from retreatkit.nameserver.errors import BadReply
from retreatkit.nameserver.wire import HEADER, MAX_TTL, TYPE_OPT, Query, Template

NEGATIVE_NO_SOA_TTL = 10  # RFC 2308 5: no SOA, so no negative TTL to go by: keep it short
TYPE_A, TYPE_CNAME, TYPE_SOA, TYPE_AAAA = 1, 5, 6, 28
_RR = struct.Struct(">HHIH")
_TTL = struct.Struct(">I")
_COMPAT = bytes(12)  # the first 96 bits of an IPv6 address that carries an IPv4 one
_MAPPED = bytes(10) + b"\xff\xff"
_NAT64 = b"\x00\x64\xff\x9b" + bytes(8)


def private_v4(a: bytes) -> bool:
    """0/8, 10/8, 100.64/10, 127/8, 169.254/16, 172.16/12, 192.168/16: what a public name
    must not point at (DNS rebinding). Byte tests: this runs on every A record of a miss."""
    first = a[0]
    if first in (0, 10, 127):
        return True
    second = a[1]
    return (
        (first == 100 and 64 <= second < 128)
        or (first == 169 and second == 254)
        or (first == 172 and 16 <= second < 32)
        or (first == 192 and second == 168)
    )


def private_v6(address: bytes) -> bool:
    """::, ::1, fc00::/7, fe80::/10, and a private IPv4 address carried in IPv6: mapped,
    NAT64 (64:ff9b::/96), 6to4 (2002::/16), IPv4-compatible (policy.is_private says why)."""
    head = address[:12]
    if head in (_COMPAT, _MAPPED, _NAT64):
        return private_v4(address[12:])  # :: and ::1 are in 0.0.0.0/8
    if address[:2] == b"\x20\x02":
        return private_v4(address[2:6])  # 6to4
    return address[0] & 0xFE == 0xFC or (address[0] == 0xFE and address[1] & 0xC0 == 0x80)


class Unusual(Exception):
    """A well-formed reply in a layout left to dnspython (records after the OPT)."""


class Reply:
    """What the resolver needs from an upstream reply, found in one walk."""

    __slots__ = (
        "an", "ar", "body", "flags", "ns", "private", "rcode", "targets", "ttl", "ttl_offsets",
        "ttls",
    )  # fmt: skip

    def __init__(self) -> None:
        self.flags = 0
        self.rcode = 0
        self.an = self.ns = self.ar = 0  # counts without the upstream's OPT
        self.body = b""  # every record after the question, the upstream's OPT left out
        self.ttl_offsets: tuple[int, ...] = ()  # into body
        self.ttls: tuple[int, ...] = ()  # as stored: top bit cleared to 0, at most MAX_TTL
        self.ttl = 0  # how long to cache it (RFC 2181 / RFC 2308)
        self.targets: tuple[str, ...] = ()  # CNAME targets in the answer (cloaking checks)
        self.private = False  # an A/AAAA in the answer is a private address

    @property
    def truncated(self) -> bool:
        return bool(self.flags & wire.FLAG_TC)


def digest(data: bytes, question: bytes) -> Reply:
    """Read a reply to the question `question` (wire name + type + class, lowercase).

    Raises BadReply when it is not a well-formed reply to that question, or when its
    layout is one we leave to dnspython (an OPT that is not the last record).
    """
    if len(data) < 12:
        raise BadReply("reply shorter than a header")
    _id, flags, qd, an, ns, ar = HEADER.unpack_from(data)
    if not flags & wire.FLAG_QR or qd != 1:
        raise BadReply("not a reply to one question")
    question_end = 12 + len(question)
    # the upstream repeats our question (we sent it lowercase): anything else is not ours
    if not wire.repeats(data, question):
        raise BadReply("reply to another question")
    reply = Reply()
    reply.flags = flags
    reply.rcode = flags & 0x000F
    if flags & wire.FLAG_TC:
        return reply  # asked again over TCP; nothing in it is kept
    offsets: list[int] = []
    ttls: list[int] = []
    targets: list[str] = []
    answer_ttl = MAX_TTL + 1
    negative_ttl = -1
    pos = question_end
    end = len(data)
    opt_at = -1
    try:
        for index in range(an + ns + ar):
            start = pos
            pos = wire.skip_name(data, pos)
            rtype, _rclass, ttl, rdlen = _RR.unpack_from(data, pos)
            rdata = pos + 10
            pos = rdata + rdlen
            if pos > end:
                raise BadReply("record runs past the end")
            if rtype == TYPE_OPT:
                if opt_at >= 0 or index < an + ns:
                    raise BadReply("OPT outside the additional section")
                opt_at = start
                continue
            if opt_at >= 0:
                raise Unusual("records after OPT")  # dnspython rebuilds this one
            ttl = 0 if ttl & 0x80000000 else min(ttl, MAX_TTL)  # RFC 2181 8
            offsets.append(rdata - 6 - question_end)
            ttls.append(ttl)
            if index < an:
                answer_ttl = min(answer_ttl, ttl)
                if rtype == TYPE_CNAME:
                    targets.append(wire.read_name(data, rdata))
                elif (rtype == TYPE_A and rdlen == 4 and private_v4(data[rdata:pos])) or (
                    rtype == TYPE_AAAA and rdlen == 16 and private_v6(data[rdata:pos])
                ):
                    reply.private = True
            elif index < an + ns and rtype == TYPE_SOA and rdlen >= 20 and negative_ttl < 0:
                (minimum,) = _TTL.unpack_from(data, pos - 4)
                negative_ttl = min(ttl, minimum)  # RFC 2308 5
    except (ValueError, struct.error, IndexError) as exc:
        raise BadReply(f"malformed reply: {exc}") from None
    if pos != end:
        raise BadReply("trailing bytes after the last record")
    reply.an, reply.ns, reply.ar = an, ns, ar - (opt_at >= 0)
    reply.body = data[question_end : opt_at if opt_at >= 0 else end]
    reply.ttl_offsets = tuple(offsets)
    reply.ttls = tuple(ttls)
    reply.targets = tuple(targets)
    if an:
        # a CNAME chain that ends in NXDOMAIN or NODATA (the SOA says so): its end lasts
        # no longer than the negative TTL, however long the CNAMEs may (RFC 2308 5)
        reply.ttl = answer_ttl if negative_ttl < 0 else min(answer_ttl, negative_ttl)
    elif negative_ttl >= 0:
        reply.ttl = min(negative_ttl, MAX_TTL)
    else:
        reply.ttl = NEGATIVE_NO_SOA_TTL
    return reply


def answer_flags(reply_flags: int, key_bits: int) -> int:
    """QR and RA; AD only for a client that asked with DO or AD (RFC 6840 5.8), CD as the
    client sent it, the upstream's RCODE; never AA (the data is not ours)."""
    flags = wire.FLAG_QR | wire.FLAG_RA | (reply_flags & 0x000F)
    if reply_flags & wire.FLAG_AD and key_bits & (wire.KEY_DO | wire.KEY_AD):
        flags |= wire.FLAG_AD
    if key_bits & wire.KEY_CD:
        flags |= wire.FLAG_CD
    return flags


def template(reply: Reply, query: Query, data: bytes) -> Template:
    """The client's answer as a template: RD and the ID are patched per asker."""
    bits = query.key[-1]
    edns = bool(bits & wire.KEY_EDNS)
    flags = answer_flags(reply.flags, bits)
    header = HEADER.pack(0, flags, 1, reply.an, reply.ns, reply.ar + edns)
    question = data[12 : query.question_end]
    # one allocation of the exact size: growing a bytearray leaves room to spare, and
    # this one is kept in the cache for as long as the answer is
    out = bytearray(
        b"".join(
            (header, question, reply.body, wire.opt(bool(bits & wire.KEY_DO)) if edns else b"")
        )
    )
    base = 12 + len(question)
    offsets = tuple(base + o for o in reply.ttl_offsets)
    for offset, ttl in zip(offsets, reply.ttls, strict=True):
        _TTL.pack_into(out, offset, ttl)
    return Template(out, offsets, base, reply.ttls)
