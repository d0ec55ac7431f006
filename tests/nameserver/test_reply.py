"""Upstream replies read on bytes: what is kept, what is refused."""

from __future__ import annotations

import contextlib
import ipaddress
import struct

import dns.message
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from retreatkit.nameserver import reply as replies
from retreatkit.nameserver import wire
from retreatkit.nameserver.errors import BadReply
from retreatkit.nameserver.policy import is_private

PRIVATE = [ipaddress.ip_network(n) for n in ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10",
           "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16")]  # fmt: skip


@given(st.binary(min_size=4, max_size=4))
def test_private_v4_matches_the_networks(address: bytes) -> None:
    ip = ipaddress.IPv4Address(address)
    assert replies.private_v4(address) == any(ip in net for net in PRIVATE)


@pytest.mark.parametrize(
    ("address", "private"),
    [("::1", True), ("::", True), ("fd00::1", True), ("fe80::1", True), ("febf::1", True),
     ("fec0::1", False), ("2001:db8::1", False), ("::ffff:10.0.0.1", True),
     ("::ffff:8.8.8.8", False), ("::ffff:192.168.1.1", True), ("64:ff9b::c0a8:101", True),
     ("64:ff9b::808:808", False), ("2002:c0a8:101::1", True), ("2002:808:808::1", False),
     ("::c0a8:101", True), ("::808:808", False)],
)  # fmt: skip
def test_private_v6(address: str, private: bool) -> None:
    assert replies.private_v6(ipaddress.IPv6Address(address).packed) == private
    assert is_private(address) == private  # what an answer rebuilt with dnspython drops


@given(st.binary(min_size=16, max_size=16))
def test_the_byte_path_and_the_rebuild_drop_the_same_addresses(address: bytes) -> None:
    assert replies.private_v6(address) == is_private(str(ipaddress.IPv6Address(address)))


def question(name: str = "www.example.test") -> tuple[dns.message.Message, bytes]:
    query = dns.message.make_query(name, "A")
    parsed = wire.parse(query.to_wire())
    assert parsed is not None
    return query, parsed.key[:-1]


def test_a_reply_to_another_question_or_not_a_reply_is_refused() -> None:
    query, asked = question()
    other, _ = question("other.example.test")
    with pytest.raises(BadReply, match="another question"):
        replies.digest(dns.message.make_response(other).to_wire(), asked)
    with pytest.raises(BadReply, match="not a reply"):
        replies.digest(query.to_wire(), asked)
    answer = dns.message.make_response(query)
    answer.answer.append(dns.rrset.from_text("www.example.test.", 60, "IN", "A", "192.0.2.1"))
    with pytest.raises(BadReply, match="trailing bytes"):
        replies.digest(answer.to_wire() + b"x", asked)
    with pytest.raises(BadReply, match="runs past the end"):
        replies.digest(answer.to_wire()[:-3], asked)


def test_records_after_the_opt_go_to_dnspython() -> None:
    query, asked = question()
    answer = dns.message.make_response(query)
    answer.use_edns(0)
    data = bytearray(answer.to_wire())
    extra = b"\x00" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes(4)  # an A record at the root
    data[11] += 1  # ARCOUNT: the OPT, then one more record after it
    with pytest.raises(replies.Unusual):
        replies.digest(bytes(data) + extra, asked)


@given(st.binary(max_size=300))
def test_digest_refuses_junk_cleanly(junk: bytes) -> None:
    _, asked = question()
    prefix = bytes.fromhex("12348180000100000000") + b"\x00\x00" + asked
    for data in (junk, prefix + junk):
        with contextlib.suppress(BadReply, replies.Unusual):
            replies.digest(data, asked)
