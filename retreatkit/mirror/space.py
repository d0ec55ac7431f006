"""Room on the store's disk: who may start a download, and when the disk counts as full (pure).

Free space is read by the caller (statvfs) and passed in. Downloads under way reserve
what their Content-Length promised, so ten clients asking for ten big files at once do
not all pass the same check. A file that did not fit is remembered: the disk stays
"full" until there is room for it, however much smaller files still fit.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Space:
    keep_free: int  # bytes the mirror never takes: the machine needs its disk too
    reserved: int = 0
    needed: int | None = None  # the smallest file that did not fit, until it would

    def room_for(self, size: int, free: int) -> bool:
        return free - self.reserved - self.keep_free >= size

    def reserve(self, size: int) -> None:
        self.reserved += size

    def release(self, size: int) -> None:
        self.reserved = max(0, self.reserved - size)

    def did_not_fit(self, size: int) -> None:
        self.needed = size if self.needed is None else min(self.needed, size)

    def full(self, free: int) -> bool:
        if self.needed is not None and self.room_for(self.needed, free):
            self.needed = None  # someone made room
        return free <= self.keep_free or self.needed is not None
