"""Which bytes of a stored file a request gets: validators and ranges (RFC 9110), pure.

Every file's ETag is its sha256, quoted: one scheme, whatever the size or the way the
bytes leave (memory, sendfile, a fill in progress). Only a single byte range is served;
a request for several gets the whole file, which RFC 9110 section 14.2 allows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

# DIGIT is ASCII (RFC 5234): `\d` would take any script's digits, which no client sends
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")


@dataclass(frozen=True, slots=True)
class Plan:
    status: int  # 200, 206, 304 or 416
    start: int = 0
    length: int = 0  # bytes in the body (Content-Length); what a HEAD would have had
    content_range: str | None = None


def etag_of(digest: str) -> str:
    return f'"{digest}"'


def matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 13.1.2: weak comparison, `*` matches anything that exists."""
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def not_modified_since(since: str | None, modified: str | None) -> bool:
    """RFC 9110 13.1.3: a page last modified at `modified` (an HTTP date) or before
    `since`. Either missing or not a date: modified, so the page is sent."""
    if since is None or modified is None:
        return False
    try:
        asked, last = parsedate_to_datetime(since), parsedate_to_datetime(modified)
        return last <= asked
    except (TypeError, ValueError):  # not a date, or one with and one without a zone
        return False


def plan(method: str, headers: Mapping[str, str], etag: str, size: int) -> Plan:
    """What to answer a GET or HEAD of a file of `size` bytes whose ETag is `etag`."""
    inm = headers.get("If-None-Match")
    if inm is not None and matches(inm, etag):
        return Plan(304)
    full = Plan(200, 0, size)
    spec = headers.get("Range")
    if spec is None or method not in ("GET", "HEAD"):
        return full
    if_range = headers.get("If-Range")
    if if_range is not None and if_range.strip() != etag:  # a strong match only (13.1.5)
        return full
    match = _RANGE.fullmatch(spec.strip(" \t"))
    if match is None or (not match[1] and not match[2]):
        return full  # several ranges, other units or nonsense: ignore the header (14.2)
    first, last = match[1], match[2]
    if first:
        if last and _order(last) < _order(first):
            return full  # an invalid range is ignored, not refused (14.1.1)
        start = _number(first, size)
        end = min(_number(last, size), size - 1) if last else size - 1
    else:
        suffix = _number(last, size)
        if suffix == 0:
            return Plan(416, content_range=f"bytes */{size}")
        start, end = max(0, size - suffix), size - 1
    if start >= size:
        return Plan(416, content_range=f"bytes */{size}")
    return Plan(206, start, end - start + 1, f"bytes {start}-{end}/{size}")


def _order(digits: str) -> tuple[int, str]:
    """A number's place among others, from its digits: any length, no conversion."""
    digits = digits.lstrip("0")
    return len(digits), digits


def _number(digits: str, most: int) -> int:
    """A number of any length, taken no larger than `most` (a file's size): int() refuses
    over 4300 digits, and so long a number is past the end of any file anyway."""
    digits = digits.lstrip("0") or "0"
    return most if len(digits) > len(str(most)) else min(int(digits), most)
