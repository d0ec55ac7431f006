"""SPAKE2 key agreement, key confirmation and per-direction keys (no I/O)."""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass

from spake2 import SPAKE2_A, SPAKE2_B

from retreatkit.transfer.errors import NoKeyExchange, PakeFailed

# Fixed identities: python-spake2 defaults them to empty, and A/B must differ so a
# message cannot be reflected back at its author.
ID_SENDER = b"retreatkit/bob/1 sender"
ID_RECEIVER = b"retreatkit/bob/1 receiver"
MESSAGE_SIZE = 33  # one side byte + one Ed25519 point
_P = 2**255 - 19  # the field prime of Ed25519
CONFIRM_SIZE = 32

Entropy = Callable[[int], bytes]


class Side(enum.Enum):
    SENDER = "sender"
    RECEIVER = "receiver"

    @property
    def tag(self) -> bytes:
        return b"A" if self is Side.SENDER else b"B"

    @property
    def other(self) -> Side:
        return Side.RECEIVER if self is Side.SENDER else Side.SENDER


def hkdf(key: bytes, info: bytes, length: int = 32, salt: bytes = b"") -> bytes:
    """HKDF-SHA256 (RFC 5869)."""
    prk = hmac.digest(salt or bytes(32), key, "sha256")
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), "sha256")
        out += block
        counter += 1
    return out[:length]


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """What both sides hold once the PAKE is done. Never logged, never in /status."""

    send: bytes
    receive: bytes
    my_confirm: bytes
    their_confirm: bytes
    verifier: str  # a short public fingerprint both sides may compare by eye
    my_direct: bytes  # proves a direct connection is ours (hints.mac)
    their_direct: bytes

    def __repr__(self) -> str:
        return "SessionKeys(<secret>)"


class Pake:
    """One side of the key exchange: start() gives our message, finish() the keys."""

    def __init__(self, side: Side, password: bytes, entropy: Entropy = os.urandom) -> None:
        cls = SPAKE2_A if side is Side.SENDER else SPAKE2_B
        self.side = side
        self._spake = cls(password, idA=ID_SENDER, idB=ID_RECEIVER, entropy_f=entropy)
        self._message: bytes | None = None

    def start(self) -> bytes:
        self._message = self._spake.start()
        return self._message

    def finish(self, peer_message: bytes) -> SessionKeys:
        """Our keys from the peer's message. One that is not well formed is no guess at
        the passphrase (NoKeyExchange): no keys, so no confirmation of ours goes out."""
        # python-spake2 accepts trailing bytes and checks the side byte with an
        # assert that `python -O` removes: check both here.
        malformed = "the other side sent a malformed key exchange message"
        if (
            len(peer_message) != MESSAGE_SIZE
            or peer_message[:1] != self.side.other.tag
            or not _plausible_point(peer_message[1:])
        ):
            raise NoKeyExchange(malformed)
        try:
            key: bytes = self._spake.finish(peer_message)
        except Exception as exc:  # it raises a zoo of types on hostile points
            raise NoKeyExchange(malformed) from exc
        return derive(key, self.side)


def _plausible_point(encoded: bytes) -> bool:
    """Not a non-canonical encoding (y >= p), nor a point with x = 0: the identity and
    the point of order 2. python-spake2 rejects the canonical identity only, so y = p + 1
    or a set sign bit on x = 0 slipped the identity past it."""
    y = int.from_bytes(encoded, "little") & ((1 << 255) - 1)
    return y < _P and y not in (1, _P - 1)


def derive(key: bytes, side: Side) -> SessionKeys:
    s2r = hkdf(key, b"bob/1 data sender->receiver")
    r2s = hkdf(key, b"bob/1 data receiver->sender")
    c_s = hkdf(key, b"bob/1 confirm sender")
    c_r = hkdf(key, b"bob/1 confirm receiver")
    verifier = hashlib.sha256(hkdf(key, b"bob/1 verifier")).hexdigest()[:16]
    d_s = hkdf(key, b"bob/1 direct sender")
    d_r = hkdf(key, b"bob/1 direct receiver")
    if side is Side.SENDER:
        return SessionKeys(s2r, r2s, c_s, c_r, verifier, d_s, d_r)
    return SessionKeys(r2s, s2r, c_r, c_s, verifier, d_r, d_s)


def check_confirmation(keys: SessionKeys, received: bytes) -> None:
    if not hmac.compare_digest(keys.their_confirm, received):
        raise PakeFailed("wrong passphrase: the other side used a different one")
