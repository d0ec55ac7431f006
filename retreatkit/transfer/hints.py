"""Direct connections: the hints each side sends, which of the peer's it will try, and the
proof a direct socket gives that it carries the session (no I/O).

A HINTS record (encrypted, so never seen by the relay: croc sent local addresses in clear,
CVE-2023-43618) holds u8 count (at most 4), then per hint u8 family (4 or 6), the address
(4 or 16 bytes) and u16 port, big-endian: IP literals only, no names to resolve.

A direct TCP connection proves itself before it carries a record. Each side sends at once
HELLO = `bob/1 direct\\n` + its role (`S` or `R`) + a fresh 16-byte nonce, reads the peer's,
then sends HMAC-SHA256(its direct key, `bob/1 direct` + sender nonce + receiver nonce) and
checks the peer's in constant time. Fresh nonces on both sides stop replay; keys and role
bytes that differ by direction stop a reflected hello or MAC.
"""

from __future__ import annotations

import hmac
import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from retreatkit.transfer.errors import RemoteProtocolError
from retreatkit.transfer.pake import Side

MAX_HINTS = 4
HELLO_PREFIX = b"bob/1 direct\n"
NONCE_SIZE = 16
HELLO_SIZE = len(HELLO_PREFIX) + 1 + NONCE_SIZE
MAC_SIZE = 32
_PORT = struct.Struct(">H")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Hint:
    address: Address
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}"


def encode(hints: Sequence[Hint]) -> bytes:
    out = bytearray([len(hints[:MAX_HINTS])])
    for hint in hints[:MAX_HINTS]:
        out.append(hint.address.version)
        out += hint.address.packed + _PORT.pack(hint.port)
    return bytes(out)


def decode(body: bytes) -> tuple[Hint, ...]:
    """The peer's hints; anything malformed is the peer's fault."""
    if not body or body[0] > MAX_HINTS:
        raise RemoteProtocolError(f"the peer sent more than {MAX_HINTS} hints, or none parsed")
    hints, pos = [], 1
    for _ in range(body[0]):
        family = body[pos] if pos < len(body) else 0
        size = {4: 4, 6: 16}.get(family)
        if size is None or len(body) < pos + 1 + size + 2:
            raise RemoteProtocolError("the peer sent a malformed hint")
        address = ipaddress.ip_address(body[pos + 1 : pos + 1 + size])
        (port,) = _PORT.unpack_from(body, pos + 1 + size)
        if port == 0:
            raise RemoteProtocolError("the peer sent a hint with port 0")
        hints.append(Hint(address, port))
        pos += 1 + size + 2
    if pos != len(body):
        raise RemoteProtocolError("the peer's hints have trailing bytes")
    return tuple(hints)


def paired_address(text: str) -> Address | None:
    """The peer's address in a relay's `paired HOST:PORT` line: where the relay saw the
    peer come from (`viable` trusts it for that address alone). An IPv4 peer seen by a
    dual-stack relay (`::ffff:a.b.c.d`) is that IPv4 address; a host that is not an IP
    literal, or no port, is no address at all."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit():
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def viable(
    hints: Iterable[Hint],
    networks: Sequence[Network],
    peer_seen: Address | None,
    relay_local: Address | None,
) -> list[Hint]:
    """The peer's hints this side will try: never an address of the peer's choosing
    beyond these bounds, so a peer cannot make us connect across the LAN or the
    internet. Kept: an address on a network one of our interfaces is on (link-local
    only if we hold one there), or the very address the relay saw the peer connect
    from (`peer_seen`, from its `paired` line); loopback only when the relay is on this
    machine (`relay_local`, our end of the relay connection, is loopback) and saw the
    peer here too (both sides on one computer). Never multicast, broadcast, unspecified,
    reserved or IPv4-mapped (a mapped hint would reach IPv4 past these checks).

    A relay that lies in `paired` names one address, and only a peer that holds the
    passphrase can hint it (hints travel encrypted): a lying relay alone adds nothing, and
    it cannot open our loopback, which needs our own end of the connection on it."""
    # both sides on one computer: loopback is where the relay saw the peer
    here = bool(peer_seen and peer_seen.is_loopback and relay_local and relay_local.is_loopback)
    out: list[Hint] = []
    for hint in hints:
        a = hint.address
        if not ordinary(a, networks, loopback=here):
            continue
        ok = (
            a.is_loopback
            or a == peer_seen
            or any(a in net for net in networks if not net.is_loopback)
        )
        if ok and hint not in out:
            out.append(hint)
        if len(out) == MAX_HINTS:
            break
    return out


def ordinary(address: Address, networks: Sequence[Network], loopback: bool = False) -> bool:
    """Whether another machine's word (a peer's hint, a LAN announcement) may lead us to
    `address` at all: never multicast, broadcast, unspecified, reserved or IPv4-mapped (a
    mapped address would reach IPv4 past these checks), never IPv6 link-local (it needs
    a scope nobody else can name for us), and loopback, this very machine's services,
    only with `loopback`, where the caller knows the word came from this machine."""
    a = address
    if a.is_multicast or a.is_unspecified or a.is_reserved or _broadcast(a, networks):
        return False
    if a.version == 6 and (a.ipv4_mapped is not None or a.is_link_local):
        return False
    return loopback or not a.is_loopback


def _broadcast(address: Address, networks: Sequence[Network]) -> bool:
    if address.version != 4:
        return False
    if address == ipaddress.IPv4Address("255.255.255.255"):
        return True
    return any(
        address == net.broadcast_address
        for net in networks
        if net.version == 4 and net.prefixlen < 31
    )


def hello(side: Side, nonce: bytes) -> bytes:
    if len(nonce) != NONCE_SIZE:
        raise ValueError("a nonce is 16 bytes")
    return HELLO_PREFIX + (b"S" if side is Side.SENDER else b"R") + nonce


def their_nonce(data: bytes, side: Side) -> bytes:
    """The nonce in the peer's hello; the role byte must be the other side's."""
    expect = b"R" if side is Side.SENDER else b"S"
    prefix = len(HELLO_PREFIX)
    if (
        len(data) != HELLO_SIZE
        or data[:prefix] != HELLO_PREFIX
        or data[prefix : prefix + 1] != expect
    ):
        raise RemoteProtocolError("the direct connection did not say bob/1 direct")
    return data[prefix + 1 :]


def mac(key: bytes, sender_nonce: bytes, receiver_nonce: bytes) -> bytes:
    return hmac.digest(key, b"bob/1 direct" + sender_nonce + receiver_nonce, "sha256")


def check_mac(key: bytes, sender_nonce: bytes, receiver_nonce: bytes, got: bytes) -> None:
    if not hmac.compare_digest(mac(key, sender_nonce, receiver_nonce), got):
        raise RemoteProtocolError("the direct connection did not prove the session key")
