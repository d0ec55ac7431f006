"""The bob session as a state machine: bytes and calls in, events and bytes out (no I/O).

Both sides run the same class. The adapter feeds what the socket gave with
`receive_data`, takes events with `next_event`, and writes whatever
`data_to_send` returns; calls like `send_offer` return the bytes to write. Every
state change goes through `transitions.TABLE`; any failure leaves the session in
State.ERROR, where only `abort` still works.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from typing import TypeVar

from retreatkit.transfer import hints, records, resume
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
    Hinted,
    Offered,
    PathAcked,
    PathChosen,
    Prefixed,
    Started,
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
__all__ += ["FileEnd", "Hinted", "Offered", "PathAcked", "PathChosen", "Prefixed"]
__all__ += ["Session", "Started", "State"]

# A record that zlib cannot shrink by a tenth is sent raw, and the next few are not
# even tried: zlib level 1 crawls at ~60 MB/s on incompressible data.
_COMPRESS_GAIN = 0.9
_COMPRESS_BACKOFF = 64
_T = TypeVar("_T")


_GOT = {
    Kind.HINTS: Move.GOT_HINTS,
    Kind.OFFER: Move.GOT_OFFER_PART,
    Kind.PREFIX: Move.GOT_PREFIX,
    Kind.FROM: Move.GOT_FROM,
    Kind.PATH: Move.GOT_PATH,
    Kind.PATH_ACK: Move.GOT_PATH_ACK,
    Kind.DATA: Move.GOT_DATA,
    Kind.DATA_Z: Move.GOT_DATA,
    Kind.FILE_END: Move.GOT_FILE_END,
    Kind.END: Move.GOT_END,
    Kind.DONE: Move.GOT_DONE,
    Kind.ABORT: Move.GOT_ABORT,
}
_STAY = b"\x00"  # PATH: the records go on where they went so far
_DIRECT = b"\x01"  # PATH: they go on the direct connection whose sender nonce follows


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
        # hints, resume and the path (PROTOCOL.md 6)
        self._hinted = False  # we sent our HINTS
        self._peer_hinted = False  # the peer's HINTS came, as its first record
        self.claim = resume.NOTHING  # what the receiver holds of the offer already
        self.start_at = resume.NOTHING  # where the data starts
        self.direct: bytes | None = None  # the direct connection PATH chose, if any
        self._path_acked = False
        # the file being streamed (either direction)
        self._file_index = -1
        self._file_done = 0
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

    def receive_frame(
        self, kind: int, head: bytes, body: memoryview, out: memoryview | None = None
    ) -> Event | None:
        """One whole frame, framed by the caller (the receive hot path skips the byte
        parser). With `out`, a DATA record is decrypted straight into it (at least
        RECORD_SIZE bytes) and FileData holds a view of it, valid until the next call."""
        return self._guard(lambda: self._handle(kind, head, body, out))

    @property
    def files(self) -> tuple[Entry, ...]:
        return self._files

    @property
    def revealed(self) -> bool:
        """Our CONFIRM is out: the peer can check a guess at the passphrase with it."""
        return self._keys is not None

    @property
    def keys(self) -> SessionKeys | None:
        """The session's keys, once the peer's confirmation checked out."""
        return self._keys if self._verified else None

    def sealer(self) -> records.Sealer:
        if self._sealer is None:
            raise LocalProtocolError("no keys yet")
        return self._sealer

    # -- sending ------------------------------------------------------------------

    def send_hints(self, offered: list[hints.Hint]) -> bytes:
        """Our first record once the keys are confirmed: where we listen (maybe nowhere)."""

        def move() -> bytes:
            if self._hinted:
                raise LocalProtocolError("HINTS go once")
            self._move(Move.SENT_HINTS)
            self._hinted = True
            return self._seal(Kind.HINTS, hints.encode(offered))

        return self._guard(move)

    def send_offer(self, offer: Offer) -> bytes:
        def move() -> bytes:
            if not self._hinted:
                raise LocalProtocolError("HINTS go first")
            self._move(Move.SENT_OFFER)
            self._set_offer(offer)
            encoded = offer.encode()
            return b"".join(
                self._seal(Kind.OFFER, encoded[i : i + RECORD_SIZE])
                for i in range(0, len(encoded), RECORD_SIZE)
            )

        return self._guard(move)

    def answer(self, accept: bool, claim: resume.Claim = resume.NOTHING) -> bytes:
        """Yes, with what we already hold of the offer (resume.Claim), or no."""

        def move() -> bytes:
            self._move(Move.SENT_YES if accept else Move.SENT_NO)
            if not accept:
                return self._seal(Kind.ANSWER, b"no")
            assert self.offer is not None
            try:
                resume.prefix(self.offer.files, claim)
            except RemoteProtocolError as exc:  # our own claim: our bug, not the peer's
                raise LocalProtocolError(str(exc)) from None
            self.claim = claim
            return self._seal(Kind.ANSWER, resume.YES + claim.encode())

        return self._guard(move)

    def send_prefix(self, hashes: list[bytes]) -> bytes:
        """The sender's block hashes of the part the receiver claims to hold."""

        def move() -> bytes:
            self._move(Move.SENT_PREFIX)
            if self.claim == resume.NOTHING:
                raise LocalProtocolError("no PREFIX for a receiver that holds nothing")
            if len(hashes) != resume.block_count(self._claimed()):
                raise LocalProtocolError("PREFIX must hash every block of the claim")
            return self._seal(Kind.PREFIX, resume.encode_hashes(hashes))

        return self._guard(move)

    def send_from(self, start: resume.Claim) -> bytes:
        """Where the data starts again, once our own hashes were compared with the sender's."""

        def move() -> bytes:
            self._move(Move.SENT_FROM)
            resume.check_start(self.claim, start)
            self.start_at = start
            return self._seal(Kind.FROM, start.encode())

        return self._guard(move)

    def send_path(self, direct: bytes | None) -> bytes:
        """The sender's choice: the records go on here, or on the direct connection whose
        sender nonce this is. Data follows."""

        def move() -> bytes:
            if self.state is State.ACCEPTED and self.claim != resume.NOTHING:
                raise LocalProtocolError("PATH comes after the resume exchange")
            self._move(Move.SENT_PATH)
            self.direct = direct
            self._begin_data()
            body = _STAY if direct is None else _DIRECT + direct
            return self._seal(Kind.PATH, body)

        return self._guard(move)

    def path_ack(self) -> bytes:
        """The receiver's last record where PATH came: its next ones go direct too."""

        def move() -> bytes:
            if self.direct is None or self._path_acked:
                raise LocalProtocolError("PATH_ACK answers a direct PATH, once")
            self._move(Move.SENT_PATH_ACK)
            self._path_acked = True
            return self._seal(Kind.PATH_ACK, b"")

        return self._guard(move)

    def send_data(self, chunk: bytes, compress: bool = True) -> bytes:
        """One record of the current file: 1 to RECORD_SIZE bytes."""

        def move() -> bytes:
            out = bytearray(records.HEADER_SIZE + records.MAX_BODY)
            return bytes(out[: self._send_data(chunk, compress, memoryview(out))])

        return self._guard(move)

    def send_data_into(
        self, chunk: bytes | memoryview, out: memoryview, compress: bool = True
    ) -> int:
        """The same, sealed straight into `out` (room for a whole record); the sender's
        hot path, with no copy of the record. Returns the bytes written."""
        return self._guard(lambda: self._send_data(chunk, compress, out))

    def end_file(self) -> bytes:
        """Closes the current file: empty, since the AEAD vouched for every record."""

        def move() -> bytes:
            self._move(Move.SENT_FILE_END)
            self._check_size_complete()
            out = self._seal(Kind.FILE_END, b"")
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

    def _claimed(self) -> int:
        return resume.prefix(self._files, self.claim)

    def _begin_data(self) -> None:
        """The data starts where the receiver said (the start of the offer if it holds
        nothing): whole files before that are not sent again."""
        start = self.start_at
        self._file_index = start.index
        self._file_done = start.length
        self.bytes_done = sum(e.size or 0 for e in self._files[: start.index]) + start.length
        self._backoff = 0
        self._backoff_next = _COMPRESS_BACKOFF

    def _next_file(self) -> None:
        self._file_index += 1
        self._file_done = 0
        self._backoff = 0
        self._backoff_next = _COMPRESS_BACKOFF

    def _send_data(self, chunk: bytes | memoryview, compress: bool, out: memoryview) -> int:
        if not chunk or len(chunk) > RECORD_SIZE:
            raise LocalProtocolError(f"a DATA record holds 1 to {RECORD_SIZE} bytes")
        self._move(Move.SENT_DATA)
        self._count(len(chunk))
        sealer = self.sealer()
        if compress and self._backoff == 0 and len(chunk) >= 512:
            packed = zlib.compress(chunk, 1)
            if len(packed) <= len(chunk) * _COMPRESS_GAIN:
                return sealer.seal_into(Kind.DATA_Z, packed, out)
            # each failed probe waits twice as long before the next one
            self._backoff = self._backoff_next
            self._backoff_next = min(self._backoff_next * 2, 4096)
        elif self._backoff:
            self._backoff -= 1
        return sealer.seal_into(Kind.DATA, chunk, out)

    def _current_file(self) -> Entry:
        if self._file_index >= len(self._files):
            raise RemoteProtocolError("the peer sent data beyond the last offered file")
        return self._files[self._file_index]

    def _count(self, length: int) -> None:
        entry = self._current_file()
        self._file_done += length
        self.bytes_done += length
        size = entry.size
        if size is not None and self._file_done > size:
            raise self._size_error("more data than it announced")
        limit = self.stream_limit
        if size is None and limit is not None and self._file_done > limit:
            raise OverLimit(
                f"{display_path(entry.path)} went over {limit} bytes, all this receiver takes"
            )

    def _check_size_complete(self) -> None:
        size = self._current_file().size
        if size is not None and self._file_done != size:
            raise self._size_error(f"{self._file_done} of the {size} bytes it announced")

    def _size_error(self, what: str) -> LocalProtocolError | RemoteProtocolError:
        name = display_path(self._files[self._file_index].path)
        if self.side is Side.SENDER:
            return LocalProtocolError(f"{name} changed while being sent: {what}")
        return RemoteProtocolError(f"the sender sent {what} for {name}")

    def _handle(
        self, kind: int, head: bytes, view: memoryview, out: memoryview | None = None
    ) -> Event | None:
        if self.state is State.CLOSED:
            raise RemoteProtocolError("the peer sent data after the session closed")
        if self.state in (State.PAKE, State.CONFIRM):
            return self._handshake(kind, bytes(view))
        assert self._opener is not None
        if kind == Kind.DATA and out is not None and self._peer_hinted:
            # the hot path: decrypt in place, no allocation (the checks are the same)
            length = len(view) - records.TAG_SIZE
            if length <= 0:
                self._opener.open_into(kind, head, view, out[:0])  # raises: no tag
                raise RemoteProtocolError("the sender sent an empty data record")
            if length > len(out):
                raise RemoteProtocolError("a data record is longer than a record may hold")
            self._opener.open_into(kind, head, view, out[:length])
            self._move(Move.GOT_DATA, "DATA")
            self._count(length)
            return FileData(out[:length])
        rkind, plain = self._opener.open(kind, head, view)
        if not self._peer_hinted and rkind not in (Kind.HINTS, Kind.ABORT):
            raise RemoteProtocolError(f"the peer sent {rkind.name} before its HINTS")
        if rkind is Kind.ANSWER:
            if (self.side, self.state, Move.GOT_YES) not in TABLE:
                self._move(Move.GOT_YES, rkind.name)  # raises: not the time for an answer
            return self._answered(plain)
        if rkind not in _GOT:  # a valid record type that never travels this way
            raise RemoteProtocolError(f"the peer sent {rkind.name} during {self.state.value}")
        move = _GOT[rkind]
        if move is Move.GOT_PATH and self.state is State.ACCEPTED and self.claim != resume.NOTHING:
            raise RemoteProtocolError("the sender chose a path before the resume exchange")
        if move is Move.GOT_OFFER_PART:
            self._move(move)
            return self._offer_chunk(plain)
        self._move(move, rkind.name)
        if move is Move.GOT_ABORT:
            # the peer's words go to a terminal: no escape sequences, one line
            return Aborted(escape(plain.decode("utf-8", "replace")))
        if move is Move.GOT_DONE:
            return Done()
        if move in (Move.GOT_DATA, Move.GOT_FILE_END, Move.GOT_END):
            return self._receive(rkind, plain, out)
        return self._control(move, plain)

    def _answered(self, plain: bytes) -> Event:
        if plain == b"no":
            self._move(Move.GOT_NO)
            return Answered(False)
        if not plain.startswith(resume.YES):
            raise RemoteProtocolError("the receiver answered neither yes nor no")
        claim = resume.Claim.decode(plain[len(resume.YES) :])
        self._move(Move.GOT_YES)
        resume.prefix(self._files, claim)  # raises on a claim no receiver could hold
        self.claim = claim
        return Answered(True, claim)

    def _control(self, move: Move, plain: bytes) -> Event:
        """HINTS, PREFIX, FROM, PATH and PATH_ACK: each checked against what came before."""
        if move is Move.GOT_HINTS:
            if self._peer_hinted:
                raise RemoteProtocolError("the peer sent its HINTS twice")
            self._peer_hinted = True
            return Hinted(hints.decode(plain))
        if move is Move.GOT_PREFIX:
            if self.claim == resume.NOTHING:
                raise RemoteProtocolError("the sender sent hashes of nothing")
            return Prefixed(resume.decode_hashes(plain, self._claimed()))
        if move is Move.GOT_FROM:
            start = resume.Claim.decode(plain)
            resume.check_start(self.claim, start)
            self.start_at = start
            return Started(start)
        if move is Move.GOT_PATH:
            if plain == _STAY:
                self.direct = None
            elif len(plain) == 1 + hints.NONCE_SIZE and plain[:1] == _DIRECT:
                self.direct = plain[1:]
            else:
                raise RemoteProtocolError("the sender's PATH is malformed")
            self._begin_data()
            return PathChosen(self.direct)
        # PATH_ACK
        if self.direct is None or self._path_acked or plain:
            raise RemoteProtocolError("the receiver acknowledged a path it was not given")
        self._path_acked = True
        return PathAcked()

    def _receive(self, kind: Kind, plain: bytes, out: memoryview | None) -> Event:
        if kind is Kind.DATA or kind is Kind.DATA_Z:
            data = records.inflate(plain) if kind is Kind.DATA_Z else plain
            if not data:  # each record must move the file on (PROTOCOL.md 5)
                raise RemoteProtocolError("the sender sent an empty data record")
            self._count(len(data))
            if out is not None:
                out[: len(data)] = data
                return FileData(out[: len(data)])
            return FileData(data)
        if kind is Kind.FILE_END:
            if plain:
                raise RemoteProtocolError("the sender's FILE_END is not empty")
            self._check_size_complete()
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
