"""Framing and authenticated records: ChaCha20-Poly1305 with counter nonces (no I/O).

A frame is a 4-byte header (type: u8, body length: u24, big-endian) and a body.
Handshake frames travel in clear; every later body is an AEAD ciphertext whose
associated data is the header, so neither type nor length can be altered, and whose
nonce is the record's counter, so records cannot be dropped, replayed or reordered.
"""

from __future__ import annotations

import enum
import struct
import zlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from retreatkit.transfer.errors import LocalProtocolError, RemoteProtocolError

HEADER = struct.Struct(">I")
HEADER_SIZE = 4
TAG_SIZE = 16
RECORD_SIZE = 64 * 1024  # plaintext bytes per data record
MAX_BODY = RECORD_SIZE + 1024  # room for the tag and small control records


class Kind(enum.IntEnum):
    # clear handshake frames
    PAKE = 1
    CONFIRM = 2
    # encrypted records
    OFFER = 0x10
    ANSWER = 0x11
    DATA = 0x12
    DATA_Z = 0x13  # zlib-compressed data
    FILE_END = 0x14  # empty: the AEAD already vouches for every byte, in order
    END = 0x15  # the explicit final record from the sender
    DONE = 0x16  # the receiver's final acknowledgement
    ABORT = 0x17  # either side gives up, with a reason
    HINTS = 0x18  # either side, first after CONFIRM: where it listens for a direct connection
    PREFIX = 0x19  # sender: hashes of the blocks the receiver says it already holds
    FROM = 0x1A  # receiver: where the data starts (the verified part of a resumed offer)
    PATH = 0x1B  # sender: the records after this go on the relay or on a direct connection
    PATH_ACK = 0x1C  # receiver: its last record on the relay before it moves


CLEAR_KINDS = frozenset({Kind.PAKE, Kind.CONFIRM})
FINAL_KINDS = frozenset({Kind.END, Kind.DONE, Kind.ABORT})


def header(kind: int, length: int) -> bytes:
    return HEADER.pack((kind << 24) | length)


def frame(kind: Kind, body: bytes) -> bytes:
    """A clear frame (handshake only)."""
    if len(body) > MAX_BODY:
        raise LocalProtocolError("frame too large")
    return header(kind, len(body)) + body


def split_header(word: int, max_body: int = MAX_BODY) -> tuple[int, int]:
    """(kind, body length) of a frame header read as a big-endian u32; a claimed length
    is refused before anything is buffered for it."""
    kind, length = word >> 24, word & 0xFFFFFF
    if length > max_body:
        raise RemoteProtocolError(f"the peer sent a {length}-byte record (limit {max_body})")
    return kind, length


class FrameParser:
    """Bytes in, (kind, body) out; bounds the body length a peer may claim."""

    __slots__ = ("_buf", "_pos", "max_body")

    def __init__(self, max_body: int = MAX_BODY) -> None:
        self._buf = bytearray()
        self._pos = 0  # start of the first unparsed frame
        self.max_body = max_body

    def feed(self, data: bytes) -> None:
        """More bytes; every body view handed out before must have been released."""
        if self._pos:
            del self._buf[: self._pos]  # CPython trims a bytearray's front in O(1)
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next(self) -> tuple[int, bytes, memoryview] | None:
        """The next whole frame as (kind, header, body), or None if more bytes are needed.

        The body is a view into the buffer, not a copy (the receive hot path decrypts
        straight from it): release it before the next feed().
        """
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER_SIZE:
            return None
        (word,) = HEADER.unpack_from(buf, pos)
        kind, length = split_header(word, self.max_body)
        end = pos + HEADER_SIZE + length
        if len(buf) < end:
            return None
        head = bytes(buf[pos : pos + HEADER_SIZE])
        with memoryview(buf) as view:
            body = view[pos + HEADER_SIZE : end]
        self._pos = end
        return kind, head, body


def _nonce(counter: int) -> bytes:
    # RFC 8439 nonces are 96 bits; each key is used in one direction of one session,
    # so the record counter alone never repeats a nonce under a key
    return counter.to_bytes(12, "little")


