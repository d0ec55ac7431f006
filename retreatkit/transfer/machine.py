"""The bob session as a state machine: bytes and calls in, events and bytes out (no I/O).

Both sides run the same class. The adapter feeds what the socket gave with
`receive_data`, takes events with `next_event`, and writes whatever
`data_to_send` returns; calls like `send_offer` return the bytes to write.
"""

from __future__ import annotations

import enum
import hashlib
import os
import zlib
from dataclasses import dataclass

from retreatkit.transfer import records
from retreatkit.transfer.codes import Code
from retreatkit.transfer.errors import (
    LocalProtocolError,
    PakeFailed,
    RemoteProtocolError,
    UnsafeOffer,
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

# A record that zlib cannot shrink by a tenth is sent raw, and the next few are not
# even tried: zlib level 1 crawls at ~60 MB/s on incompressible data.
_COMPRESS_GAIN = 0.9
_COMPRESS_BACKOFF = 64


class State(enum.Enum):
    PAKE = "pake"  # waiting for the peer's PAKE message
    CONFIRM = "confirm"  # waiting for the peer's key confirmation
    READY = "ready"  # keys confirmed: sender offers, receiver waits for the offer
    OFFERED = "offered"  # offer sent or received, no answer yet
    TRANSFER = "transfer"  # file data flowing
    ENDED = "ended"  # sender sent or receiver got END
    CLOSED = "closed"  # DONE exchanged, or aborted


@dataclass(frozen=True, slots=True)
class Confirmed:
    verifier: str


@dataclass(frozen=True, slots=True)
class Offered:
    offer: Offer


@dataclass(frozen=True, slots=True)
class Answered:
    accepted: bool


@dataclass(frozen=True, slots=True)
class FileData:
    data: bytes


@dataclass(frozen=True, slots=True)
class FileEnd:
    index: int  # into offer.files


@dataclass(frozen=True, slots=True)
class Ended:
    pass


@dataclass(frozen=True, slots=True)
class Done:
    pass


@dataclass(frozen=True, slots=True)
class Aborted:
    reason: str


Event = Confirmed | Offered | Answered | FileData | FileEnd | Ended | Done | Aborted


class Session:
    """One side of a session: PAKE, key confirmation, offer, data, end."""

    def __init__(self, side: Side, code: Code, entropy: Entropy = os.urandom) -> None:
        self.side = side
        self.state = State.PAKE
        self._pake = Pake(side, code.pake_password(), entropy)
        self._parser = records.FrameParser()
        self._keys: SessionKeys | None = None
        self._sealer: records.Sealer | None = None
        self._opener: records.Opener | None = None
        self._outbox: list[bytes] = []
        self.offer: Offer | None = None
        self._offer_buf = bytearray()
        self._offer_len = 0
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
        return records.frame(Kind.PAKE, self._pake.start())

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

    # -- sending ------------------------------------------------------------------

    def send_offer(self, offer: Offer) -> bytes:
        self._expect(Side.SENDER, State.READY)
        self.offer = offer
        self.state = State.OFFERED
        encoded = offer.encode()
        return b"".join(
            self._seal(Kind.OFFER, encoded[i : i + RECORD_SIZE])
            for i in range(0, len(encoded), RECORD_SIZE)
        )

    def answer(self, accept: bool) -> bytes:
        self._expect(Side.RECEIVER, State.OFFERED)
        self.state = State.TRANSFER if accept else State.CLOSED
        if accept:
            self._next_file()
        return self._seal(Kind.ANSWER, b"yes" if accept else b"no")

    def send_data(self, chunk: bytes, compress: bool = True) -> bytes:
        """One record of the current file (at most RECORD_SIZE bytes)."""
        self._expect(Side.SENDER, State.TRANSFER)
        if len(chunk) > RECORD_SIZE:
            raise LocalProtocolError("chunk larger than a record")
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

    def end_file(self) -> bytes:
        """Closes the current file with the hash of what was sent."""
        self._expect(Side.SENDER, State.TRANSFER)
        self._check_size_complete()
        out = self._seal(Kind.FILE_END, self._hash.digest())
        self._next_file()
        return out

    def end(self) -> bytes:
        self._expect(Side.SENDER, State.TRANSFER)
        if self.offer is not None and self._file_index < len(self.offer.files):
            raise LocalProtocolError("END before every file was sent")
        self.state = State.ENDED
        return self._seal(Kind.END, b"")

    def done(self) -> bytes:
        self._expect(Side.RECEIVER, State.ENDED)
        self.state = State.CLOSED
        return self._seal(Kind.DONE, b"")

    def abort(self, reason: str) -> bytes:
        """Tell the peer why we give up; empty if keys are not confirmed yet."""
        if self._sealer is None or self._sealer.closed or self.state is State.CLOSED:
            return b""
        self.state = State.CLOSED
        return self._seal(Kind.ABORT, reason.encode("utf-8", "replace")[:512])

    # -- internals ----------------------------------------------------------------

    def _check_eof(self) -> None:
        """The peer closed the connection: fine only once the session is over."""
        if self._parser.buffered:
            raise RemoteProtocolError("the connection ended in the middle of a record")
        if self.state is State.CLOSED or (self.side is Side.RECEIVER and self.state is State.ENDED):
            return
        raise RemoteProtocolError(f"the connection ended early, during {self.state.value}")

    def _expect(self, side: Side, state: State) -> None:
        if self.side is not side or self.state is not state:
            raise LocalProtocolError(
                f"{self.side.value} cannot do that in state {self.state.value}"
            )

    def _seal(self, kind: Kind, body: bytes) -> bytes:
        if self._sealer is None:
            raise LocalProtocolError("no keys yet")
        return self._sealer.seal(kind, body)

    def _next_file(self) -> None:
        self._file_index += 1
        self._file_done = 0
        self._hash = hashlib.sha256()
        self._backoff = 0
        self._backoff_next = _COMPRESS_BACKOFF

    def _current_file_size(self) -> int | None:
        files = self._offer_files()
        if self._file_index >= len(files):
            raise RemoteProtocolError("the peer sent data beyond the last offered file")
        return files[self._file_index].size

    def _count(self, chunk: bytes) -> None:
        size = self._current_file_size()
        self._file_done += len(chunk)
        self.bytes_done += len(chunk)
        if size is not None and self._file_done > size:
            raise self._size_error("more data than it announced")
        self._hash.update(chunk)

    def _check_size_complete(self) -> None:
        size = self._current_file_size()
        if size is not None and self._file_done != size:
            raise self._size_error(f"{self._file_done} of the {size} bytes it announced")

    def _size_error(self, what: str) -> LocalProtocolError | RemoteProtocolError:
        name = display_path(self._offer_files()[self._file_index].path)
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
        if rkind is Kind.ABORT:
            self.state = State.CLOSED
            # the peer's words go to a terminal: no escape sequences, one line
            return Aborted(escape(plain.decode("utf-8", "replace")))
        if self.side is Side.RECEIVER:
            return self._receiver(rkind, plain)
        return self._sender(rkind, plain)

    def _handshake(self, kind: int, body: bytes) -> Event | None:
        if self.state is State.PAKE:
            if kind != Kind.PAKE:
                raise PakeFailed("key exchange failed: the peer is not speaking bob/1")
            self._keys = self._pake.finish(body)
            self._sealer = records.Sealer(self._keys.send)
            self._opener = records.Opener(self._keys.receive)
            self._outbox.append(records.frame(Kind.CONFIRM, self._keys.my_confirm))
            self.state = State.CONFIRM
            return None
        if kind != Kind.CONFIRM or len(body) != CONFIRM_SIZE or self._keys is None:
            raise PakeFailed("key exchange failed: no key confirmation from the peer")
        check_confirmation(self._keys, body)
        self.state = State.READY
        return Confirmed(self._keys.verifier)

    def _sender(self, kind: Kind, plain: bytes) -> Event | None:
        if kind is Kind.ANSWER and self.state is State.OFFERED:
            accepted = plain == b"yes"
            self.state = State.TRANSFER if accepted else State.CLOSED
            if accepted:
                self._next_file()
            return Answered(accepted)
        if kind is Kind.DONE and self.state is State.ENDED:
            self.state = State.CLOSED
            return Done()
        raise RemoteProtocolError(f"the receiver sent {kind.name} during {self.state.value}")

    def _receiver(self, kind: Kind, plain: bytes) -> Event | None:
        state = self.state
        if kind is Kind.OFFER and state is State.READY:
            return self._offer_chunk(plain)
        if state is State.TRANSFER:
            if kind is Kind.DATA:
                self._count(plain)
                return FileData(plain)
            if kind is Kind.DATA_Z:
                data = _inflate(plain)
                self._count(data)
                return FileData(data)
            if kind is Kind.FILE_END:
                self._check_size_complete()
                if plain != self._hash.digest():
                    raise RemoteProtocolError(
                        "content hash mismatch for "
                        + display_path(self._offer_files()[self._file_index].path)
                    )
                index = self._file_index
                self._next_file()
                return FileEnd(index)
            if kind is Kind.END:
                if self._file_index < len(self._offer_files()):
                    raise RemoteProtocolError("the sender ended before sending every file")
                self.state = State.ENDED
                return Ended()
        raise RemoteProtocolError(f"the sender sent {kind.name} during {state.value}")

    def _offer_files(self) -> tuple[Entry, ...]:
        assert self.offer is not None
        return self.offer.files

    def _offer_chunk(self, plain: bytes) -> Event | None:
        if not self._offer_buf:
            self._offer_len = offer_length(plain)
        self._offer_buf += plain
        if len(self._offer_buf) > self._offer_len:
            raise UnsafeOffer("the offer is longer than it announced")
        if len(self._offer_buf) < self._offer_len:
            return None
        self.offer = Offer.decode(bytes(self._offer_buf[4:]))
        self._offer_buf = bytearray()
        self.state = State.OFFERED
        return Offered(self.offer)


def _inflate(packed: bytes) -> bytes:
    """One DATA_Z record: a whole zlib stream of its own (as send_data makes it).

    The output is bounded: a zip bomb stops at one record's worth.
    """
    inflate = zlib.decompressobj()
    try:
        data = inflate.decompress(packed, RECORD_SIZE)
    except zlib.error:
        raise RemoteProtocolError("a compressed record is corrupt") from None
    if inflate.unconsumed_tail or (not inflate.eof and len(data) >= RECORD_SIZE):
        raise RemoteProtocolError("a compressed record expands beyond its limit")
    if not inflate.eof or inflate.unused_data:
        raise RemoteProtocolError("a compressed record is truncated or has trailing data")
    return data
