"""Refusals for want of room, in the organiser's log: one line a while, not one a request.

Every file a client asks for on a full disk is refused, and every client retries (apt,
pip and npm each a few times): said per refusal, a room of attendees buries the log in
one cause. While the disk is full, one line says so (the same words as /status) with
the first refusal it explains; a file too big for the room left is said once a while
per file, as smaller files are still kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from retreatkit import lognews
from retreatkit.mirror.store import Store

log = logging.getLogger("retreatkit.mirror")
FULL = "\0full"  # the key of the one line for a full disk: no file is named so


class NoRoom:
    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        self._news = lognews.News(most=256)

    def said(self, name: str, line: str) -> None:
        """`line` (what was refused, for want of room, and why) in the log, unless this
        cause was said a moment ago: the disk full, or else `name` too big."""
        free = self.store.free_bytes()
        space = self.store.space
        full = space.full(free)
        if not self._news.news(FULL if full else name, self.clock()):
            return
        if full:  # the words of /status, and the refusal that found it so
            log.warning("%s (%s)", space.warning(free), line)
        else:
            log.warning("%s", line)
