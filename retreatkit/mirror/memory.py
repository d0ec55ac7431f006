"""What the mirror keeps in memory: small files and index pages, least recently used out first,
the pages on their way to clients, bounded, and the pages being read and processed, bounded.

Keys name content by its hash (files) or carry the digest of what they were made from
(pages), so an entry never goes stale: nothing to invalidate, only to evict. A page is
held once however many clients it goes to: a request finds any page another one still
holds, kept or not, and the bytes of pages being sent are counted, each page once.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

from retreatkit.mirror.budget import Budget
from retreatkit.mirror.records import Blob

SMALL = 1024 * 1024  # files up to this size are answered from memory, larger by sendfile

K = TypeVar("K")


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Page:
    """An index page as a client gets it."""

    body: bytes
    etag: str
    content_type: str
    held_only: bool = False  # it lists only the files the store holds (offline)


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

    def clear(self) -> None:
        self._items.clear()
        self.size = 0

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
    """Pages as clients get them, by what they were made from (a digest, a variant...):
    the most recently used up to the limit, and beyond it any page a request still holds
    (one being sent to a client that reads slowly, one larger than the limit), so the
    same page is never made, read or held twice."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self._held: weakref.WeakValueDictionary[tuple[str, ...], Page] = (
            weakref.WeakValueDictionary()
        )

    def get(self, key: tuple[str, ...]) -> Page | None:
        item = self._get(key)
        return item if isinstance(item, Page) else self._held.get(key)

    def put(self, key: tuple[str, ...], page: Page) -> None:
        self._put(key, page, len(page.body))
        self._held[key] = page


class Sending:
    """Index pages on their way to clients, each page's bytes counted once however many
    clients it goes to, and bounded: a client that reads slowly, or not at all, holds its
    page until it has read it or left, and npm's pages reach 128 MB. One page alone always
    goes, whatever its size; another that would take the total past `limit` waits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0  # of the pages being sent, each once
        self._pages: dict[int, tuple[bytes, int]] = {}  # id -> the body (kept alive), clients

    def take(self, body: bytes) -> bool:
        """Count one more client of `body`: False, and nothing counted, if it is a page not
        on its way yet that would take the total past the limit."""
        key = id(body)
        held = self._pages.get(key)
        if held is not None:
            self._pages[key] = (body, held[1] + 1)
            return True
        if self._pages and self.bytes + len(body) > self.limit:
            return False
        self._pages[key] = (body, 1)
        self.bytes += len(body)
        return True

    def done(self, body: bytes) -> None:
        """One client of `body` (counted by take) has it, or has gone."""
        key = id(body)
        _, clients = self._pages[key]
        if clients > 1:
            self._pages[key] = (body, clients - 1)
            return
        del self._pages[key]
        self.bytes -= len(body)

    def __len__(self) -> int:
        """Pages being sent, each once."""
        return len(self._pages)


class Working:
    """Pages being read from upstream and processed (budget.py): each holds a `Lease` of
    the budget for as long as its bytes are in memory for that, and waits for room."""

    def __init__(self, limit: int, waited: Callable[[], None] = lambda: None) -> None:
        self.budget = Budget(limit)
        self.waited = waited  # a page waits for room
        self._woken: dict[Hashable, asyncio.Future[None]] = {}

    def lease(self) -> Lease:
        return Lease(self)

    def _wake(self, tokens: list[Hashable]) -> None:
        for token in tokens:
            future = self._woken.pop(token, None)
            if future is not None and not future.done():
                future.set_result(None)


class Lease:
    """One page's share of the budget: `hold` waits until it has so many bytes; leaving
    the `async with` (or `close`) gives them back."""

    def __init__(self, working: Working) -> None:
        self.working = working
        self._asked = False

    @property
    def held(self) -> int:
        return self.working.budget.holds(self)

    async def hold(self, size: int) -> None:
        """Hold at least `size` bytes, waiting for room if there is none (the first call,
        even for none: its turn after the pages that asked before it)."""
        working, budget = self.working, self.working.budget
        if not self._asked:
            self._asked = True
            granted = budget.ask(self, size)
        else:
            more = size - budget.holds(self)
            granted = more <= 0 or budget.grow(self, more)
        if granted:
            return
        working.waited()
        future = asyncio.get_running_loop().create_future()
        working._woken[self] = future
        try:
            await future
        except BaseException:  # cancelled while waiting: nothing of it stays counted
            self.close()
            raise

    def close(self) -> None:
        working = self.working
        working._woken.pop(self, None)
        working._wake(working.budget.release(self))

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
