"""Continuing a download that broke mid-body: what to ask for the rest, and which answer
may be taken (RFC 9110 13.1.5 If-Range, 14 ranges), pure.

The rest is asked with `Range: bytes=N-`, and `If-Range` with the strong validator of
the answer it continues (the first, or the last that sent the file whole), so a file
changed upstream comes back whole (200) rather than as a part of another file. A 206 is
taken only if it starts at exactly N and its total is the length the first answer gave;
a 200 starts the file over from byte 0. Whatever is taken, the
file is still checked against its index's hash before it is kept: this only saves the
uplink the bytes it already carried.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from retreatkit.mirror.errors import BadUpstreamData, UpstreamError

# each continuation is a new request over an uplink that just failed: a few ride out the
# drops of a flaky link; an upstream that cuts every answer short is given up on after
# that many, as it was after the first before
MAX_CONTINUATIONS = 3

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class Take(enum.Enum):
    REST = "rest"  # a 206 from where it broke: its bytes follow those already written
    WHOLE = "whole"  # a 200: the whole file again, written over from byte 0


@dataclass(frozen=True, slots=True)
class First:
    """What the first answer said of the file (its headers); after a 200 to a request for
    the rest, that answer's validators with the first's length."""

    length: int | None  # Content-Length, or the index's size
    etag: str | None = None
    last_modified: str | None = None
    date: str | None = None

    def validator(self) -> str | None:
        """If-Range's value: a strong ETag, else a Last-Modified that is strong (the
        answer's Date a second or more after it, RFC 9110 8.8.2.2). A weak ETag may not
        be sent (13.1.5), nor a date beside an ETag: no If-Range then, and the hash
        check and the length are what refuse a part of another file."""
        if self.etag is not None:
            return None if self.etag.startswith("W/") else self.etag
        if self.last_modified is None or self.date is None:
            return None
        try:
            modified = parsedate_to_datetime(self.last_modified)
            sent = parsedate_to_datetime(self.date)
            strong = (sent - modified).total_seconds() >= 1
        except (TypeError, ValueError):  # not a date, or one with and one without a zone
            return None
        return self.last_modified if strong else None


def ask(at: int, first: First) -> dict[str, str]:
    """The headers of the request for the rest, from byte `at`."""
    headers = {"Range": f"bytes={at}-"}
    validator = first.validator()
    if validator is not None:
        headers["If-Range"] = validator
    return headers


@dataclass
class Progress:
    """How far a download got: it is continued only after some bytes came, a few times,
    and each time only if it got further than before (an upstream that ignores the
    range and cuts at the same byte again is not asked a third time)."""

    continued: int = 0
    furthest: int = 0

    def another(self, written: int) -> bool:
        """Whether a download that broke with `written` bytes on disk is continued; if so,
        it is counted."""
        if self.continued >= MAX_CONTINUATIONS or written <= self.furthest:
            return False
        self.continued += 1
        self.furthest = written
        return True


def judge(
    status: int, content_range: str | None, content_length: int | None, at: int,
    first: First, file: str,
) -> Take:  # fmt: skip
    """Which answer to a request for the rest of `file` from byte `at` is taken; any
    other is refused with the words a client and the organiser read."""
    if status == 200:
        if first.length is not None and content_length not in (None, first.length):
            # its clients were told the first length, and the index's hash names at most
            # one of the two: asked again from the start by the next client
            raise BadUpstreamData(
                f"upstream changed {file} while sending it ({content_length} bytes,"
                f" not {first.length})"
            )
        return Take.WHOLE
    if status != 206:
        raise UpstreamError(f"upstream answered {status} for {file}")
    match = _CONTENT_RANGE.fullmatch((content_range or "").strip())
    if match is None:  # no single range said: multipart, other units, nothing
        raise BadUpstreamData(f"upstream sent a part of {file} without saying which")
    start, end = int(match[1]), int(match[2])
    total = None if match[3] == "*" else int(match[3])
    if start != at:
        raise BadUpstreamData(f"upstream sent {file} from byte {start}, not {at} as asked")
    if end < start or (total is not None and end >= total):
        raise BadUpstreamData(f"upstream sent a part of {file} that is not one")
    if first.length is not None and total is None:
        raise BadUpstreamData(f"upstream sent a part of {file} without its length")
    if first.length is not None and total != first.length:
        raise BadUpstreamData(
            f"upstream changed {file} while sending it ({total} bytes, not {first.length})"
        )
    if content_length is not None and content_length != end - start + 1:
        raise BadUpstreamData(f"upstream sent a part of {file} that is not one")
    return Take.REST


def total_of(content_range: str | None) -> int | None:
    """The file's length a taken 206 says (`bytes N-E/TOTAL`), if it says one."""
    match = _CONTENT_RANGE.fullmatch((content_range or "").strip())
    return int(match[3]) if match is not None and match[3] != "*" else None
