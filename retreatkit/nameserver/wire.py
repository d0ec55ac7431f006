"""The fast path on bytes: a query's cache key, and a cached answer patched for a new asker.

Only plain queries take it: QR=0, opcode QUERY, one question, no answer or authority
records, at most one additional record (OPT, version 0). Everything else goes to dnspython.

A cache key is the lowercased question (name, type, class) and one byte of what the
client asked for beside it: bit 0 DO, bit 1 CD, bit 2 EDNS, bit 3 AD. The first two
change what we ask upstream; the last two only change the answer's OPT and AD bit.
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
FLAG_RA = 0x0080
FLAG_AD = 0x0020
FLAG_CD = 0x0010
OPCODE_MASK = 0x7800
EDNS_DO = 0x8000
UDP_PAYLOAD = 1232  # RFC 6891 / DNS flag day 2020: no fragmentation
MAX_TTL = 86400  # what we cache and hand out at most, whatever an upstream says
KEY_DO, KEY_CD, KEY_EDNS, KEY_AD = 1, 2, 4, 8
_OPT = struct.Struct(">HHBBHH")
_RR = struct.Struct(">HHIH")
_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")
_KEY_BYTE = tuple(bytes((i,)) for i in range(16))


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
        self.key = key  # lowercased qname + qtype + qclass + the key byte (module docstring)
        self.question_end = question_end  # offset just past the question section
        self.edns = edns
        self.udp_size = udp_size  # what the client can take over UDP

    def __repr__(self) -> str:
        return f"Query(id={self.id}, key={self.key!r}, udp_size={self.udp_size})"


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
    # the DO, CD and AD bits land where the key byte wants them (see the module docstring)
    bits = ((flags & FLAG_CD) >> 3) | ((flags & FLAG_AD) >> 2)
    udp_size = 512
    if ar:
        # the OPT record: root name, type 41, class = payload size, ttl = ext flags
        if question_end + 11 > end or data[question_end] != 0:
            return None
        rtype, size, _ext, version, ednsflags, rdlen = _OPT.unpack_from(data, question_end + 1)
        if rtype != TYPE_OPT or version != 0 or question_end + 11 + rdlen != end:
            return None  # EDNS version 1+ gets BADVERS from the slow path
        bits |= KEY_EDNS | (ednsflags >> 15)
        udp_size = max(512, min(size, UDP_PAYLOAD))
    elif question_end != end:
        return None
    # the name lowercased, the type and class as they are (0x41 is a type, not an "A")
    key = data[12:pos].translate(_LOWER) + data[pos:question_end] + _KEY_BYTE[bits]
    return Query(qid, flags, key, question_end, bits & KEY_EDNS != 0, udp_size)


def upstream_key(key: bytes) -> bytes:
    """The question as we ask it upstream: clients that differ only in EDNS or AD share it."""
    return key[:-1] + _KEY_BYTE[key[-1] & (KEY_DO | KEY_CD)]


def opt(do: bool, ext_rcode: int = 0, options: bytes = b"") -> bytes:
    """Our OPT record (RFC 6891: per hop, never the upstream's): 1232 bytes, version 0."""
    return (
        b"\x00"
        + _OPT.pack(TYPE_OPT, UDP_PAYLOAD, ext_rcode, 0, EDNS_DO if do else 0, len(options))
        + options
    )


def upstream_query(qid: int, key: bytes, edns: bool = True) -> bytes:
    """The query we send upstream for a cache key: RD, AD (RFC 6840 5.7: tell us what the
    upstream validated), CD and DO as the client asked, our OPT (none for an upstream
    that does not speak EDNS: no DO either, then)."""
    bits = key[-1]
    flags = FLAG_RD | FLAG_AD | (FLAG_CD if bits & KEY_CD else 0)
    if not edns:
        return HEADER.pack(qid, flags, 1, 0, 0, 0) + key[:-1]
    return HEADER.pack(qid, flags, 1, 0, 0, 1) + key[:-1] + opt(bool(bits & KEY_DO))


_ID_FLAGS = struct.Struct(">HH")
_TTL = struct.Struct(">I")
STALE = -1  # render's age for an answer served stale
STALE_TTL = 30  # RFC 8767: the TTL of an answer served stale


class Template:
    """A whole answer, kept as bytes with the offset and the TTL as stored of every record.

    TTLs count down from the stored ones by the answer's age, each record its own
    (RFC 2181 5.2: one TTL per RRset, and RRsets keep theirs); the wire is rewritten
    when the age changes, once a second, not per query.
    """

    __slots__ = ("_age", "_flags", "question_end", "ttl_offsets", "ttls", "wire")

    def __init__(
        self,
        wire: bytearray,
        ttl_offsets: tuple[int, ...],
        question_end: int,
        ttls: tuple[int, ...] | None = None,
    ) -> None:
        self.wire = wire
        self.ttl_offsets = ttl_offsets
        self.question_end = question_end
        self.ttls = (
            ttls if ttls is not None else tuple(_TTL.unpack_from(wire, o)[0] for o in ttl_offsets)
        )
        self._flags = HEADER.unpack_from(wire)[1] & ~FLAG_RD
        self._age = 0  # the age the wire's TTLs are for now

    @property
    def rcode(self) -> int:
        return int(self._flags & 0x000F)

    def render(self, query: Query, data: bytes, age: int | None) -> bytes:
        """The answer for `query`: its ID, its RD bit, its question's case, TTLs for `age`
        seconds (None: as stored; STALE: RFC 8767's 30 s on every record)."""
        wire = self.wire
        _ID_FLAGS.pack_into(wire, 0, query.id, self._flags | (query.flags & FLAG_RD))
        # the question as the client wrote it (0x20 case randomisation survives)
        wire[12 : self.question_end] = data[12 : query.question_end]
        if age is not None and age != self._age:
            self._age = age
            if age == STALE:
                for offset in self.ttl_offsets:
                    _TTL.pack_into(wire, offset, STALE_TTL)
            else:
                for offset, ttl in zip(self.ttl_offsets, self.ttls, strict=True):
                    _TTL.pack_into(wire, offset, ttl - age if ttl > age else 0)
        return bytes(wire)


def ttl_offsets(wire: bytes) -> tuple[tuple[int, ...], int, int]:
    """Offsets of each record's TTL (OPT excluded), the end of the question, and the
    minimum TTL (RFC 2181: one TTL per RRset; a TTL with the top bit set counts as 0)."""
    _id, _flags, qd, an, ns, ar = HEADER.unpack_from(wire)
    pos = 12
    for _ in range(qd):
        pos = skip_name(wire, pos) + 4
    question_end = pos
    offsets = []
    lowest = 0x7FFFFFFF
    for _ in range(an + ns + ar):
        pos = skip_name(wire, pos)
        rtype, _rclass, ttl, rdlen = _RR.unpack_from(wire, pos)
        if rtype != TYPE_OPT:
            offsets.append(pos + 4)
            lowest = min(lowest, 0 if ttl & 0x80000000 else ttl)
        pos += 10 + rdlen
    if pos != len(wire):
        raise ValueError("trailing bytes after the last record")
    return tuple(offsets), question_end, (lowest if offsets else 0)


def template_of(encoded: bytes) -> Template:
    """A template for an answer we built ourselves (dnspython's wire form)."""
    offsets, question_end, _ = ttl_offsets(encoded)
    return Template(bytearray(encoded), offsets, question_end)


def skip_name(wire: bytes, pos: int) -> int:
    """The offset just past the name at `pos` (a pointer ends a name)."""
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


def read_name(wire: bytes, pos: int) -> str:
    """The name at `pos`, pointers followed, lowercased and without the final dot.

    Pointers must point backwards and a name is at most 255 bytes: a pointer loop or a
    forward pointer is refused, not followed (RFC 1035 4.1.4; the pointer-loop attacks).
    """
    labels: list[bytes] = []
    total = 0
    while True:
        if pos >= len(wire):
            raise ValueError("name runs past the end")
        length = wire[pos]
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(wire):
                raise ValueError("pointer runs past the end")
            target = ((length & 0x3F) << 8) | wire[pos + 1]
            if target >= pos:
                raise ValueError("compression pointer does not point backwards")
            pos = target
            continue
        if length > 63:
            raise ValueError("bad label length")
        if length == 0:
            return b".".join(labels).translate(_LOWER).decode("ascii", "replace")
        total += length + 1
        if total > MAX_NAME:
            raise ValueError("name longer than 255 bytes")
        labels.append(wire[pos + 1 : pos + 1 + length])
        pos += 1 + length


def repeats(data: bytes, question: bytes) -> bool:
    """Whether a reply repeats `question` (a cache key's: the wire name lowercased, type,
    class) after its header: the name in any case (0x20), the type and class byte for
    byte. Lowercasing them too turned type 65 (HTTPS, 0x0041: an "A" in ASCII) into 97,
    and every reply to a browser's HTTPS question was taken for a spoof."""
    end = 12 + len(question)
    return (
        data[end - 4 : end] == question[-4:]
        and data[12 : end - 4].translate(_LOWER) == question[:-4]
    )


def key_name(key: bytes) -> str:
    """The query name inside a cache key (the key starts with the name in wire form)."""
    labels, pos = [], 0
    while pos < len(key) and key[pos]:
        labels.append(key[pos + 1 : pos + 1 + key[pos]].decode("ascii", "replace"))
        pos += 1 + key[pos]
    return ".".join(labels)


def key_type(key: bytes) -> int:
    """The query type inside a cache key."""
    return int.from_bytes(key[-5:-3], "big")


def truncated(answer: bytes, edns: bool, do: bool) -> bytes:
    """Header and question only, TC set, and our OPT if the client sent one (RFC 6891:
    a truncated answer still carries OPT): the client asks again over TCP."""
    qid, flags, qd, _an, _ns, _ar = HEADER.unpack_from(answer)
    pos = 12
    for _ in range(qd):
        pos = skip_name(answer, pos) + 4
    header = HEADER.pack(qid, flags | FLAG_TC, qd, 0, 0, 1 if edns else 0)
    return header + answer[12:pos] + (opt(do) if edns else b"")


def echo(data: bytes, query: Query, rcode: int = 0) -> bytes:
    """A header + question answer skeleton for a query (QR and RA set): REFUSED, or the
    start of a truncated answer. No bigger than the query: nothing to amplify. Never AD:
    it carries no data, so none was validated (RFC 4035 3.2.3; a client's AD asks for it)."""
    flags = ((query.flags | FLAG_QR | FLAG_RA) & ~(FLAG_AA | FLAG_AD | 0x000F)) | rcode
    return HEADER.pack(query.id, flags, 1, 0, 0, 0) + data[12 : query.question_end]
