"""The fast path on bytes: a query's cache key, and a cached answer patched for a new asker.

Only plain queries take it: QR=0, opcode QUERY, one question, no answer or authority
records, at most one additional record (OPT). Everything else goes to dnspython.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = struct.Struct(">HHHHHH")
MAX_NAME = 255
TYPE_OPT = 41
FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_CD = 0x0010
OPCODE_MASK = 0x7800
UDP_PAYLOAD = 1232  # RFC 6891 / DNS flag day 2020: no fragmentation
_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True, slots=True)
class Query:
    """What the fast path needs from a query, found without building objects per label."""

    id: int
    flags: int
    key: bytes  # lowercased qname + qtype + qclass + our view of the client's EDNS
    question_end: int  # offset just past the question section
    edns: bool
    udp_size: int  # what the client can take over UDP


def parse(data: bytes) -> Query | None:
    """A plain query's key, or None: the slow path decides what to do with the rest."""
    if len(data) < 17:
        return None
    qid, flags, qd, an, ns, ar = HEADER.unpack_from(data)
    if flags & (FLAG_QR | OPCODE_MASK) or qd != 1 or an or ns or ar > 1:
        return None
    pos = 12
    end = len(data)
    while True:
        if pos >= end:
            return None
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length > 63:  # a compression pointer in a query: leave it to the slow path
            return None
        pos += 1 + length
        if pos - 12 > MAX_NAME:
            return None
    if pos + 4 > end:
        return None
    question_end = pos + 4
    edns, udp_size, do = False, 512, 0
    if ar:
        # the OPT record: root name, type 41, class = payload size, ttl = ext flags
        if question_end + 11 > end or data[question_end] != 0:
            return None
        rtype, size, _ext, version, ednsflags, rdlen = struct.unpack_from(
            ">HHBBHH", data, question_end + 1
        )
        if rtype != TYPE_OPT or version != 0 or question_end + 11 + rdlen != end:
            return None  # EDNS version 1+ gets BADVERS from the slow path
        edns, udp_size, do = True, max(512, min(size, UDP_PAYLOAD)), ednsflags & 0x8000
    elif question_end != end:
        return None
    # the name lowercased, the type and class as they are (0x41 is a type, not an "A")
    key = data[12:pos].translate(_LOWER) + data[pos:question_end]
    key += bytes((edns, do != 0, (flags & FLAG_CD) != 0))
    return Query(qid, flags, key, question_end, edns, udp_size)


@dataclass(slots=True)
class Template:
    """A whole answer, kept as bytes with the offsets of every TTL in it."""

    wire: bytearray
    ttl_offsets: tuple[int, ...]
    question_end: int

    def render(self, query: Query, data: bytes, ttl: int | None) -> bytes:
        """The answer for `query`: its ID, its RD bit, its question's case, our TTLs."""
        wire = self.wire
        flags = (HEADER.unpack_from(wire)[1] & ~FLAG_RD) | (query.flags & FLAG_RD)
        struct.pack_into(">HH", wire, 0, query.id, flags)
        # the question as the client wrote it (0x20 case randomisation survives)
        wire[12 : self.question_end] = data[12 : query.question_end]
        if ttl is not None:
            packed = struct.pack(">I", ttl)
            for offset in self.ttl_offsets:
                wire[offset : offset + 4] = packed
        return bytes(wire)


def ttl_offsets(wire: bytes) -> tuple[tuple[int, ...], int, int]:
    """Offsets of each record's TTL (OPT excluded), the end of the question, and the
    minimum TTL (RFC 2181: one TTL per RRset; a TTL with the top bit set counts as 0)."""
    _id, _flags, qd, an, ns, ar = HEADER.unpack_from(wire)
    pos = 12
    for _ in range(qd):
        pos = _skip_name(wire, pos) + 4
    question_end = pos
    offsets = []
    lowest = 0x7FFFFFFF
    for _ in range(an + ns + ar):
        pos = _skip_name(wire, pos)
        rtype, _rclass, ttl, rdlen = struct.unpack_from(">HHIH", wire, pos)
        if rtype != TYPE_OPT:
            offsets.append(pos + 4)
            lowest = min(lowest, 0 if ttl & 0x80000000 else ttl)
        pos += 10 + rdlen
    if pos != len(wire):
        raise ValueError("trailing bytes after the last record")
    return tuple(offsets), question_end, (lowest if offsets else 0)


def _skip_name(wire: bytes, pos: int) -> int:
    while True:
        if pos >= len(wire):
            raise ValueError("name runs past the end")
        length = wire[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        if length > 63:
            raise ValueError("bad label length")
        pos += 1 + length
