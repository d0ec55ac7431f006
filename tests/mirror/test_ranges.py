"""Validators and ranges for files (RFC 9110), pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retreatkit.mirror.ranges import Plan, etag_of, not_modified_since, plan

TAG = etag_of("ab" * 32)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, Plan(200, 0, 100)),
        ({"If-None-Match": TAG}, Plan(304)),
        ({"If-None-Match": f'"other", W/{TAG}'}, Plan(304)),
        ({"If-None-Match": "*"}, Plan(304)),
        ({"If-None-Match": '"other"'}, Plan(200, 0, 100)),
        ({"Range": "bytes=0-9"}, Plan(206, 0, 10, "bytes 0-9/100")),
        ({"Range": "bytes=90-"}, Plan(206, 90, 10, "bytes 90-99/100")),
        ({"Range": "bytes=-30"}, Plan(206, 70, 30, "bytes 70-99/100")),
        ({"Range": "bytes=-300"}, Plan(206, 0, 100, "bytes 0-99/100")),
        ({"Range": "bytes=50-500"}, Plan(206, 50, 50, "bytes 50-99/100")),
        ({"Range": "bytes=100-"}, Plan(416, content_range="bytes */100")),
        ({"Range": "bytes=-0"}, Plan(416, content_range="bytes */100")),
        ({"Range": "bytes=9-3"}, Plan(200, 0, 100)),  # invalid: ignored
        ({"Range": "bytes=0-1,5-6"}, Plan(200, 0, 100)),  # several: the whole file
        ({"Range": "lines=1-2"}, Plan(200, 0, 100)),
        ({"Range": "bytes=0-9", "If-Range": TAG}, Plan(206, 0, 10, "bytes 0-9/100")),
        ({"Range": "bytes=0-9", "If-Range": '"changed"'}, Plan(200, 0, 100)),
        ({"Range": "bytes=0-9", "If-None-Match": TAG}, Plan(304)),
    ],
)
def test_plan(headers: dict[str, str], expected: Plan) -> None:
    assert plan("GET", headers, TAG, 100) == expected


HUGE = "9" * 5000  # past Python's int() limit of 4300 digits


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (f"bytes={HUGE}-", Plan(416, content_range="bytes */100")),  # starts past the end
        (f"bytes={HUGE}-{HUGE}", Plan(416, content_range="bytes */100")),
        (f"bytes=0-{HUGE}", Plan(206, 0, 100, "bytes 0-99/100")),  # the rest of the file
        (f"bytes=90-{'0' * 5000}95", Plan(206, 90, 6, "bytes 90-95/100")),
        (f"bytes=-{HUGE}", Plan(206, 0, 100, "bytes 0-99/100")),  # a suffix longer than it
        (f"bytes={HUGE}-{'9' * 4999}", Plan(200, 0, 100)),  # its end before its start
        (f"bytes=-{'0' * 5000}", Plan(416, content_range="bytes */100")),
        ("bytes=\u0661\u0662-", Plan(200, 0, 100)),  # Arabic-Indic digits are no DIGIT
        ("bytes=1-\uff19", Plan(200, 0, 100)),  # nor fullwidth ones
        ("bytes=\u00a01-2", Plan(200, 0, 100)),
    ],
    ids=lambda v: v[:24] if isinstance(v, str) else "",
)
def test_a_range_of_any_length_or_script_is_planned_as_rfc_9110_says(
    spec: str, expected: Plan
) -> None:
    assert plan("GET", {"Range": spec}, TAG, 100) == expected


@given(st.integers(0, 10_000), st.from_regex(r"bytes=[0-9]{0,6000}-[0-9]{0,6000}", fullmatch=True))
def test_a_range_of_any_length_gives_bytes_inside_the_file(size: int, spec: str) -> None:
    p = plan("GET", {"Range": spec}, TAG, size)
    assert p.status in (200, 206, 416)
    assert p.start >= 0 and p.start + p.length <= size


@given(st.integers(0, 10_000), st.text(max_size=40))
def test_any_range_header_gives_bytes_inside_the_file(size: int, spec: str) -> None:
    p = plan("GET", {"Range": spec}, TAG, size)
    assert p.status in (200, 206, 416)
    assert p.start >= 0 and p.start + p.length <= size


LAST = "Sat, 01 Jun 2024 08:00:00 GMT"


@pytest.mark.parametrize(
    ("since", "modified", "unchanged"),
    [
        (LAST, LAST, True),
        ("Sat, 01 Jun 2024 09:00:00 GMT", LAST, True),
        ("Sat, 01 Jun 2024 07:59:59 GMT", LAST, False),
        (None, LAST, False),
        (LAST, None, False),
        ("yesterday", LAST, False),
        ("Sat, 01 Jun 2024 08:00:00", LAST, False),  # no zone: not comparable
    ],
)
def test_not_modified_since(since: str | None, modified: str | None, unchanged: bool) -> None:
    assert not_modified_since(since, modified) is unchanged
