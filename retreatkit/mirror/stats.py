"""The mirror's counters: one table that /status and /metrics are both made from."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

# name -> what it counts; each is a field of Stats, a /status key and `mirror_<name>_total`
COUNTERS: dict[str, str] = {
    "hits": "Requests answered from the store",
    "misses": "Requests that needed the upstream",
    "stale_served": "Index pages served without the upstream's confirmation",
    "offline_pages": "Index pages served listing only what the store holds",
    "not_found": "Requests for things nobody has",
    "errors": "Requests answered with an error",
    "bytes_from_cache": "File bytes sent to clients from the store",
    "bytes_from_upstream": "File bytes sent to clients while they were being fetched",
    # counted as bytes leave, so it only grows: it was the bytes sent less those fetched,
    # which fell (12 MB to 0) whenever a download ran ahead of its client
    "bytes_saved": "File bytes sent to clients that did not cross the uplink for them: from"
    " the store, or of a download another client was sent already",
    "upstream_fetches": "File downloads started upstream",
    "upstream_bytes": "Bytes fetched from upstream",
    "upstream_index_bytes": "Index page bytes fetched from upstream, as they crossed",
    "upstream_skipped": "Requests answered without asking an upstream that is down, or"
    " silent for that request a moment ago",
    "coalesced": "Requests that joined a download already under way",
    "verify_failures": "Upstream bytes rejected by a hash or format check",
    "upstream_errors": "Upstream failures",
    "connections_refused": "Connections turned away by the per-address or total cap",
    "evicted": "Files removed to keep the store under its size limit",
    "evicted_bytes": "Bytes removed to keep the store under its size limit",
    "pages_refused": "Index page requests refused: max_pages_sending_bytes of pages on their way",
    "pages_stalled": "Clients cut for taking none of an index page for page_stall_timeout",
    "pages_waited": "Index pages that waited: max_pages_reading_bytes of pages being read",
}
TOP = 10  # packages listed in /status
_MAX_PACKAGES = 10_000  # names counted; a client choosing names cannot grow this further


@dataclass
class Stats:
    hits: int = 0
    misses: int = 0
    stale_served: int = 0
    offline_pages: int = 0
    not_found: int = 0
    errors: int = 0
    bytes_from_cache: int = 0
    bytes_from_upstream: int = 0
    bytes_saved: int = 0
    upstream_fetches: int = 0
    upstream_bytes: int = 0
    upstream_index_bytes: int = 0
    upstream_skipped: int = 0
    coalesced: int = 0
    verify_failures: int = 0
    upstream_errors: int = 0
    connections_refused: int = 0
    evicted: int = 0
    evicted_bytes: int = 0
    pages_refused: int = 0
    pages_stalled: int = 0
    pages_waited: int = 0
    packages: Counter[str] = field(default_factory=Counter)

    def asked(self, package: str) -> None:
        if package in self.packages or len(self.packages) < _MAX_PACKAGES:
            self.packages[package] += 1

    def counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}

    @property
    def hit_ratio(self) -> float:
        """Of the requests that the store or the upstream answered, the store's share."""
        asked = self.hits + self.misses
        return round(self.hits / asked, 4) if asked else 0.0

    def top_packages(self) -> list[list[str | int]]:
        return [[name, count] for name, count in self.packages.most_common(TOP)]


def iso(when: float) -> str:
    """A wall-clock time as the admin API gives it: ISO 8601, UTC, to the second."""
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
