from __future__ import annotations

import dns.flags
import dns.message
import dns.rrset
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
    out = dns.message.from_wire(template.render(parsed, data, 42))
    assert out.id == 999
    assert not out.flags & dns.flags.RD
    assert out.question[0].name.to_text() == "WWW.example.TEST."
    assert out.answer[0].ttl == 42


def test_ttl_with_top_bit_counts_as_zero() -> None:
    q = dns.message.from_wire(query())
    response = dns.message.make_response(q)
    response.answer.append(dns.rrset.from_text("www.example.test.", 300, "IN", "A", "192.0.2.1"))
    encoded = bytearray(response.to_wire())
    offsets, _, _ = wire.ttl_offsets(bytes(encoded))
    encoded[offsets[0]] = 0x80  # RFC 2181 section 8
    assert wire.ttl_offsets(bytes(encoded))[2] == 0
