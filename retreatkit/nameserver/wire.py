"""The fast path on bytes: a query's cache key, and a cached answer patched for a new asker.

Only plain queries take it: QR=0, opcode QUERY, one question, no answer or authority
records, at most one additional record (OPT). Everything else goes to dnspython.
"""

from __future__ import annotations

import struct

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
_OPT = struct.Struct(">HHBBHH")
_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")


class Query:
    """What the fast path needs from a query, found without building objects per label.

    A plain slotted class: this is built for every query, and a frozen dataclass
    costs several times more to construct.
    """

    __slots__ = ("edns", "flags", "id", "key", "question_end", "udp_size")

    def __init__(
        self, qid: int, flags: int, key: bytes, question_end: int, edns: bool, udp_size: int
    ) -> None:
        self.id = qid
        self.flags = flags
        self.key = key  # lowercased qname + qtype + qclass + our view of the client's EDNS
        self.question_end = question_end  # offset just past the question section
        self.edns = edns
        self.udp_size = udp_size  # what the client can take over UDP

    def __repr__(self) -> str:
        return f"Query(id={self.id}, key={self.key!r}, udp_size={self.udp_size})"


_FLAG_BYTES = {(e, d, c): bytes((e, d, c)) for e in (0, 1) for d in (0, 1) for c in (0, 1)}


def parse(data: bytes) -> Query | None:
    """A plain query's key, or None: the slow path decides what to do with the rest."""
    end = len(data)
    if end < 17:
        return None
    qid, flags, qd, an, ns, ar = HEADER.unpack_from(data)
    if flags & (FLAG_QR | OPCODE_MASK) or qd != 1 or an or ns or ar > 1:
        return None
    pos = 12
    limit = min(end, 12 + MAX_NAME)
    length = data[pos]
    while length:
        if length > 63:  # a compression pointer in a query: leave it to the slow path
            return None
        pos += 1 + length
        if pos >= limit:
            return None
        length = data[pos]
    pos += 1
    question_end = pos + 4
    if question_end > end:
        return None
    edns, udp_size, do = 0, 512, 0
    if ar:
        # the OPT record: root name, type 41, class = payload size, ttl = ext flags
        if question_end + 11 > end or data[question_end] != 0:
            return None
        rtype, size, _ext, version, ednsflags, rdlen = _OPT.unpack_from(data, question_end + 1)
        if rtype != TYPE_OPT or version != 0 or question_end + 11 + rdlen != end:
            return None  # EDNS version 1+ gets BADVERS from the slow path
        edns, udp_size, do = 1, max(512, min(size, UDP_PAYLOAD)), ednsflags >> 15
    elif question_end != end:
        return None
    # the name lowercased, the type and class as they are (0x41 is a type, not an "A")
    key = b"".join(
        (
            data[12:pos].translate(_LOWER),
            data[pos:question_end],
            _FLAG_BYTES[edns, do, (flags & FLAG_CD) >> 4],
        )
    )
    return Query(qid, flags, key, question_end, edns == 1, udp_size)


_ID_FLAGS = struct.Struct(">HH")
_TTL = struct.Struct(">I")


class Template:
    """A whole answer, kept as bytes with the offsets of every TTL in it."""

    __slots__ = ("_flags", "_ttl", "question_end", "ttl_offsets", "wire")

    def __init__(self, wire: bytearray, ttl_offsets: tuple[int, ...], question_end: int) -> None:
        self.wire = wire
        self.ttl_offsets = ttl_offsets
        self.question_end = question_end
        self._flags = HEADER.unpack_from(wire)[1] & ~FLAG_RD
        self._ttl = -1  # the TTL the wire holds now: rewritten once a second, not per query

    def render(self, query: Query, data: bytes, ttl: int | None) -> bytes:
        """The answer for `query`: its ID, its RD bit, its question's case, our TTLs."""
        wire = self.wire
        _ID_FLAGS.pack_into(wire, 0, query.id, self._flags | (query.flags & FLAG_RD))
        # the question as the client wrote it (0x20 case randomisation survives)
        wire[12 : self.question_end] = data[12 : query.question_end]
        if ttl is not None and ttl != self._ttl:
            self._ttl = ttl
            for offset in self.ttl_offsets:
                _TTL.pack_into(wire, offset, ttl)
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
