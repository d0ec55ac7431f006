"""The bob session as a state machine: bytes and calls in, events and bytes out (no I/O).

Both sides run the same class. The adapter feeds what the socket gave with
`receive_data`, takes events with `next_event`, and writes whatever
`data_to_send` returns; calls like `send_offer` return the bytes to write. Every
state change goes through `transitions.TABLE`; any failure leaves the session in
State.ERROR, where only `abort` still works.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from retreatkit.transfer import hints, records, resume
from retreatkit.transfer.codes import Code
from retreatkit.transfer.cursor import Cursor
from retreatkit.transfer.errors import (
    LocalProtocolError,
    RemoteProtocolError,
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
from retreatkit.transfer.inbound import DIRECT, STAY, Inbound
from retreatkit.transfer.offer import Entry, Offer
from retreatkit.transfer.pake import (
    Entropy,
    Pake,
    SessionKeys,
    Side,
)
from retreatkit.transfer.records import RECORD_SIZE, Kind
from retreatkit.transfer.states import Move, State

__all__ = ["Aborted", "Answered", "Confirmed", "Done", "Ended", "Event", "FileData"]
__all__ += ["FileEnd", "Hinted", "Offered", "PathAcked", "PathChosen", "Prefixed"]
__all__ += ["Session", "Started", "State"]

_T = TypeVar("_T")


class Session(Inbound):
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
        self.cursor = Cursor(side)
        self._offer_buf = bytearray()
        self._offer_len = 0
        # hints, resume and the path (PROTOCOL.md 6)
        self._hinted = False  # we sent our HINTS
        self._peer_hinted = False  # the peer's HINTS came, as its first record
        self.claim = resume.NOTHING  # what the receiver holds of the offer already
        self.start_at = resume.NOTHING  # where the data starts
        self.direct: bytes | None = None  # the direct connection PATH chose, if any
        self._path_acked = False
        self._eof = False

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
        return self.cursor.files

    @property
    def bytes_done(self) -> int:
        return self.cursor.bytes_done

    @property
    def stream_limit(self) -> int | None:
        """The receiver's bound on a stream of unknown length (PROTOCOL.md 5)."""
        return self.cursor.stream_limit

    @stream_limit.setter
    def stream_limit(self, limit: int | None) -> None:
        self.cursor.stream_limit = limit

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
            body = STAY if direct is None else DIRECT + direct
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
            self.cursor.check_complete()
            out = self._seal(Kind.FILE_END, b"")
            self.cursor.next_file()
            return out

        return self._guard(move)

    def end(self) -> bytes:
        def move() -> bytes:
            if self.state is State.TRANSFER and not self.cursor.finished:
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

    def _seal(self, kind: Kind, body: bytes) -> bytes:
        if self._sealer is None:
            raise LocalProtocolError("no keys yet")
        return self._sealer.seal(kind, body)

    def _send_data(self, chunk: bytes | memoryview, compress: bool, out: memoryview) -> int:
        if not chunk or len(chunk) > RECORD_SIZE:
            raise LocalProtocolError(f"a DATA record holds 1 to {RECORD_SIZE} bytes")
        self._move(Move.SENT_DATA)
        self.cursor.count(len(chunk))
        packed = self.cursor.packed(chunk, compress)
        if packed is not None:
            return self.sealer().seal_into(Kind.DATA_Z, packed, out)
        return self.sealer().seal_into(Kind.DATA, chunk, out)
