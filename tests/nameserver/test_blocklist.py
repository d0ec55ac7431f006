from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retreatkit.nameserver.blocklist import (
    BLOCK,
    EXCEPT,
    SUBDOMAINS,
    Blocklist,
    key,
    not_a_list,
    parse_line,
)
from retreatkit.nameserver.policy import Policy


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("0.0.0.0 ads.example.com", ((BLOCK, "ads.example.com"),)),
        ("127.0.0.1  Tracker.Example.COM  # trailing", ((BLOCK, "tracker.example.com"),)),
        ("::1 localhost", None),
        ("0.0.0.0 LOCALHOST", None),  # a hosts file's own names, in any case
        ("ads.example.com", ((BLOCK, "ads.example.com"),)),
        ("||ads.example.com^", ((BLOCK, "ads.example.com"),)),
        ("||ads.example.com^$important", ((BLOCK, "ads.example.com"),)),
        # rules only a browser can apply: nothing for DNS, and not junk either
        ("||ads.example.com^$third-party", None),
        ("||ads.example.com/path^", None),
        ("|https://ads.example.com/banner", None),
        ("@@||ads.example.com^$script", None),
        ("example.com##.banner", None),
        ("example.com,example.org#@#.banner", None),
        ("example.com#?#div:has(> a)", None),
        ("example.com#$#abort-on-property-read ads", None),
        ("example.com#%#window.ads = 0", None),
        ("0.0.0.0 ads.example.com ## a hosts comment", ((BLOCK, "ads.example.com"),)),
        ("# comment", None),
        ("! adblock comment", None),
        ("[Adblock Plus 2.0]", None),
        ("", None),
        ("192.168.1.1 router.lan", False),
        ("not a domain!", False),
        ("-bad.example.com", False),
        ("0.0.0.0 bad-.example.com", False),
        ("0.0.0.0 " + "a" * 64 + ".com", False),
        ("0.0.0.0 " + "a" * 63 + ".com", ((BLOCK, "a" * 63 + ".com"),)),
        ("0.0.0.0 xn--bcher-kva.example", ((BLOCK, "xn--bcher-kva.example"),)),
        ("0.0.0.0 a.b..c", False),
        # item 7: what list authors mean
        ("0.0.0.0 a.example b.example", ((BLOCK, "a.example"), (BLOCK, "b.example"))),
        ("0.0.0.0 localhost a.example", ((BLOCK, "a.example"),)),
        ("\ufeff0.0.0.0 first.example", ((BLOCK, "first.example"),)),
        ("\ufeff# a header", None),
        ("@@||good.example.com^", ((EXCEPT, "good.example.com"),)),
        ("@@||good.example.com^$important", ((EXCEPT, "good.example.com"),)),
        ("||*.ads.example^", ((SUBDOMAINS, "ads.example"),)),
        ("@@||*.good.example^", False),
        ("||ad*.example^", False),
    ],
)
def test_parse_line(line: str, expected: object) -> None:
    assert parse_line(line) == expected


@given(st.text(max_size=200))
def test_parse_line_never_raises(line: str) -> None:
    parse_line(line)


def sealed(*lines: str) -> Blocklist:
    blocklist = Blocklist()
    blocklist.add_lines("list", lines)
    return blocklist.seal()


def test_block_subdomains_allowlist_wins() -> None:
    policy = Policy.build(
        allow=["ok.tracker.test"], blocklist=sealed("ads.example.com", "tracker.test", "junk x")
    )
    assert policy.blocked("ads.example.com") == "ads.example.com"
    assert policy.blocked("a.b.ads.example.com") == "ads.example.com"
    assert policy.blocked("example.com") is None
    assert policy.blocked("ok.tracker.test") is None
    assert policy.blocked("sub.ok.tracker.test") is None


def test_every_name_of_a_hosts_line_and_the_first_line_after_a_bom() -> None:
    blocklist = sealed("\ufeff0.0.0.0 first.example", "0.0.0.0 a.example b.example c.example")
    for name in ("first.example", "a.example", "b.example", "c.example"):
        assert blocklist.match(name) == name
    assert blocklist.sources == {"list": 4} and blocklist.bad_lines == 0


def test_exceptions_and_subdomain_rules() -> None:
    blocklist = sealed("||example.org^", "@@||good.example.org^", "||*.cdn.example^")
    assert blocklist.match("ads.example.org") == "example.org"
    assert blocklist.match("good.example.org") is None
    assert blocklist.match("deep.good.example.org") is None
    assert blocklist.match("cdn.example") is None  # `*.` means the names under it only
    assert blocklist.match("x.cdn.example") == "*.cdn.example"
    merged = Blocklist.merge([sealed("||example.org^"), sealed("@@||good.example.org^")])
    assert merged.match("good.example.org") is None  # an exception holds across lists


EASYLIST_STYLE = [
    "[Adblock Plus 2.0]",
    "! Title: EasyList-style",
    *(f"example{i}.com##.ad-banner" for i in range(40)),  # cosmetic: half such a list
    *(f"/banner{i}/ads." for i in range(3)),  # URL patterns: junk to a DNS server
    "||ads.example^$third-party",
    "||ads.example.net^",
    "||tracker.example.org^",
]
PORTAL = """\ufeff
  <!DOCTYPE html>
<html><head><title>Hotel Wi-Fi</title></head>
<body><form action="/login">Room number <input name="room"></form></body>
</html>
"""


