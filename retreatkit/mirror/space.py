"""Room on the store's disk: who may start a download, and when the disk counts as full (pure).

Free space is read by the caller (statvfs) and passed in. Downloads under way reserve
what their Content-Length promised, so ten clients asking for ten big files at once do
not all pass the same check. What of a reservation is written already is out of the free
space read: only the rest is held (counted twice, a file 3/4 down kept a 6 MB one off a
disk with room for both).

Two refusals are remembered, apart:
- a file of known size that did not fit is only too big: smaller files, and files whose
  size nobody gave, are still taken; the organiser is told until there is room for it;
- a write that found the disk full (a file of unknown size, a page, the catalog) makes
  the disk full: files of unknown size are refused until there is more room than that
  write had, since the next one could only find out the hard way, cutting its clients.
"""

from __future__ import annotations

from dataclasses import dataclass

from retreatkit.units import size as human

MARGIN = 1 << 20  # the filesystem's own blocks: less than this free is a full disk


@dataclass
class Space:
    keep_free: int  # bytes the mirror never takes: the machine needs its disk too
    reserved: int = 0  # the sizes of the downloads under way, whole (what the store will hold)
    landed: int = 0  # what of them is on the disk already, so out of its free space
    too_big: int | None = None  # the smallest file of known size that did not fit
    outgrown: int | None = None  # the room a write found the disk full without

    @property
    def held(self) -> int:
        """Room promised to downloads under way that their bytes have not taken yet."""
        return max(0, self.reserved - self.landed)

    def room_for(self, size: int, free: int) -> bool:
        return free - self.held - self.keep_free >= size

    def reserve(self, size: int) -> None:
        self.reserved += size

    def took(self, size: int) -> None:
        """`size` more bytes of a reservation are on the disk."""
        self.landed += size

    def release(self, size: int, took: int = 0) -> None:
        """A reservation of `size` ended, `took` bytes of it on the disk (a file kept, or
        deleted: either way the free space read next says so)."""
        self.reserved = max(0, self.reserved - size)
        self.landed = max(0, self.landed - took)

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

    # -- the words: every refusal names the setting that made it, if one did ---------------

    def kept(self) -> str:
        """What the mirror leaves free, as the organiser set it, for the end of a line (its
        callers say nothing of it when nothing is kept)."""
        return f"it keeps {human(self.keep_free)} free (keep_free_bytes)"

    def no_room(self, name: str, size: int, free: int) -> str:
        """A file of known size refused before a byte."""
        kept = f", and {self.kept()}" if self.keep_free else ""
        return f"the mirror's disk has no room for {name} ({human(size)}): {human(free)} free{kept}"

    def fullness(self, free: int) -> str:
        """Why files of unknown size are refused, once full() says so: 'full' only when
        it is (a file of unknown size that filled it is deleted, which frees its room)."""
        if self.keep_free and free <= self.keep_free:
            state = "full" if free < MARGIN else "nearly full"
            keep = human(self.keep_free)
            return f"{state}: {human(free)} free, below the {keep} it keeps free (keep_free_bytes)"
        if free < MARGIN:  # a full disk needs no reason ("below the 0 B it keeps free")
            return f"full: {human(free)} free"
        return f"nearly full: {human(free)} free, and a file of unknown size filled it"

    def warning(self, free: int) -> str | None:
        """The organiser's line while files are refused for want of room (/status and
        the log), or None while there is room."""
        if self.full(free):
            which = "new files" if free <= self.keep_free else "files of unknown size"
            return f"disk {self.fullness(free)}; {which} are not kept, cached ones are still served"
        too_big = self.refused(free)
        if too_big is None:
            return None
        room = max(0, free - self.keep_free - self.held)
        kept = f" ({self.kept()})" if self.keep_free else ""
        return (
            f"no room for a file of {human(too_big)}: {human(room)} left to the store on its"
            f" disk{kept}; smaller files are still kept"
        )

    def unknown_size(self, name: str, free: int) -> str:
        """A file whose size nobody gave, refused: it could only find out by filling it."""
        return f"the mirror's disk is {self.fullness(free)}; {name} has no known size"


def start_warning(free: int, keep_free: int) -> str | None:
    """A line at start when the store's disk leaves little or no room beyond what the
    mirror keeps free: every file would be refused, each saying so, and nobody is told why
    until a client is."""
    if not keep_free or free >= 2 * keep_free:
        return None
    said = f"Mirror store: its disk has {human(free)} free and the mirror keeps {human(keep_free)}"
    said += " free (keep_free_bytes)"
    if free <= keep_free:
        return f"{said}, so it keeps no new file; lower keep_free_bytes or use a larger disk"
    room = human(free - keep_free)
    return f"{said}, so only {room} of new files fit; lower keep_free_bytes or use a larger disk"
