"""Resuming an offer: what the receiver says it holds, the sender's block hashes of the
same bytes, and where the data starts again (no I/O).

The offer's files, in order, form one stream. A receiver that got part of it in an
earlier, interrupted run holds a prefix of that stream: files 0 to k-1 whole, and the
first L bytes of file k in a `.part`. It says so in its ANSWER (`Claim(k, L)`). The
sender hashes the same prefix of its own files in blocks (BLAKE3, 16 MiB, larger past
2047 blocks so that one PREFIX record holds them) and sends the hashes; the receiver
hashes what it holds, finds the first block that differs and answers FROM: where the
data starts, `(k, o)` with o <= L inside the part, or `(0, 0)` when a whole file it
holds differs (it receives everything again, under new names). Every record is still
authenticated by the AEAD; the hashes only choose what need not travel again.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from retreatkit.transfer.errors import LocalProtocolError, RemoteProtocolError
from retreatkit.transfer.offer import Entry

BLOCK = 16 * 1024 * 1024
MAX_HASHES = 2047  # 32 bytes each: one PREFIX record
HASH_SIZE = 32
_CLAIM = struct.Struct(">IQ")  # file index, bytes held of it
YES = b"yes"


@dataclass(frozen=True, slots=True)
class Claim:
    """What the receiver holds: `index` whole files, then `length` bytes of the next."""

    index: int = 0
    length: int = 0

    def encode(self) -> bytes:
        return _CLAIM.pack(self.index, self.length)

    @staticmethod
    def decode(body: bytes) -> Claim:
        if len(body) != _CLAIM.size:
            raise RemoteProtocolError("the receiver's claim is malformed")
        return Claim(*_CLAIM.unpack(body))


NOTHING = Claim(0, 0)


def starts(files: Sequence[Entry]) -> list[int]:
    """Each file's offset in the offer's stream, as far as sizes are known (a stream of
    unknown length ends the list: nothing after it can be resumed)."""
    out, at = [], 0
    for entry in files:
        out.append(at)
        if entry.size is None:
            break
        at += entry.size
    return out


def prefix(files: Sequence[Entry], claim: Claim) -> int:
    """Bytes of the stream the claim covers; a claim no receiver could hold is an error."""
    offsets = starts(files)
    k, length = claim.index, claim.length
    if k == len(files) and len(offsets) == len(files):
        if length:
            raise RemoteProtocolError("the receiver claims bytes beyond the last file")
        last = files[-1].size if files else 0
        return (offsets[-1] + (last or 0)) if files else 0
    if k >= len(offsets):
        raise RemoteProtocolError("the receiver claims a file the offer does not have")
    size = files[k].size
    if size is None:
        if length:
            raise RemoteProtocolError("the receiver claims part of a stream")
    elif length > size:
        raise RemoteProtocolError("the receiver claims more of a file than it holds")
    return offsets[k] + length


def block_size(total: int) -> int:
    """16 MiB blocks, or larger ones (whole MiB) so that one record holds every hash."""
    if total <= BLOCK * MAX_HASHES:
        return BLOCK
    mib = 1 << 20
    return -(-total // MAX_HASHES // mib) * mib + mib


def block_count(total: int) -> int:
    return -(-total // block_size(total)) if total else 0


class Hasher:
    """Block hashes of a byte stream fed in pieces of any size."""

    def __init__(self, total: int) -> None:
        import blake3  # only a resume hashes: a transfer that starts afresh never loads it

        self._blake3 = blake3.blake3
        self.total = total
        self.block = block_size(total)
        self.hashes: list[bytes] = []
        self._current = self._blake3()
        self._filled = 0
        self._seen = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if self._seen + len(view) > self.total:
            raise LocalProtocolError("more bytes hashed than the prefix holds")
        self._seen += len(view)
        while view:
            take = min(len(view), self.block - self._filled)
            self._current.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == self.block:
                self._close()

    def digests(self) -> list[bytes]:
        if self._seen != self.total:
            raise LocalProtocolError(f"{self._seen} bytes hashed of a {self.total}-byte prefix")
        if self._filled:
            self._close()
        return self.hashes

    def _close(self) -> None:
        self.hashes.append(self._current.digest())
        self._current = self._blake3()
        self._filled = 0


def encode_hashes(hashes: Sequence[bytes]) -> bytes:
    return b"".join(hashes)


def decode_hashes(body: bytes, total: int) -> list[bytes]:
    count = block_count(total)
    if len(body) != count * HASH_SIZE:
        raise RemoteProtocolError(
            f"the sender sent {len(body)} bytes of hashes, not {count} hashes"
        )
    return [body[i : i + HASH_SIZE] for i in range(0, len(body), HASH_SIZE)]


def start(
    files: Sequence[Entry], claim: Claim, theirs: Sequence[bytes], ours: Sequence[bytes]
) -> Claim:
    """Where the data starts again: the end of the claim if every block matches, else the
    first differing block's start within the part, else (0, 0): all over again."""
    total = prefix(files, claim)
    block = block_size(total)
    first = next((i for i, (a, b) in enumerate(zip(theirs, ours, strict=True)) if a != b), None)
    if first is None:
        return claim
    at = first * block
    offset = at - starts(files)[claim.index] if claim.index < len(files) else -1
    if offset < 0:
        return NOTHING
    return Claim(claim.index, offset)


def check_start(claim: Claim, got: Claim) -> None:
    """The receiver may start at its claim, anywhere before it in the same file, or over."""
    if got != NOTHING and not (got.index == claim.index and got.length <= claim.length):
        raise RemoteProtocolError("the receiver asked to start where it claimed nothing")
