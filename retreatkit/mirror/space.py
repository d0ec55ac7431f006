"""Room on the store's disk: who may start a download, and when the disk counts as full (pure).

Free space is read by the caller (statvfs) and passed in. Downloads under way reserve
what their Content-Length promised, so ten clients asking for ten big files at once do
not all pass the same check.

Two refusals are remembered, apart:
- a file of known size that did not fit is only too big: smaller files, and files whose
  size nobody gave, are still taken; the organiser is told until there is room for it;
- a write that found the disk full (a file of unknown size, a page, the catalog) makes
  the disk full: files of unknown size are refused until there is more room than that
  write had, since the next one could only find out the hard way, cutting its clients.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Space:
    keep_free: int  # bytes the mirror never takes: the machine needs its disk too
    reserved: int = 0
    too_big: int | None = None  # the smallest file of known size that did not fit
    outgrown: int | None = None  # the room a write found the disk full without

    def room_for(self, size: int, free: int) -> bool:
        return free - self.reserved - self.keep_free >= size

    def reserve(self, size: int) -> None:
        self.reserved += size

    def release(self, size: int) -> None:
        self.reserved = max(0, self.reserved - size)

    def did_not_fit(self, size: int) -> None:
        """A file of known `size` was refused, before a byte, for want of room."""
        self.too_big = size if self.too_big is None else min(self.too_big, size)

    def outgrew(self, needed: int) -> None:
        """A write found the disk full; it would have needed `needed` bytes of room."""
        self.outgrown = needed if self.outgrown is None else min(self.outgrown, needed)

    def refused(self, free: int) -> int | None:
        """The smallest known size still refused, once `free` bytes are free."""
        if self.too_big is not None and self.room_for(self.too_big, free):
            self.too_big = None  # someone made room
        return self.too_big

    def full(self, free: int) -> bool:
        """Whether files of unknown size are refused: too little room to try one."""
        if self.outgrown is not None and self.room_for(self.outgrown, free):
            self.outgrown = None
        return free <= self.keep_free or self.outgrown is not None
