"""A byte budget that whole pages draw from while they are read and processed (no I/O).

A page read from upstream is held whole, then parsed and written anew: a packument of
90 MB costs several hundred MB while it is, and 64 pages may be read at once. Each page
being read or processed holds bytes of the budget, as many as it has (more as it
arrives: a length an upstream does not say, a gzip page inflating). One that would take
the total past the limit waits, in the order they asked, and pages that already hold
bytes go before new ones: they hold memory until they are done. So a large page waits
for room, and small ones behind it wait too rather than overtake it for ever.

Nothing waits for ever: a page alone may take any size, and the page that has held
bytes longest never waits to grow, so it always ends and frees what it holds.

Holders are named by any hashable token; `ask`, `grow` and `release` say which waiting
ones are granted by what they did, for the shell to wake.
"""

from __future__ import annotations

from collections.abc import Hashable


class Budget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._held: dict[Hashable, int] = {}  # holder -> bytes, oldest first
        self._growing: dict[Hashable, int] = {}  # holders waiting for more, first asked first
        self._asking: dict[Hashable, int] = {}  # new ones waiting, first asked first

    def holds(self, token: Hashable) -> int:
        return self._held.get(token, 0)

    def waiting(self, token: Hashable) -> bool:
        return token in self._growing or token in self._asking

    def ask(self, token: Hashable, size: int) -> bool:
        """A new holder wants `size` bytes: True if it has them, else it waits its turn."""
        if self._growing or self._asking or not self._fits(size, token):
            self._asking[token] = size
            return False
        self._take(token, size)
        return True

    def grow(self, token: Hashable, more: int) -> bool:
        """A holder wants `more` bytes: True if it has them, else it waits, before any new one."""
        if token not in self._held:
            return self.ask(token, more)
        if not self._fits(more, token):
            self._growing[token] = more
            return False
        self._take(token, more)
        return True

    def release(self, token: Hashable) -> list[Hashable]:
        """A holder is done (or a waiter gives up): its bytes go back. Returns the waiting
        holders that now have what they asked for."""
        self._growing.pop(token, None)
        self._asking.pop(token, None)
        self.used -= self._held.pop(token, 0)
        return self._grant()

    def _fits(self, size: int, token: Hashable) -> bool:
        """Room for `size` more, or `token` may go past the limit: the oldest holder, or
        the only one."""
        if self.used + size <= self.limit or not self._held:
            return True
        return next(iter(self._held)) == token

    def _take(self, token: Hashable, size: int) -> None:
        self._held[token] = self._held.get(token, 0) + size
        self.used += size

    def _grant(self) -> list[Hashable]:
        granted = []
        for token, more in list(self._growing.items()):  # any that fits: each frees memory
            if self._fits(more, token):
                del self._growing[token]
                self._take(token, more)
                granted.append(token)
        while self._asking and not self._growing:  # in order: a large one is not overtaken
            token, size = next(iter(self._asking.items()))
            if not self._fits(size, token):
                break
            del self._asking[token]
            self._take(token, size)
            granted.append(token)
        return granted
