from __future__ import annotations

import contextlib

import dns.flags
import dns.message
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from retreatkit.nameserver import wire


def query(name: str = "www.example.test", rdtype: str = "A", edns: bool = True) -> bytes:
    if edns:
        q = dns.message.make_query(name, rdtype, use_edns=0, payload=4096)
    else:
        q = dns.message.make_query(name, rdtype, use_edns=False)
    q.id = 4660
    return q.to_wire()


def test_key_ignores_case_and_id_but_not_type_or_edns() -> None:
    a = wire.parse(query("www.example.test"))
    b = wire.parse(query("WWW.Example.TEST"))
    assert a is not None and b is not None
    assert a.key == b.key
    assert a.udp_size == wire.UDP_PAYLOAD  # a client's 4096 is capped at 1232
    aaaa = wire.parse(query(rdtype="AAAA"))
    https = wire.parse(query(rdtype="HTTPS"))  # type 65 = 0x41, an "A" in ASCII
    plain = wire.parse(query(edns=False))
    assert aaaa is not None and https is not None and plain is not None
    assert len({a.key, aaaa.key, https.key, plain.key}) == 4
    assert plain.udp_size == 512


def test_a_reply_repeats_the_question_in_any_case_but_its_type_exactly() -> None:
    for rdtype in ("A", "HTTPS", "TYPE90"):  # 65 and 90: "A" and "Z" in ASCII
        asked = wire.parse(query(rdtype=rdtype))
        assert asked is not None
        question = wire.upstream_key(asked.key)[:-1]
        assert wire.repeats(query("WwW.example.TEST", rdtype), question)
        assert not wire.repeats(query("www.example.tesT", "TXT"), question)
        assert not wire.repeats(query("www.example.tes", rdtype), question)
    https = wire.parse(query(rdtype="HTTPS"))
    assert https is not None  # type 97 is not type 65, in any case
    assert not wire.repeats(query(rdtype="TYPE97"), https.key[:-1])


def test_not_plain_queries_go_to_the_slow_path() -> None:
    response = dns.message.make_response(dns.message.from_wire(query()))
    assert wire.parse(response.to_wire()) is None
    update = dns.message.from_wire(query())
    update.set_opcode(5)
    assert wire.parse(update.to_wire()) is None
    assert wire.parse(query() + b"x") is None


@given(st.binary(max_size=600))
def test_parse_never_raises(data: bytes) -> None:
    wire.parse(data)


def test_template_patches_id_case_rd_and_ttl() -> None:
    q = dns.message.from_wire(query())
    response = dns.message.make_response(q)
    response.answer.append(dns.rrset.from_text("www.example.test.", 300, "IN", "A", "192.0.2.1"))
    encoded = response.to_wire()
    offsets, question_end, lowest = wire.ttl_offsets(encoded)
    assert lowest == 300 and len(offsets) == 1
    template = wire.Template(bytearray(encoded), offsets, question_end)
    asker = dns.message.make_query("WWW.example.TEST", "A", use_edns=0, payload=1232)
    asker.id = 999
    asker.flags &= ~dns.flags.RD
    data = asker.to_wire()
    parsed = wire.parse(data)
    assert parsed is not None
    out = dns.message.from_wire(template.render(parsed, data, 42))  # 42 s old
    assert out.id == 999
    assert not out.flags & dns.flags.RD
    assert out.question[0].name.to_text() == "WWW.example.TEST."
    assert out.answer[0].ttl == 258
    stale = dns.message.from_wire(template.render(parsed, data, wire.STALE))
    assert stale.answer[0].ttl == 30  # RFC 8767
    assert dns.message.from_wire(template.render(parsed, data, 400)).answer[0].ttl == 0


def test_ttl_with_top_bit_counts_as_zero() -> None:
    q = dns.message.from_wire(query())
    response = dns.message.make_response(q)
    response.answer.append(dns.rrset.from_text("www.example.test.", 300, "IN", "A", "192.0.2.1"))
    encoded = bytearray(response.to_wire())
    offsets, _, _ = wire.ttl_offsets(bytes(encoded))
    encoded[offsets[0]] = 0x80  # RFC 2181 section 8
    assert wire.ttl_offsets(bytes(encoded))[2] == 0


def test_key_bits_say_what_changes_the_upstream_question() -> None:
    plain = wire.parse(query(edns=False))
    asked = dns.message.make_query("www.example.test", "A", want_dnssec=True)
    asked.flags |= dns.flags.CD | dns.flags.AD
    dnssec = wire.parse(asked.to_wire())
    assert plain is not None and dnssec is not None
    assert plain.key[-1] == 0
    assert dnssec.key[-1] == wire.KEY_DO | wire.KEY_CD | wire.KEY_EDNS | wire.KEY_AD
    assert wire.upstream_key(dnssec.key)[-1] == wire.KEY_DO | wire.KEY_CD
    sent = dns.message.from_wire(wire.upstream_query(77, dnssec.key))
    assert sent.id == 77 and sent.flags & dns.flags.CD and sent.ednsflags & dns.flags.DO
    assert sent.payload == wire.UDP_PAYLOAD and sent.flags & dns.flags.RD


def test_truncated_keeps_the_opt_record() -> None:
    asked = dns.message.make_query("big.example.test", "TXT", want_dnssec=True)
    answer = dns.message.make_response(asked)
    answer.answer.append(dns.rrset.from_text("big.example.test.", 60, "IN", "TXT", '"x"'))
    cut = dns.message.from_wire(wire.truncated(answer.to_wire(), True, True))
    assert cut.flags & dns.flags.TC and not cut.answer
    assert cut.edns == 0 and cut.ednsflags & dns.flags.DO and cut.payload == wire.UDP_PAYLOAD
    bare = dns.message.from_wire(wire.truncated(answer.to_wire(), False, False))
    assert bare.edns == -1


def test_read_name_follows_pointers_back_only() -> None:
    data = b"\x03abc\x00" + b"\x01x\xc0\x00"
    assert wire.read_name(data, 5) == "x.abc"
    loop = b"\x01a\xc0\x00"  # points at itself
    with pytest.raises(ValueError, match="backwards"):
        wire.read_name(loop + b"\xc0\x04", 4)
    with pytest.raises(ValueError, match="backwards"):
        wire.read_name(b"\xc0\x00", 0)


@given(st.binary(max_size=300), st.integers(0, 299))
def test_read_name_never_loops(data: bytes, pos: int) -> None:
    with contextlib.suppress(ValueError):
        wire.read_name(data, pos)
