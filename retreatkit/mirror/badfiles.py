"""Files that arrived bad, remembered a while: a client's retries are answered at once.

Bytes that fail their hash are the upstream's doing, not the line's: asked again at once
it sends the same bytes (a tampered archive, an index naming the wrong checksum). Clients
retry a 5xx on their own (opam's curl three times, uv, apt-get and npm three; pip five
times a 502, not a 504), and each retry asked upstream would be one more copy over the
uplink for nothing. So a file's failure is kept for `hold` seconds and answered with the
same line and when the mirror asks again, as a 504 (errors.BadFile): pip then shows that
line at once instead of retrying. An upstream chooses how many of its files fail: at
most `most` are kept, the oldest forgotten first (forgetting one costs only one more
download). Pure: the caller passes the time.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable

HOLD = 300.0  # seconds a bad file is answered from memory
MOST = 1024  # bad files remembered at once


class BadFiles:
    def __init__(self, hold: float = HOLD, most: int = MOST) -> None:
        self.hold, self.most = hold, most
        self._held: OrderedDict[str, tuple[float, str]] = OrderedDict()  # key -> until, why

    def remember(self, keys: Iterable[str], why: str, now: float) -> None:
        """The file stored under each of `keys` (one file, all its names) arrived bad."""
        for key in keys:
            self._held.pop(key, None)
            self._held[key] = (now + self.hold, why)
        while len(self._held) > self.most:
            self._held.popitem(last=False)

    def answer(self, key: str, now: float) -> str | None:
        """The line for a request of `key` while its failure is remembered, else None
        (and a failure whose time is up is forgotten: the next request asks upstream)."""
        held = self._held.get(key)
        if held is None:
            return None
        until, why = held
        if now >= until:
            del self._held[key]
            return None
        return f"{why}; next try in {math.ceil(until - now)} s"

    def __len__(self) -> int:
        return len(self._held)