@pytest.mark.parametrize(
    ("lines", "content_type", "why"),
    [
        (EASYLIST_STYLE, "text/plain", None),
        (["0.0.0.0 a.example", "this is not a line"], "", None),
        ([], "", None),  # an empty list is a list: the organiser emptied it
        (PORTAL.splitlines(), "text/plain",
         "not a blocklist: it is a web page (a Wi-Fi login page in its place?)"),
        (["<?xml version='1.0'?>", "<error>Access denied</error>"], "",
         "not a blocklist: it is a web page (a Wi-Fi login page in its place?)"),
        (["||ads.example.net^"], "text/html; charset=utf-8",
         "not a blocklist: the server sent a web page (text/html; charset=utf-8)"),
        (["Please log in to use the internet."], "",
         "not a blocklist: no line of it is a rule"),
        (["0.0.0.0 a.example", *(["junk line"] * 10)], "", None),  # 10 to 1: still a list
        (["0.0.0.0 a.example", *(["junk line"] * 11)], "",
         "not a blocklist: more than 10 lines that are not rules for each rule (11 to 1)"),
    ],
)  # fmt: skip
def test_what_is_not_a_blocklist(lines: list[str], content_type: str, why: str | None) -> None:
    part = Blocklist()
    part.add_lines("list", lines)
    assert not_a_list(part.seal(), "list", content_type) == why


def test_random_bytes_are_not_a_blocklist() -> None:
    junk = random.Random(7).randbytes(1 << 20).decode("utf-8", "replace")
    part = Blocklist()
    part.add_lines("list", junk.splitlines())
    why = not_a_list(part.seal(), "list")
    assert why is not None and why.startswith("not a blocklist: ")
    assert part.source_bad["list"] > 10 * part.sources["list"]


# a line as files and splitlines() give them: never a newline inside
LINE_TEXT = st.text(st.characters(blacklist_characters="\n"), max_size=60)
NAME_TEXT = st.text(st.characters(blacklist_characters="\n"), max_size=40)
HOSTS_LINE = st.one_of(
    LINE_TEXT,
    st.builds(lambda n: f"0.0.0.0 {n}", NAME_TEXT),
    st.builds(
        lambda ip, n, end: f"{ip}\t{n}{end}",
        st.sampled_from(["0.0.0.0", "127.0.0.1", "::", "::1", "0:0:0:0:0:0:0:0", "10.0.0.1"]),
        st.from_regex(r"[A-Za-z0-9*._-]{1,30}\.?", fullmatch=True),
        st.sampled_from(["", " ", "\r", "\r\n", " # note"]),
    ),
    st.sampled_from(["127.0.0.1 localhost", "0.0.0.0 LOCALHOST", "0.0.0.0 " + "a" * 64 + ".com"]),
)


@given(HOSTS_LINE)
def test_the_inline_fast_path_agrees_with_parse_line(line: str) -> None:
    blocklist = sealed(line)
    found = parse_line(line)
    if found:
        assert all(blocklist.match(name) for kind, name in found if kind == BLOCK)
        assert blocklist.sources["list"] == len(found)
    else:
        assert len(blocklist) == 0 and blocklist.bad_lines == (found is False)


@given(st.lists(HOSTS_LINE, max_size=30))
def test_a_whole_list_counts_as_its_lines_one_by_one(lines: list[str]) -> None:
    # the common lines are taken many at a time: the others, between them, must still
    # be read one by one and counted, whatever their order
    blocklist = sealed(*lines)
    found = [parse_line(line) for line in lines]
    rules = [rule for f in found if f for rule in f]
    assert blocklist.sources["list"] == len(rules)
    assert blocklist.bad_lines == sum(f is False for f in found)
    assert all(blocklist.match(name) for kind, name in rules if kind == BLOCK)


def test_lists_longer_than_a_block_lose_no_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("retreatkit.nameserver.blocklist.BLOCK_LINES", 3)
    lines = [f"0.0.0.0 n{i}.example" for i in range(10)]
    lines[4] = "0.0.0.0 trailing.example."  # another form, mid-block
    lines[7] = "# a comment"
    blocklist = sealed(*lines)
    assert blocklist.sources["list"] == 9 and blocklist.bad_lines == 0
    assert blocklist.match("trailing.example") == "trailing.example"
    assert blocklist.match("n9.example") == "n9.example"


def test_keys_are_sorted_across_ranges_and_merges() -> None:
    # names whose keys fall in every range of _Pending, in and out of the fast path
    names = [f"n{i}.example" for i in range(5000)]
    part = Blocklist()
    part.add_lines("a", [f"0.0.0.0 {n}" for n in names[:2500]] + names[2500:4000])
    part.seal()
    other = Blocklist()
    other.add_lines("b", [f"||{n}^" for n in names[4000:]])
    merged = Blocklist.merge([part.seal(), other.seal()])
    assert list(merged.hashes) == sorted(key(n) for n in names)
    assert all(merged.match(n) == n for n in names) and merged.match("x.example") is None
