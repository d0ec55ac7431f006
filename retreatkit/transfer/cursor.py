"""Where a session is in the offer's files: the current file, its bytes counted against
its size, the receiver's bound on a stream, and when compression is worth trying (no I/O)."""

from __future__ import annotations

import zlib

from retreatkit.transfer.errors import LocalProtocolError, OverLimit, RemoteProtocolError
from retreatkit.transfer.offer import Entry, display_path
from retreatkit.transfer.pake import Side
from retreatkit.transfer.resume import NOTHING, Claim

# A record that zlib cannot shrink by a tenth is sent raw, and the next few are not
# even tried: zlib level 1 crawls at ~60 MB/s on incompressible data.
_COMPRESS_GAIN = 0.9
_COMPRESS_BACKOFF = 64


class Cursor:
    """One side's position in the files of an offer, counting bytes as they go."""

    __slots__ = (
        "_backoff",
        "_backoff_next",
        "bytes_done",
        "done",
        "files",
        "index",
        "side",
        "stream_limit",
    )

    def __init__(self, side: Side) -> None:
        self.side = side
        self.files: tuple[Entry, ...] = ()
        self.index = -1  # the file being streamed
        self.done = 0  # its bytes so far
        self.bytes_done = 0  # of the whole offer, for progress
        # the receiver's bound on a stream of unknown length (PROTOCOL.md 5)
        self.stream_limit: int | None = None
        self._backoff = 0
        self._backoff_next = _COMPRESS_BACKOFF

    def begin(self, start: Claim = NOTHING) -> None:
        """The data starts where the receiver said: whole files before it are not sent."""
        self.index, self.done = start.index, start.length
        self.bytes_done = sum(e.size or 0 for e in self.files[: start.index]) + start.length
        self._backoff, self._backoff_next = 0, _COMPRESS_BACKOFF

    def next_file(self) -> None:
        self.index += 1
        self.done = 0
        self._backoff, self._backoff_next = 0, _COMPRESS_BACKOFF

    @property
    def finished(self) -> bool:
        return self.index >= len(self.files)

    def current(self) -> Entry:
        if self.index >= len(self.files):
            raise RemoteProtocolError("the peer sent data beyond the last offered file")
        return self.files[self.index]

    def count(self, length: int) -> None:
        entry = self.current()
        self.done += length
        self.bytes_done += length
        size = entry.size
        if size is not None and self.done > size:
            raise self.size_error("more data than it announced")
        limit = self.stream_limit
        if size is None and limit is not None and self.done > limit:
            raise OverLimit(
                f"{display_path(entry.path)} went over {limit} bytes, all this receiver takes"
            )

    def check_complete(self) -> None:
        size = self.current().size
        if size is not None and self.done != size:
            raise self.size_error(f"{self.done} of the {size} bytes it announced")

    def size_error(self, what: str) -> LocalProtocolError | RemoteProtocolError:
        name = display_path(self.files[self.index].path)
        if self.side is Side.SENDER:
            return LocalProtocolError(f"{name} changed while being sent: {what}")
        return RemoteProtocolError(f"the sender sent {what} for {name}")

    def packed(self, chunk: bytes | memoryview, compress: bool) -> bytes | None:
        """The chunk compressed, when that is worth it; None to send it raw."""
        if compress and self._backoff == 0 and len(chunk) >= 512:
            packed = zlib.compress(chunk, 1)
            if len(packed) <= len(chunk) * _COMPRESS_GAIN:
                return packed
            # each failed probe waits twice as long before the next one
            self._backoff = self._backoff_next
            self._backoff_next = min(self._backoff_next * 2, 4096)
        elif self._backoff:
            self._backoff -= 1
        return None
