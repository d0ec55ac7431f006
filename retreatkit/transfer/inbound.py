"""What the peer's records do to a session: the handshake, the offer, hints, resume,
the path and the data, each checked against the transition table (no I/O).

`Session` (machine.py) adds the calls that send; this half only reads.
"""

from __future__ import annotations

from retreatkit.transfer import hints, records, resume
from retreatkit.transfer.cursor import Cursor
from retreatkit.transfer.errors import (
    LocalProtocolError,
    NoKeyExchange,
    PakeFailed,
    PeerGone,
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
from retreatkit.transfer.offer import Offer, escape, offer_length
from retreatkit.transfer.pake import CONFIRM_SIZE, Pake, SessionKeys, Side, check_confirmation
from retreatkit.transfer.records import Kind
from retreatkit.transfer.states import TABLE, Move, State

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
STAY = b"\x00"  # PATH: the records go on where they went so far
DIRECT = b"\x01"  # PATH: they go on the direct connection whose sender nonce follows


class Inbound:
    """The reading half of a session; its state is set up by Session.__init__."""

    side: Side
    state: State
    offer: Offer | None
    cursor: Cursor
    claim: resume.Claim
    start_at: resume.Claim
    direct: bytes | None
    _verified: bool
    _pake: Pake
    _parser: records.FrameParser
    _keys: SessionKeys | None
    _sealer: records.Sealer | None
    _opener: records.Opener | None
    _outbox: list[bytes]
    _offer_buf: bytearray
    _offer_len: int
    _peer_hinted: bool
    _path_acked: bool
    _eof: bool

    @property
    def offer_coming(self) -> int | None:
        """The length the offer's first record announced, while the rest is still to
        come (pace.py bounds how long that may take); None before and after."""
        return self._offer_len if self._offer_buf else None

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
        """The peer closed the connection: fine only once the session is over. Before
        that it is a connection that ended, not a broken protocol: every record before
        the end was authenticated, and a record cut off is only dropped (a relay that
        crashed, a peer that gave up on us), so what arrived stands for a resume."""
        if self._parser.buffered:
            raise PeerGone("the connection ended in the middle of a record")
        if self.state is State.CLOSED or (self.side is Side.RECEIVER and self.state is State.ENDED):
            return
        raise PeerGone(f"the connection ended early, during {self.state.value}")

    def _set_offer(self, offer: Offer) -> None:
        self.offer = offer
        self.cursor.files = offer.files

    def _claimed(self) -> int:
        return resume.prefix(self.cursor.files, self.claim)

    def _begin_data(self) -> None:
        self.cursor.begin(self.start_at)

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
            self.cursor.count(length)
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
        resume.prefix(self.cursor.files, claim)  # raises on a claim no receiver could hold
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
            if plain == STAY:
                self.direct = None
            elif len(plain) == 1 + hints.NONCE_SIZE and plain[:1] == DIRECT:
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
            self.cursor.count(len(data))
            if out is not None:
                out[: len(data)] = data
                return FileData(out[: len(data)])
            return FileData(data)
        if kind is Kind.FILE_END:
            if plain:
                raise RemoteProtocolError("the sender's FILE_END is not empty")
            self.cursor.check_complete()
            index = self.cursor.index
            self.cursor.next_file()
            return FileEnd(index)
        # END
        if not self.cursor.finished:
            raise RemoteProtocolError("the sender ended before sending every file")
        if self._parser.buffered:
            raise RemoteProtocolError("the sender sent data after its final record")
        return Ended()

    def _handshake(self, kind: int, body: bytes) -> Event | None:
        if self.state is State.PAKE:
            if kind != Kind.PAKE:
                raise NoKeyExchange("the other side is not speaking bob/1")
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
        # said as the sender's doing: on the receiver's screen, and in the ABORT it sends
        try:
            if not self._offer_buf:
                self._offer_len = offer_length(plain)
            self._offer_buf += plain
            if len(self._offer_buf) > self._offer_len:
                raise UnsafeOffer("the offer is longer than it announced")
            if len(self._offer_buf) < self._offer_len:
                return None
            offer = Offer.decode(bytes(self._offer_buf[4:]))
        except UnsafeOffer as exc:
            raise UnsafeOffer(f"the sender's offer is refused: {exc}") from None
        self._offer_buf = bytearray()
        self._move(Move.GOT_OFFER)
        self._set_offer(offer)
        return Offered(offer)