class Sealer:
    """Encrypts our records in order."""

    __slots__ = ("_aead", "_counter", "closed")

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._counter = 0
        self.closed = False

    def seal(self, kind: Kind, plaintext: bytes) -> bytes:
        if self.closed:
            raise LocalProtocolError("record after the final record")
        if kind in CLEAR_KINDS or len(plaintext) + TAG_SIZE > MAX_BODY:
            raise LocalProtocolError(f"cannot seal a {kind.name} record of {len(plaintext)} bytes")
        head = header(kind, len(plaintext) + TAG_SIZE)
        body = self._aead.encrypt(_nonce(self._counter), plaintext, head)
        self._count(kind)
        return head + body

    def seal_into(self, kind: Kind, plaintext: bytes | memoryview, out: memoryview) -> int:
        """Seal straight into `out` (header, then ciphertext): the sender's hot path, with
        no copy of the record after it is encrypted. Returns the bytes written."""
        if self.closed:
            raise LocalProtocolError("record after the final record")
        size = len(plaintext) + TAG_SIZE
        if kind in CLEAR_KINDS or size > MAX_BODY:
            raise LocalProtocolError(f"cannot seal a {kind.name} record of {len(plaintext)} bytes")
        head = header(kind, size)
        out[:HEADER_SIZE] = head
        self._aead.encrypt_into(
            _nonce(self._counter), plaintext, head, out[HEADER_SIZE : HEADER_SIZE + size]
        )
        self._count(kind)
        return HEADER_SIZE + size

    def _count(self, kind: Kind) -> None:
        self._counter += 1
        if kind in FINAL_KINDS:
            self.closed = True


class Opener:
    """Decrypts the peer's records; any tampering, loss or reordering fails here."""

    __slots__ = ("_aead", "_counter", "closed")

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._counter = 0
        self.closed = False

    def open(self, kind: int, head: bytes, body: bytes | memoryview) -> tuple[Kind, bytes]:
        known = self._check(kind, body)
        try:
            plaintext = self._aead.decrypt(_nonce(self._counter), body, head)
        except InvalidTag:
            raise _tampered() from None
        self._count(known)
        return known, plaintext

    def open_into(self, kind: int, head: bytes, body: memoryview, out: memoryview) -> Kind:
        """Decrypt straight into `out`, which holds exactly the plaintext's length: the
        receiver's hot path (no allocation, and OpenSSL runs without the GIL)."""
        known = self._check(kind, body)
        try:
            self._aead.decrypt_into(_nonce(self._counter), body, head, out)
        except InvalidTag:
            raise _tampered() from None
        self._count(known)
        return known

    def _check(self, kind: int, body: bytes | memoryview) -> Kind:
        if self.closed:
            raise RemoteProtocolError("the peer sent data after its final record")
        try:
            known = Kind(kind)
        except ValueError:
            raise RemoteProtocolError(f"the peer sent an unknown record type {kind}") from None
        if known in CLEAR_KINDS:
            raise RemoteProtocolError("the peer sent a handshake frame after the handshake")
        if len(body) < TAG_SIZE:
            raise RemoteProtocolError("a record failed authentication: it is shorter than a tag")
        return known

    def _count(self, kind: Kind) -> None:
        self._counter += 1
        if kind in FINAL_KINDS:
            self.closed = True


def _tampered() -> RemoteProtocolError:
    return RemoteProtocolError(
        "a record failed authentication: the data was altered, reordered or lost"
    )


def inflate(packed: bytes) -> bytes:
    """One DATA_Z record: a whole zlib stream of its own (as send_data makes it).

    The output is bounded: a zip bomb stops at one record's worth.
    """
    inflate = zlib.decompressobj()
    try:
        data = inflate.decompress(packed, RECORD_SIZE)
    except zlib.error:
        raise RemoteProtocolError("a compressed record is corrupt") from None
    if inflate.unconsumed_tail or (not inflate.eof and len(data) >= RECORD_SIZE):
        raise RemoteProtocolError("a compressed record expands beyond its limit")
    if not inflate.eof or inflate.unused_data:
        raise RemoteProtocolError("a compressed record is truncated or has trailing data")
    return data
