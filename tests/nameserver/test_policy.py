from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retreatkit.nameserver.policy import Blocklist, Policy, parse_line, parse_record


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("0.0.0.0 ads.example.com", "ads.example.com"),
        ("127.0.0.1  Tracker.Example.COM  # trailing", "tracker.example.com"),
        ("::1 localhost", None),
        ("ads.example.com", "ads.example.com"),
        ("||ads.example.com^", "ads.example.com"),
        ("||ads.example.com^$important", "ads.example.com"),
        ("||ads.example.com^$third-party", False),
        ("||ads.example.com/path^", False),
        ("example.com##.banner", False),
        ("@@||good.example.com^", False),
        ("# comment", None),
        ("! adblock comment", None),
        ("[Adblock Plus 2.0]", None),
        ("", None),
        ("192.168.1.1 router.lan", False),
        ("not a domain!", False),
        ("-bad.example.com", False),
        ("0.0.0.0 bad-.example.com", False),
        ("0.0.0.0 " + "a" * 64 + ".com", False),
        ("0.0.0.0 " + "a" * 63 + ".com", "a" * 63 + ".com"),
        ("0.0.0.0 xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("0.0.0.0 a.b..c", False),
    ],
)
def test_parse_line(line: str, expected: str | bool | None) -> None:
    assert parse_line(line) == expected


@given(st.text(max_size=200))
def test_parse_line_never_raises(line: str) -> None:
    parse_line(line)


def test_block_subdomains_allowlist_wins_local_first() -> None:
    blocklist = Blocklist()
    blocklist.add_lines("list", ["ads.example.com", "tracker.test", "junk line here"])
    blocklist.seal()
    policy = Policy([parse_record("ads.example.com=192.0.2.9")], ["ok.tracker.test"], blocklist)
    assert policy.blocked("ads.example.com") == "ads.example.com"
    assert policy.blocked("a.b.ads.example.com") == "ads.example.com"
    assert policy.blocked("example.com") is None
    assert policy.blocked("ok.tracker.test") is None
    assert policy.blocked("sub.ok.tracker.test") is None
    assert policy.local("ads.example.com") is not None  # the resolver asks local first
    assert blocklist.bad_lines == 1 and blocklist.sources == {"list": 2}


@pytest.mark.parametrize(
    ("text", "rtype", "value"),
    [
        ("laptop.retreat.lan=10.0.0.7", "A", "10.0.0.7"),
        ("v6.retreat.lan=fd00::1", "AAAA", "fd00::1"),
        ("docs.retreat.lan=cname:laptop.retreat.lan", "CNAME", "laptop.retreat.lan"),
    ],
)
def test_parse_record(text: str, rtype: str, value: str) -> None:
    record = parse_record(text)
    assert (record.rtype, record.value) == (rtype, value)


@pytest.mark.parametrize("text", ["nope", "x=notanip", "=1.2.3.4", "a..b=1.2.3.4"])
def test_parse_record_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected|bad"):
        parse_record(text)


def test_ptr_for_local_records() -> None:
    policy = Policy([parse_record("laptop.retreat.lan=10.0.0.7")])
    assert policy.reverse["7.0.0.10.in-addr.arpa"] == "laptop.retreat.lan"


@given(
    st.one_of(
        st.text(max_size=60),
        st.builds(lambda n: f"0.0.0.0 {n}", st.text(max_size=40)),
        st.builds(
            lambda n: f"0.0.0.0 {n}", st.from_regex(r"[A-Za-z0-9*._-]{1,30}\.?", fullmatch=True)
        ),
    )
)
def test_the_inline_fast_path_agrees_with_parse_line(line: str) -> None:
    blocklist = Blocklist()
    blocklist.add_lines("x", [line])
    blocklist.seal()
    found = parse_line(line)
    if isinstance(found, str):
        assert found in blocklist and blocklist.sources["x"] == 1
    else:
        assert len(blocklist) == 0 and blocklist.bad_lines == (found is False)
