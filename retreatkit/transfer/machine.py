"""The bob session as a state machine: bytes and calls in, events and bytes out (no I/O).

Both sides run the same class. The adapter feeds what the socket gave with
`receive_data`, takes events with `next_event`, and writes whatever
`data_to_send` returns; calls like `send_offer` return the bytes to write. Every
state change goes through `transitions.TABLE`; any failure leaves the session in
State.ERROR, where only `abort` still works.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Callable
from typing import TypeVar

from retreatkit.transfer import records
from retreatkit.transfer.codes import Code
from retreatkit.transfer.errors import (
    LocalProtocolError,
    OverLimit,
    PakeFailed,
    RemoteProtocolError,
    UnsafeOffer,
)
from retreatkit.transfer.events import (
    Aborted,
    Answered,
    Confirmed,
    Done,
    Ended,
    Event,
    FileData,
    FileEnd,
    Offered,
)
from retreatkit.transfer.offer import Entry, Offer, display_path, escape, offer_length
from retreatkit.transfer.pake import (
    CONFIRM_SIZE,
    Entropy,
    Pake,
    SessionKeys,
    Side,
    check_confirmation,
)
from retreatkit.transfer.records import RECORD_SIZE, Kind
from retreatkit.transfer.states import TABLE, Move, State

__all__ = ["Aborted", "Answered", "Confirmed", "Done", "Ended", "Event", "FileData"]
__all__ += ["FileEnd", "Offered", "Session", "State"]

# A record that zlib cannot shrink by a tenth is sent raw, and the next few are not
# even tried: zlib level 1 crawls at ~60 MB/s on incompressible data.
_COMPRESS_GAIN = 0.9
_COMPRESS_BACKOFF = 64
_T = TypeVar("_T")


_GOT = {
    Kind.OFFER: Move.GOT_OFFER_PART,
    Kind.DATA: Move.GOT_DATA,
    Kind.DATA_Z: Move.GOT_DATA,
    Kind.FILE_END: Move.GOT_FILE_END,
    Kind.END: Move.GOT_END,
    Kind.DONE: Move.GOT_DONE,
    Kind.ABORT: Move.GOT_ABORT,
}


class Session:
    """One side of a session: PAKE, key confirmation, offer, data, end."""

    def __init__(self, side: Side, code: Code, entropy: Entropy = os.urandom) -> None:
        self.side = side
        self.state = State.PAKE
        self.error: Exception | None = None  # what put the session in ERROR
        self._verified = False  # the peer's key confirmation checked out
        self._pake = Pake(side, code.pake_password(), entropy)
        self._parser = records.FrameParser()
        self._keys: SessionKeys | None = None
        self._sealer: records.Sealer | None = None
        self._opener: records.Opener | None = None
        self._outbox: list[bytes] = []
        self.offer: Offer | None = None
        self._files: tuple[Entry, ...] = ()
        self._offer_buf = bytearray()
        self._offer_len = 0
        # the receiver's bound on a stream of unknown length (PROTOCOL.md 5)
        self.stream_limit: int | None = None
        # the file being streamed (either direction)
        self._file_index = -1
        self._file_done = 0
        self._hash = hashlib.sha256()
        self._backoff = 0
        self._backoff_next = _COMPRESS_BACKOFF
        self._eof = False
        self.bytes_done = 0

    # -- the adapter's three verbs -------------------------------------------------

    def start(self) -> bytes:
        return self._guard(lambda: records.frame(Kind.PAKE, self._pake.start()))

    def receive_data(self, data: bytes) -> None:
        """What the peer sent; b"" says the peer closed the connection (as in h11)."""
        if not data:
            self._eof = True
        self._parser.feed(data)

    def data_to_send(self) -> bytes:
        out = b"".join(self._outbox)
        self._outbox.clear()
        return out

    def next_event(self) -> Event | None:
        """The next event, or None when more bytes are needed. Raises on a broken peer."""
        return self._guard(self._next_event)

    # -- sending ------------------------------------------------------------------

    def send_offer(self, offer: Offer) -> bytes:
        def move() -> bytes:
            self._move(Move.SENT_OFFER)
            self._set_offer(offer)
            encoded = offer.encode()
            return b"".join(
                self._seal(Kind.OFFER, encoded[i : i + RECORD_SIZE])
                for i in range(0, len(encoded), RECORD_SIZE)
            )

        return self._guard(move)

    def answer(self, accept: bool) -> bytes:
        def move() -> bytes:
            self._move(Move.SENT_YES if accept else Move.SENT_NO)
            if accept:
                self._next_file()
            return self._seal(Kind.ANSWER, b"yes" if accept else b"no")

        return self._guard(move)

    def send_data(self, chunk: bytes, compress: bool = True) -> bytes:
        """One record of the current file: 1 to RECORD_SIZE bytes."""
        return self._guard(lambda: self._send_data(chunk, compress))

    def end_file(self) -> bytes:
        """Closes the current file with the hash of what was sent."""

        def move() -> bytes:
            self._move(Move.SENT_FILE_END)
            self._check_size_complete()
            out = self._seal(Kind.FILE_END, self._hash.digest())
            self._next_file()
            return out

        return self._guard(move)

    def end(self) -> bytes:
        def move() -> bytes:
            if self.state is State.TRANSFER and self._file_index < len(self._files):
                raise LocalProtocolError("END before every file was sent")
            self._move(Move.SENT_END)
            return self._seal(Kind.END, b"")

        return self._guard(move)

    def done(self) -> bytes:
        def move() -> bytes:
            self._move(Move.SENT_DONE)
            if self._parser.buffered:  # PROTOCOL.md 5: END is the sender's final record
                raise RemoteProtocolError("the sender sent data after its final record")
            return self._seal(Kind.DONE, b"")

        return self._guard(move)

    def abort(self, reason: str) -> bytes:
        """Tell the peer why we give up: empty before the keys are confirmed (the peer
        could not read it) or once the session is over."""
        sealer = self._sealer
        if sealer is None or sealer.closed or self._opener is None:
            return b""
        if self.state in (State.PAKE, State.CONFIRM, State.CLOSED):
            return b""
        if self.state is State.ERROR and not self._verified:
            return b""
        if self.state is not State.ERROR:
            self._move(Move.SENT_ABORT)
        return sealer.seal(Kind.ABORT, reason.encode("utf-8", "replace")[:512])

    # -- internals ----------------------------------------------------------------

    def _guard(self, call: Callable[[], _T]) -> _T:
        if self.state is State.ERROR:
            raise LocalProtocolError(f"the session already failed: {self.error}")
        try:
            return call()
        except Exception as exc:  # any failure, ours or the peer's, ends the session
            self.state, self.error = State.ERROR, exc
            raise

    def _move(self, move: Move, what: str | None = None) -> None:
        after = TABLE.get((self.side, self.state, move))
        if after is None:
            if move.ours:
                raise LocalProtocolError(
                    f"{self.side.value} cannot send {move.value.removeprefix('our ')}"
                    f" in state {self.state.value}"
                )
            peer = self.side.other.value
            raise RemoteProtocolError(
                f"the {peer} sent {what or move.value} during {self.state.value}"
            )
        self.state = after

    def _next_event(self) -> Event | None:
        while True:
            frame = self._parser.next()
            if frame is None:
                if self._eof:
                    self._check_eof()
                return None
            kind, head, view = frame
            try:
                event = self._handle(kind, head, view)
            finally:
                view.release()
            if event is not None:
                return event

    def _check_eof(self) -> None:
        """The peer closed the connection: fine only once the session is over."""
        if self._parser.buffered:
            raise RemoteProtocolError("the connection ended in the middle of a record")
        if self.state is State.CLOSED or (self.side is Side.RECEIVER and self.state is State.ENDED):
            return
        raise RemoteProtocolError(f"the connection ended early, during {self.state.value}")

    def _seal(self, kind: Kind, body: bytes) -> bytes:
        if self._sealer is None:
            raise LocalProtocolError("no keys yet")
        return self._sealer.seal(kind, body)

    def _set_offer(self, offer: Offer) -> None:
        self.offer = offer
        self._files = offer.files

    def _next_file(self) -> None:
        self._file_index += 1
        self._file_done = 0
        self._hash = hashlib.sha256()
        self._backoff = 0
        self._backoff_next = _COMPRESS_BACKOFF

    def _send_data(self, chunk: bytes, compress: bool) -> bytes:
        if not chunk or len(chunk) > RECORD_SIZE:
            raise LocalProtocolError(f"a DATA record holds 1 to {RECORD_SIZE} bytes")
        self._move(Move.SENT_DATA)
        self._count(chunk)
        if compress and self._backoff == 0 and len(chunk) >= 512:
            packed = zlib.compress(chunk, 1)
            if len(packed) <= len(chunk) * _COMPRESS_GAIN:
                return self._seal(Kind.DATA_Z, packed)
            # each failed probe waits twice as long before the next one
            self._backoff = self._backoff_next
            self._backoff_next = min(self._backoff_next * 2, 4096)
        elif self._backoff:
            self._backoff -= 1
        return self._seal(Kind.DATA, chunk)

    def _current_file(self) -> Entry:
        if self._file_index >= len(self._files):
            raise RemoteProtocolError("the peer sent data beyond the last offered file")
        return self._files[self._file_index]

    def _count(self, chunk: bytes) -> None:
        entry = self._current_file()
        self._file_done += len(chunk)
        self.bytes_done += len(chunk)
        size = entry.size
        if size is not None and self._file_done > size:
            raise self._size_error("more data than it announced")
        limit = self.stream_limit
        if size is None and limit is not None and self._file_done > limit:
            raise OverLimit(
                f"{display_path(entry.path)} went over {limit} bytes, all this receiver takes"
            )
        self._hash.update(chunk)

    def _check_size_complete(self) -> None:
        size = self._current_file().size
        if size is not None and self._file_done != size:
            raise self._size_error(f"{self._file_done} of the {size} bytes it announced")

    def _size_error(self, what: str) -> LocalProtocolError | RemoteProtocolError:
        name = display_path(self._files[self._file_index].path)
        if self.side is Side.SENDER:
            return LocalProtocolError(f"{name} changed while being sent: {what}")
        return RemoteProtocolError(f"the sender sent {what} for {name}")

    def _handle(self, kind: int, head: bytes, view: memoryview) -> Event | None:
        if self.state is State.CLOSED:
            raise RemoteProtocolError("the peer sent data after the session closed")
        if self.state in (State.PAKE, State.CONFIRM):
            return self._handshake(kind, bytes(view))
        assert self._opener is not None
        rkind, plain = self._opener.open(kind, head, view)
        if rkind is Kind.ANSWER:
            if (self.side, self.state, Move.GOT_YES) not in TABLE:
                self._move(Move.GOT_YES, rkind.name)  # raises: not the time for an answer
            if plain not in (b"yes", b"no"):
                raise RemoteProtocolError("the receiver answered neither yes nor no")
            move = Move.GOT_YES if plain == b"yes" else Move.GOT_NO
        elif rkind in _GOT:
            move = _GOT[rkind]
        else:  # a valid record type that never travels this way (PAKE, CONFIRM)
            raise RemoteProtocolError(f"the peer sent {rkind.name} during {self.state.value}")
        if move is Move.GOT_OFFER_PART:
            self._move(move)
            return self._offer_chunk(plain)
        self._move(move, rkind.name)
        if move is Move.GOT_ABORT:
            # the peer's words go to a terminal: no escape sequences, one line
            return Aborted(escape(plain.decode("utf-8", "replace")))
        if move is Move.GOT_YES:
            self._next_file()
            return Answered(True)
        if move is Move.GOT_NO:
            return Answered(False)
        if move is Move.GOT_DONE:
            return Done()
        return self._receive(rkind, plain)

    def _receive(self, kind: Kind, plain: bytes) -> Event:
        if kind is Kind.DATA or kind is Kind.DATA_Z:
            data = records.inflate(plain) if kind is Kind.DATA_Z else plain
            if not data:  # each record must move the file on (PROTOCOL.md 5)
                raise RemoteProtocolError("the sender sent an empty data record")
            self._count(data)
            return FileData(data)
        if kind is Kind.FILE_END:
            self._check_size_complete()
            if plain != self._hash.digest():
                name = display_path(self._files[self._file_index].path)
                raise RemoteProtocolError(f"content hash mismatch for {name}")
            index = self._file_index
            self._next_file()
            return FileEnd(index)
        # END
        if self._file_index < len(self._files):
            raise RemoteProtocolError("the sender ended before sending every file")
        if self._parser.buffered:
            raise RemoteProtocolError("the sender sent data after its final record")
        return Ended()

    def _handshake(self, kind: int, body: bytes) -> Event | None:
        if self.state is State.PAKE:
            if kind != Kind.PAKE:
                raise PakeFailed("key exchange failed: the peer is not speaking bob/1")
            self._keys = self._pake.finish(body)
            self._sealer = records.Sealer(self._keys.send)
            self._opener = records.Opener(self._keys.receive)
            self._outbox.append(records.frame(Kind.CONFIRM, self._keys.my_confirm))
            self._move(Move.GOT_PAKE)
            return None
        if kind != Kind.CONFIRM or len(body) != CONFIRM_SIZE or self._keys is None:
            raise PakeFailed("key exchange failed: no key confirmation from the peer")
        check_confirmation(self._keys, body)
        self._verified = True
        self._move(Move.GOT_CONFIRM)
        return Confirmed(self._keys.verifier)

    def _offer_chunk(self, plain: bytes) -> Event | None:
        if not self._offer_buf:
            self._offer_len = offer_length(plain)
        self._offer_buf += plain
        if len(self._offer_buf) > self._offer_len:
            raise UnsafeOffer("the offer is longer than it announced")
        if len(self._offer_buf) < self._offer_len:
            return None
        offer = Offer.decode(bytes(self._offer_buf[4:]))
        self._offer_buf = bytearray()
        self._move(Move.GOT_OFFER)
        self._set_offer(offer)
        return Offered(offer)
