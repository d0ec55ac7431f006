"""The answer cache: pre-encoded answers by question, kept past expiry for serve-stale.

Bounded in bytes as the process holds them, not only in answer bytes: counting an
answer's wire and key alone, a flood of unique names with 1 KB answers took the process
to three times the cap, for each entry also holds its Entry and Template objects, its
floats, a tuple of TTLs and one of their offsets (an int object each, per record), and
its slot in the dict. `cost` adds ENTRY_COST and RECORD_COST for those, measured with
tracemalloc on CPython 3.11 (1 KB TXT answers: 1584 bytes traced per entry, 1626
counted; 60 A records: 5631 traced, 5384 counted); tests/nameserver/test_cache.py
holds the count to what tracemalloc sees.
"""

from __future__ import annotations

import math

from retreatkit.nameserver.stats import BLOCKED, CACHED, LOCAL
from retreatkit.nameserver.wire import Template

__all__ = ["BLOCKED", "CACHED", "LOCAL", "Cache", "Entry", "cost"]


class Entry:
    """One answer for one cache key. Slotted: the fast path reads it on every hit."""

    __slots__ = (
        "expires", "generation", "hits", "key", "kind", "rcode", "stale_until", "stored_at",
        "targets", "template",
    )  # fmt: skip

    def __init__(
        self,
        key: bytes,
        template: Template,
        kind: int,
        stored_at: float,
        expires: float,
        stale_until: float,
        generation: int,
        targets: tuple[str, ...] = (),
    ) -> None:
        self.key = key
        self.template = template
        self.kind = kind  # CACHED (an upstream's data), BLOCKED or LOCAL (our own)
        self.rcode = template.rcode
        self.stored_at = stored_at
        self.expires = expires  # inf for our own answers: only a policy change ends them
        self.stale_until = stale_until
        self.generation = generation  # the policy generation it was checked under
        self.targets = targets  # CNAME targets: checked again when the blocklists change
        self.hits = 0  # hits not yet counted per domain (stats.Stats.tick folds them)

    @property
    def own(self) -> bool:
        return self.kind != CACHED

    def age(self, now: float) -> int:
        return int(now - self.stored_at)

    def fresh_until(self, now: float) -> float:
        """When the answer rendered now stops being right: the next change of its TTLs,
        or its expiry."""
        if self.own:
            return math.inf
        return min(self.stored_at + self.age(now) + 1, self.expires)


MAX_BYTES = 128 * 1024 * 1024
ENTRY_COST = 512  # bytes an entry holds besides its answer and key (the module docstring)
RECORD_COST = 64  # and per record: its TTL and offset, int objects, and their tuple slots
TARGET_COST = 64  # and per CNAME target, besides its characters: a str and its tuple slot

MEMORY_SHARE = 4  # of the memory we may use, at most a quarter goes to the cache


def max_bytes_for(physical: int | None) -> int:
    """The cache's bound where this process may use `physical` bytes of memory (None:
    unknown; the machine's, or its cgroup's limit: memory.py): MAX_BYTES, or a quarter
    of that where it is less, as in a VM guest of 128 MB, which the full cache would not
    fit beside Python and the kernel."""
    if not physical or physical <= 0:
        return MAX_BYTES
    return min(MAX_BYTES, physical // MEMORY_SHARE)


class Cache:
    """Bounded in entries and in bytes: the oldest entry goes first when full (dicts keep
    insertion order). Bytes too, for answers are up to 64 KiB each: a client asking for
    names of a zone it runs, each with a big answer, would otherwise have us keep 200,000
    of them (gigabytes)."""

    def __init__(
        self, max_entries: int = 200_000, stale_for: float = 86400.0, max_bytes: int = MAX_BYTES
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.stale_for = stale_for
        self.entries: dict[bytes, Entry] = {}
        self.bytes = 0  # what the entries hold: `cost` of each

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: bytes) -> Entry | None:
        return self.entries.get(key)

    def put(
        self,
        key: bytes,
        template: Template,
        ttl: int,
        now: float,
        generation: int,
        targets: tuple[str, ...] = (),
    ) -> Entry:
        """An upstream's answer, fresh for `ttl` s and served stale `stale_for` s more."""
        entry = Entry(
            key, template, CACHED, now, now + ttl, now + ttl + self.stale_for, generation, targets
        )
        self._store(key, entry)
        return entry

    def put_own(
        self, key: bytes, template: Template, kind: int, now: float, generation: int
    ) -> Entry:
        """Our own answer (a local name, a block): good until the policy changes."""
        entry = Entry(key, template, kind, now, math.inf, math.inf, generation)
        self._store(key, entry)
        return entry

    def _store(self, key: bytes, entry: Entry) -> None:
        entries = self.entries
        self._drop(key)
        size = cost(entry)
        while entries and (len(entries) >= self.max_entries or self.bytes + size > self.max_bytes):
            self._drop(next(iter(entries)))
        entries[key] = entry
        self.bytes += size

    def _drop(self, key: bytes) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.bytes -= cost(entry)

    def flush(self, name: str) -> int:
        """Drop every answer for `name` (any type, any flags); returns how many went."""
        prefix = b"".join(bytes((len(p),)) + p.encode("ascii") for p in name.split(".")) + b"\0"
        dead = [k for k in self.entries if k.startswith(prefix)]
        for key in dead:
            self._drop(key)
        return len(dead)

    def clear(self) -> int:
        count = len(self.entries)
        self.entries.clear()
        self.bytes = 0
        return count

    def expire(self, now: float) -> int:
        """Drop what is past even its stale window; returns how many went."""
        dead = [k for k, e in self.entries.items() if e.stale_until < now]
        for key in dead:
            self._drop(key)
        return len(dead)


def cost(entry: Entry) -> int:
    """The bytes `entry` holds in memory, as the module docstring counts them (a template
    shared by several entries is counted for each: never less than the truth)."""
    template = entry.template
    return (
        len(template.wire)
        + len(entry.key)
        + ENTRY_COST
        + RECORD_COST * len(template.ttl_offsets)
        + sum(TARGET_COST + len(target) for target in entry.targets)
    )
