"""An index page's body as published: its content coding undone, bounded, and whether it
may have been cut unseen (pure: bytes and headers in, bytes out)."""

from __future__ import annotations

import zlib
from collections.abc import Mapping

from retreatkit.mirror.errors import BadUpstreamData

INDEX_TOO_LARGE = "upstream index is larger than the mirror's limit"
INDEX_CUT = "upstream cut the index short"


class Decoder:
    """An index page's bytes as published, from the content coding it crosses in, undone
    as it arrives (the page is never held twice, coded and not); as bounded as the page
    itself (a small gzip can hold gigabytes of zeros)."""

    def __init__(self, coding: str, limit: int, url: str) -> None:
        coding = coding.strip().lower()
        if coding not in ("", "identity", "gzip"):
            raise BadUpstreamData(f"{url}: upstream sent the page as {coding!r}, not asked for")
        # gzip's header and trailer, checked
        self._unpack = zlib.decompressobj(wbits=31) if coding == "gzip" else None
        self.limit, self.url, self.size = limit, url, 0

    def feed(self, data: bytes) -> bytes:
        if self._unpack is None:
            return data
        try:
            out = self._unpack.decompress(data, self.limit + 1 - self.size)
        except zlib.error as exc:
            raise BadUpstreamData(f"{self.url}: upstream sent a broken gzip page ({exc})") from None
        self.size += len(out)
        if self.size > self.limit:
            raise BadUpstreamData(INDEX_TOO_LARGE)
        return out

    def end(self) -> None:
        if self._unpack is not None and not self._unpack.eof:
            raise BadUpstreamData(INDEX_CUT)


def decoded(coding: str, body: bytes, limit: int, url: str) -> bytes:
    """A whole page's bytes as published, from the content coding it crossed in."""
    decoder = Decoder(coding, limit, url)
    out = decoder.feed(body)
    decoder.end()
    return out


def cut_unseen(length: int | None, headers: Mapping[str, str], body: bytes) -> bool:
    """Whether an HTML page may have been cut without anyone seeing it: a body ended by
    the connection's close, with no length and no chunks to check it by (RFC 9112 6.3),
    that does not end as HTML does. A page with either is whole once read. `headers`
    are the answer's (looked up case-insensitively, as aiohttp's are)."""
    framed = length is not None or headers.get("Transfer-Encoding", "").lower().endswith("chunked")
    html = "html" in headers.get("Content-Type", "").lower()
    return not framed and html and b"</html>" not in body[-4096:].lower()
