"""The answer cache: pre-encoded answers by question, kept past expiry for serve-stale."""

from __future__ import annotations

import math
from dataclasses import dataclass

from retreatkit.nameserver.wire import Template

STALE_TTL = 30  # RFC 8767: the TTL of an answer served stale


@dataclass(slots=True)
class Entry:
    template: Template
    expires: float  # monotonic; inf for our own answers
    stale_until: float
    generation: int  # the policy generation our own answers were made under
    ttl: int  # as cached, for answers we make ourselves
    local: bool = False  # our own answer (local name, block): it never expires

    def ttl_at(self, now: float) -> int:
        return self.ttl if self.local else max(0, int(self.expires - now))


class Cache:
    """Bounded: the oldest entry goes first when full (dicts keep insertion order)."""

    def __init__(self, max_entries: int = 200_000, stale_for: float = 86400.0) -> None:
        self.max_entries = max_entries
        self.stale_for = stale_for
        self.entries: dict[bytes, Entry] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: bytes) -> Entry | None:
        return self.entries.get(key)

    def put(self, key: bytes, template: Template, ttl: int, now: float, generation: int) -> Entry:
        entry = Entry(template, now + ttl, now + ttl + self.stale_for, generation, ttl)
        self._store(key, entry)
        return entry

    def put_local(self, key: bytes, template: Template, ttl: int, generation: int) -> Entry:
        entry = Entry(template, math.inf, math.inf, generation, ttl, local=True)
        self._store(key, entry)
        return entry

    def _store(self, key: bytes, entry: Entry) -> None:
        entries = self.entries
        entries.pop(key, None)
        while len(entries) >= self.max_entries:
            del entries[next(iter(entries))]
        entries[key] = entry

    def purge_local(self) -> None:
        """Our own answers depend on the policy: drop them when it changes."""
        for key in [k for k, e in self.entries.items() if e.local]:
            del self.entries[key]

    def expire(self, now: float) -> int:
        """Drop what is past even its stale window; returns how many went."""
        dead = [k for k, e in self.entries.items() if e.stale_until < now]
        for key in dead:
            del self.entries[key]
        return len(dead)
