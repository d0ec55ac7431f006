"""What the mirror keeps in memory: small files and index pages, least recently used out first.

Keys name content by its hash (files) or carry the digest of what they were made from
(pages), so an entry never goes stale: nothing to invalidate, only to evict.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from retreatkit.mirror.records import Blob

SMALL = 1024 * 1024  # files up to this size are answered from memory, larger by sendfile

K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class Page:
    """An index page as a client gets it."""

    body: bytes
    etag: str
    content_type: str


class LRU(Generic[K]):
    """Byte strings (or things holding one) bounded by their total size."""

    def __init__(self, limit: int, largest: int | None = None) -> None:
        self.limit = limit
        self.largest = limit if largest is None else largest
        self.size = 0
        self._items: OrderedDict[K, tuple[int, object]] = OrderedDict()

    def _get(self, key: K) -> object | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[1]

    def _put(self, key: K, value: object, size: int) -> None:
        if size > self.largest:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.size -= old[0]
        self._items[key] = (size, value)
        self.size += size
        while self.size > self.limit and self._items:
            _, (dropped, _value) = self._items.popitem(last=False)
            self.size -= dropped

    def drop(self, key: K) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self.size -= item[0]

    def __len__(self) -> int:
        return len(self._items)


class HotCache(LRU[str]):
    """Small verified files by store key: the hot path answers them with no disk, no SQLite."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit, largest=SMALL)

    def get(self, name: str) -> Blob | None:
        item = self._get(name)
        return item if isinstance(item, Blob) else None

    def put(self, name: str, item: Blob) -> None:
        if item.body is not None:
            self._put(name, item, len(item.body))


class Renders(LRU[tuple[str, ...]]):
    """Pages as clients get them, by what they were made from (a digest, a variant...)."""

    def get(self, key: tuple[str, ...]) -> Page | None:
        item = self._get(key)
        return item if isinstance(item, Page) else None

    def put(self, key: tuple[str, ...], page: Page) -> None:
        self._put(key, page, len(page.body))
