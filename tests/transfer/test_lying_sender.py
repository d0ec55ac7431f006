"""A sender that lies, tampers, drops or replays: the receiver must say so in one line (a
RemoteProtocolError) and leave the folder as it found it, without even the files that
arrived whole before the lie. A stream that stops short is a connection that ended
(PeerGone), whatever cut it: what arrived was verified, and stays for a resume."""

from __future__ import annotations

import contextlib
import hashlib
import os
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retreatkit.transfer import records
from retreatkit.transfer.codes import Code
from retreatkit.transfer.errors import (
    NoKeyExchange,
    PakeFailed,
    PeerGone,
    RemoteProtocolError,
    TransferError,
    UnsafeOffer,
)
from retreatkit.transfer.machine import (
    Aborted,
    Ended,
    FileData,
    FileEnd,
    Offered,
    Session,
    State,
)
from retreatkit.transfer.offer import Entry, Offer
from retreatkit.transfer.pake import MESSAGE_SIZE, Pake, Side
from retreatkit.transfer.receive import Writer
from retreatkit.transfer.records import RECORD_SIZE, Kind
from retreatkit.transfer.testing import accepted_pair, connected_pair

CODE = Code("7", ("purple", "sofa"))
A = os.urandom(3000)  # first file
B = b"second file"  # second file
ENTRIES = (Entry(("a.bin",), size=len(A)), Entry(("b.txt",), size=len(B)))


# -- an in-process pair and a sender that seals whatever it likes ---------------------------


handshake = connected_pair


class Liar:
    """An honest handshake and offer; after the answer, records the test chooses, sealed
    with the sender's own keys and counter so only their content is wrong."""

    def __init__(self, entries: tuple[Entry, ...] = ENTRIES) -> None:
        self.offer = Offer(entries=entries)
        self.sender, self.receiver = accepted_pair(self.offer)

    def seal(self, kind: int, body: bytes) -> bytes:
        assert self.sender._sealer is not None
        return self.sender._sealer.seal(kind, body)  # type: ignore[arg-type]

    def data(self, chunk: bytes) -> bytes:
        return self.seal(Kind.DATA, chunk)

    def file_end(self, content: bytes = b"") -> bytes:
        return self.seal(Kind.FILE_END, b"")

    def chunks(self, content: bytes, chunk: int = 1024) -> list[bytes]:
        return [self.data(content[i : i + chunk]) for i in range(0, len(content), chunk)]

    def file(self, content: bytes) -> list[bytes]:
        out = self.chunks(content)  # sealed first: the counter runs in wire order
        return [*out, self.file_end(content)]

    def end(self) -> bytes:
        return self.seal(Kind.END, b"")

    def honest(self) -> list[bytes]:
        """Every record of an honest transfer of A and B: 3 DATA, FILE_END, DATA,
        FILE_END, END (see FILE_ENDS)."""
        out = [*self.file(A), *self.file(B), self.end()]
        assert kinds(b"".join(out)) == [
            *(Kind.DATA, Kind.DATA, Kind.DATA, Kind.FILE_END),
            *(Kind.DATA, Kind.FILE_END, Kind.END),
        ]
        return out


def drive(receiver: Session, writer: Writer, wire: bytes, eof: bool = True) -> list[str]:
    """What aio.receive does after its answer; then the connection closes (eof)."""
    receiver.receive_data(wire)
    if eof:
        receiver.receive_data(b"")
    saved: list[str] = []
    try:
        while True:
            event = receiver.next_event()
            if event is None:
                return saved
            if isinstance(event, FileData):
                writer.write(event.data)
            elif isinstance(event, FileEnd):
                saved.append(writer.finish_file())
            elif isinstance(event, Ended):
                receiver.done()
                writer.complete()
            else:
                raise RemoteProtocolError(f"unexpected {type(event).__name__} from the sender")
    except TransferError as exc:
        writer.abort(keep=type(exc) is PeerGone)  # as aio.receive does
        raise


def receive(liar: Liar, output: Path, wire: bytes, eof: bool = True) -> list[str]:
    assert liar.receiver.offer is not None
    writer = Writer(output, liar.receiver.offer)
    try:
        writer.make_folders()
        return drive(liar.receiver, writer, wire, eof)
    finally:
        writer.close()


def refused(
    liar: Liar,
    output: Path,
    wire: bytes,
    match: str | None = None,
    error: type[TransferError] = RemoteProtocolError,
) -> TransferError:
    with pytest.raises(error, match=match) as info:
        receive(liar, output, wire)
    message = str(info.value)
    assert message and "\n" not in message and message.isprintable(), message
    if error is not PeerGone:
        assert not [n for n in os.listdir(output) if n.startswith(".bob-")]
    return info.value


def kinds(wire: bytes) -> list[int]:
    parser = records.FrameParser()
    parser.feed(wire)
    out = []
    while (frame := parser.next()) is not None:
        out.append(frame[0])
    return out


def saved_files(output: Path) -> dict[str, bytes]:
    """The files received (not a part or a resume record)."""
    names = [name for name in os.listdir(output) if not name.startswith(".bob-")]
    return {name: (output / name).read_bytes() for name in names}


@pytest.fixture
def output(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


# -- the honest baseline ----------------------------------------------------------------


def test_honest_transfer(output: Path) -> None:
    liar = Liar()
    wire = b"".join(liar.honest())
    assert receive(liar, output, wire) == ["a.bin", "b.txt"]
    assert saved_files(output) == {"a.bin": A, "b.txt": B}
    assert liar.receiver.state is State.CLOSED


@pytest.mark.parametrize("split", [1, 7, 4096])
def test_honest_transfer_in_small_pieces(output: Path, split: int) -> None:
    liar = Liar()
    wire = b"".join(liar.honest())
    writer = Writer(output, liar.offer)
    for i in range(0, len(wire), split):
        drive(liar.receiver, writer, wire[i : i + split], eof=False)
    writer.close()
    assert saved_files(output) == {"a.bin": A, "b.txt": B}


def test_compressed_file_of_many_records(output: Path) -> None:
    # each DATA_Z record is a zlib stream of its own: the receiver must not need one per file
    content = b"all work and no play " * 20_000  # 420 kB: 7 records
    sender, receiver = accepted_pair(Offer(entries=(Entry(("log",), size=len(content)),)))
    chunks = [content[i : i + RECORD_SIZE] for i in range(0, len(content), RECORD_SIZE)]
    wire = b"".join(sender.send_data(chunk) for chunk in chunks)
    assert kinds(wire) == [Kind.DATA_Z] * len(chunks)
    assert len(wire) < len(content) // 10
    wire += sender.end_file() + sender.end()
    writer = Writer(output, receiver.offer)  # type: ignore[arg-type]
    drive(receiver, writer, wire)
    writer.close()
    assert (output / "log").read_bytes() == content


# -- lies about sizes and content -------------------------------------------------------


def test_more_bytes_than_declared(output: Path) -> None:
    liar = Liar()
    wire = liar.data(A + b"!") + liar.file_end(A + b"!")
    refused(liar, output, wire, match=r"more data than it announced for a\.bin")
    assert saved_files(output) == {}


def test_more_bytes_than_declared_over_several_records(output: Path) -> None:
    liar = Liar()
    wire = b"".join(liar.chunks(A)) + liar.data(b"!")
    refused(liar, output, wire, match="more data than it announced")
    assert saved_files(output) == {}


def test_more_bytes_in_the_second_file(output: Path) -> None:
    liar = Liar()
    wire = b"".join(liar.file(A)) + liar.data(B + B)
    refused(liar, output, wire, match=r"more data than it announced for b\.txt")
    assert saved_files(output) == {}  # verified before the lie, and gone with it


def test_fewer_bytes_then_file_end(output: Path) -> None:
    liar = Liar()
    wire = liar.data(A[:-1]) + liar.file_end(A[:-1])
    refused(liar, output, wire, match=rf"{len(A) - 1} of the {len(A)} bytes it announced")
    assert saved_files(output) == {}


def test_data_beyond_the_last_file(output: Path) -> None:
    liar = Liar()
    wire = b"".join(liar.file(A) + liar.file(B)) + liar.data(b"x")
    refused(liar, output, wire, match="beyond the last offered file")
    assert saved_files(output) == {}


def test_file_end_beyond_the_last_file(output: Path) -> None:
    liar = Liar()
    wire = b"".join(liar.file(A) + liar.file(B)) + liar.file_end(b"")
    refused(liar, output, wire, match="beyond the last offered file")


def test_end_before_all_files(output: Path) -> None:
    liar = Liar()
    wire = b"".join(liar.file(A)) + liar.end()
    refused(liar, output, wire, match="ended before sending every file")
    assert saved_files(output) == {}


def test_end_before_all_files_leaves_no_folder_either(output: Path) -> None:
    # a finished file and a chain of folders 64 levels deep with the file still owed in it,
    # then END
    chain = tuple(Entry(("d",) * depth, is_dir=True) for depth in range(1, 64))
    liar = Liar((Entry(("a.bin",), size=len(A)), *chain, Entry(("d",) * 63 + ("x",), size=1)))
    wire = b"".join(liar.file(A)) + liar.end()
    refused(liar, output, wire, match="ended before sending every file")
    assert os.listdir(output) == []


def test_end_in_the_middle_of_a_file(output: Path) -> None:
    liar = Liar()
    wire = liar.data(A[:100]) + liar.end()
    refused(liar, output, wire, match="ended before sending every file")
    assert saved_files(output) == {}


@pytest.mark.parametrize(
    "body", [pytest.param(hashlib.sha256(A).digest(), id="a-hash"), pytest.param(b"\0", id="byte")]
)
def test_a_file_end_that_is_not_empty(output: Path, body: bytes) -> None:
    # the whole-file hash is gone (the AEAD vouches for every record, in order, up to
    # END): a FILE_END that still carries something is a sender that is not bob/1
    liar = Liar()
    wire = b"".join(liar.chunks(A)) + liar.seal(Kind.FILE_END, body)
    refused(liar, output, wire, match="FILE_END is not empty")
    assert saved_files(output) == {}


def test_hostile_name_in_a_size_error_is_escaped(output: Path) -> None:
    # controls and bidi overrides are refused in names; invisible format characters are legal
    liar = Liar((Entry(("\u200bzero\u2061width.txt ",), size=2),))
    wire = liar.data(b"x") + liar.file_end()
    exc = refused(liar, output, wire, match="1 of the 2 bytes it announced")
    assert str(exc).endswith("\\u200bzero\\u2061width.txt\\x20")


# -- tampering with the record stream ---------------------------------------------------


def _flip(wire: bytes, bit: int) -> bytes:
    out = bytearray(wire)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


FILE_ENDS = (3, 5)  # where the FILE_END records stand in Liar.honest()


def _check_saved(
    output: Path, intact: int, error: type[TransferError] = RemoteProtocolError
) -> None:
    """The first `intact` honest records arrived as sent, the next one did not. After a
    lie nothing is left; after a cut (PeerGone) exactly the files they completed are
    saved, with their content, and nothing of the rest but the part to resume."""
    if error is not PeerGone:
        assert os.listdir(output) == []
        return
    expected = [("a.bin", A), ("b.txt", B)]
    done = sum(1 for end in FILE_ENDS if end < intact)
    assert saved_files(output) == dict(expected[:done])


@pytest.mark.parametrize(
    "where", ["header-kind", "header-length", "body-first", "body-last", "tag"]
)
@pytest.mark.parametrize("index", [0, 1, 3, 4, 5, 6])
def test_flipped_bit(output: Path, where: str, index: int) -> None:
    liar = Liar()
    recs = liar.honest()
    record = recs[index]
    bit = {
        "header-kind": 0,
        "header-length": 3 * 8 + 2,
        "body-first": records.HEADER_SIZE * 8,
        "body-last": (len(record) - records.TAG_SIZE - 1) * 8 + 5,
        "tag": (len(record) - 1) * 8 + 7,
    }[where]
    recs[index] = _flip(record, bit)
    error = _caught_as(recs, index)
    refused(liar, output, b"".join(recs), error=error)
    _check_saved(output, index, error)


def _caught_as(recs: list[bytes], index: int) -> type[TransferError]:
    """A flip that makes record `index` claim more bytes than the stream holds is, at the
    end of the stream, a record cut off (PeerGone, as for a relay that crashed): nothing
    of it was used. Any other flip fails a check (RemoteProtocolError)."""
    parser = records.FrameParser()
    parser.feed(b"".join(recs))
    whole = 0
    try:
        while parser.next() is not None:
            whole += 1
    except RemoteProtocolError:
        return RemoteProtocolError
    return PeerGone if whole <= index else RemoteProtocolError


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_flipped_bit_is_caught(tmp_path: Path, data: st.DataObject) -> None:
    output = tmp_path / os.urandom(6).hex()
    output.mkdir()
    liar = Liar()
    recs = liar.honest()
    index = data.draw(st.integers(0, len(recs) - 1), label="record")
    bit = data.draw(st.integers(0, len(recs[index]) * 8 - 1), label="bit")
    recs[index] = _flip(recs[index], bit)
    error = _caught_as(recs, index)
    refused(liar, output, b"".join(recs), error=error)
    _check_saved(output, index, error)


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4, 5])
def test_dropped_record(output: Path, index: int) -> None:
    liar = Liar()
    recs = liar.honest()
    del recs[index]
    refused(liar, output, b"".join(recs), match="altered, reordered or lost")
    _check_saved(output, index)


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4, 5])
def test_reordered_records(output: Path, index: int) -> None:
    liar = Liar()
    recs = liar.honest()
    recs[index], recs[index + 1] = recs[index + 1], recs[index]
    refused(liar, output, b"".join(recs), match="altered, reordered or lost")
    _check_saved(output, index)


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4, 5, 6])
def test_duplicated_record(output: Path, index: int) -> None:
    liar = Liar()
    recs = liar.honest()
    recs.insert(index, recs[index])
    match = "after its final record" if index == 6 else "altered, reordered or lost"
    refused(liar, output, b"".join(recs), match=match)
    _check_saved(output, index + 1)


def test_replayed_offer_record(output: Path) -> None:
    # the very first OFFER record, replayed after the answer: its counter is long gone
    sender, receiver = handshake()
    offer_wire = sender.send_offer(Offer(entries=ENTRIES))
    receiver.receive_data(offer_wire)
    assert isinstance(receiver.next_event(), Offered)
    sender.receive_data(receiver.answer(True))
    sender.next_event()
    writer = Writer(output, receiver.offer)  # type: ignore[arg-type]
    with pytest.raises(RemoteProtocolError, match="altered, reordered or lost"):
        drive(receiver, writer, offer_wire)
    writer.close()


def test_record_from_another_session_is_refused(output: Path) -> None:
    other = Liar()
    liar = Liar()
    refused(liar, output, other.file(A)[0], match="altered, reordered or lost")


@pytest.mark.parametrize("cut", ["record", "header", "body"])
@pytest.mark.parametrize("index", [0, 2, 3, 4, 5, 6])
def test_truncated_stream(output: Path, cut: str, index: int) -> None:
    liar = Liar()
    recs = liar.honest()
    wire = b"".join(recs[:index])
    if cut == "header":
        wire += recs[index][:2]
    elif cut == "body":
        wire += recs[index][:-1]
    err = refused(liar, output, wire, error=PeerGone)  # a cut connection, not tampering
    if cut == "record":
        assert "ended early" in str(err)
    else:
        assert "middle of a record" in str(err)
    _check_saved(output, index, PeerGone)


def test_stream_cut_before_end(output: Path) -> None:
    liar = Liar()
    wire = b"".join(liar.honest()[:-1])
    refused(liar, output, wire, match="ended early, during transfer", error=PeerGone)
    assert saved_files(output) == {"a.bin": A, "b.txt": B}  # all verified; no END though


def test_without_eof_a_truncated_stream_waits(output: Path) -> None:
    liar = Liar()
    wire = b"".join(liar.honest()[:2])
    assert receive(liar, output, wire, eof=False) == []
    assert liar.receiver.state is State.TRANSFER


def test_eof_after_end_is_fine(output: Path) -> None:
    liar = Liar()
    wire = b"".join(liar.honest())
    assert receive(liar, output, wire) == ["a.bin", "b.txt"]


def test_record_after_end(output: Path) -> None:
    # PROTOCOL.md 5: END is final; what follows it is an error, not ignored
    liar = Liar()
    assert liar.sender._sealer is not None
    wire = b"".join(liar.honest())
    liar.sender._sealer.closed = False  # a sender that goes on regardless
    wire += liar.data(b"more")
    liar.receiver.receive_data(wire)
    with pytest.raises(RemoteProtocolError, match="after its final record"):
        while not isinstance(liar.receiver.next_event(), Ended):
            pass
    assert liar.receiver.state is State.ERROR


def test_record_after_end_arriving_late(output: Path) -> None:
    liar = Liar()
    assert liar.sender._sealer is not None
    liar.receiver.receive_data(b"".join(liar.honest()))
    while not isinstance(liar.receiver.next_event(), Ended):
        pass
    liar.sender._sealer.closed = False
    liar.receiver.receive_data(liar.data(b"more"))  # before the receiver said DONE
    with pytest.raises(RemoteProtocolError, match="after its final record"):
        liar.receiver.done()


def test_record_after_end_before_done(output: Path) -> None:
    liar = Liar()
    assert liar.sender._sealer is not None
    wire = b"".join(liar.honest())
    liar.sender._sealer.closed = False
    wire += liar.data(b"more")
    refused(liar, output, wire, match="after its final record")
    assert os.listdir(output) == []  # a lie before DONE: nothing of it stays


def test_record_after_done(output: Path) -> None:
    liar = Liar()
    assert liar.sender._sealer is not None and liar.receiver.offer is not None
    writer = Writer(output, liar.receiver.offer)
    writer.make_folders()
    assert drive(liar.receiver, writer, b"".join(liar.honest()), eof=False) == ["a.bin", "b.txt"]
    liar.sender._sealer.closed = False
    with pytest.raises(RemoteProtocolError, match="after the session closed"):
        drive(liar.receiver, writer, liar.data(b"more"))
    writer.close()
    assert saved_files(output) == {"a.bin": A, "b.txt": B}  # DONE was said: they are kept


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        (Kind.OFFER, "OFFER during transfer"),
        (Kind.ANSWER, "ANSWER during transfer"),
        (Kind.DONE, "DONE during transfer"),
        (0x20, "unknown record type 32"),
        (0xFF, "unknown record type 255"),
    ],
)
def test_record_of_the_wrong_kind(output: Path, kind: int, match: str) -> None:
    liar = Liar()
    wire = liar.data(A[:10]) + liar.seal(kind, b"x")
    refused(liar, output, wire, match=match)
    assert saved_files(output) == {}


@pytest.mark.parametrize("kind", [Kind.PAKE, Kind.CONFIRM])
def test_handshake_frame_after_the_handshake(output: Path, kind: Kind) -> None:
    liar = Liar()
    wire = liar.data(A[:10]) + records.frame(kind, bytes(32))
    refused(liar, output, wire, match="handshake frame after the handshake")


@pytest.mark.parametrize("length", [0, 1, records.TAG_SIZE - 1])
def test_record_shorter_than_a_tag(output: Path, length: int) -> None:
    liar = Liar()
    wire = liar.data(A[:10]) + records.header(Kind.DATA, length) + bytes(length)
    refused(liar, output, wire, match="failed authentication")


def test_end_record_length_flipped_to_zero(output: Path) -> None:
    liar = Liar()
    recs = liar.honest()
    recs[-1] = _flip(recs[-1], 3 * 8 + 4)  # 16 ^ 16: a record with no room for its tag
    refused(liar, output, b"".join(recs), match="failed authentication")
    _check_saved(output, len(recs) - 1)


def test_oversized_record_header(output: Path) -> None:
    liar = Liar()
    wire = records.header(Kind.DATA, records.MAX_BODY + 1)
    refused(liar, output, wire, match=r"the peer sent a \d+-byte record \(limit")


def test_data_for_a_text_offer(output: Path) -> None:
    sender, receiver = accepted_pair(Offer(text="hello"))
    assert sender._sealer is not None
    receiver.receive_data(sender._sealer.seal(Kind.DATA, b"x"))
    with pytest.raises(RemoteProtocolError, match="beyond the last offered file"):
        receiver.next_event()


def test_abort_reason_is_made_safe_to_print() -> None:
    liar = Liar()
    liar.receiver.receive_data(liar.seal(Kind.ABORT, "bye\x1b[2J\n\u202eevil\x9b".encode()))
    event = liar.receiver.next_event()
    assert isinstance(event, Aborted)
    assert event.reason.isprintable() and "\x1b" not in event.reason
    assert event.reason.startswith("bye")


# -- hostile offers through the session ---------------------------------------------------


def _framed(doc: bytes) -> bytes:
    return len(doc).to_bytes(4, "big") + doc


def _seal_offer(sender: Session, encoded: bytes) -> bytes:
    assert sender._sealer is not None
    return b"".join(
        sender._sealer.seal(Kind.OFFER, encoded[i : i + RECORD_SIZE])
        for i in range(0, max(len(encoded), 1), RECORD_SIZE)
    )


@pytest.mark.parametrize(
    "encoded",
    [
        pytest.param(b"", id="empty-record"),
        pytest.param(b"\0\0", id="short-length"),
        pytest.param(b"\0\0\0\0", id="empty-json"),
        pytest.param(b"\0\0\0\x02{}{}", id="longer-than-announced"),
        pytest.param(b"\x02\0\0\x01{", id="over-limit"),
        pytest.param(_framed(b'{"v":1,"x"}'), id="bad-json"),
        pytest.param(_framed(b'{"v":1,"entries":[[[".."],"f",1]]}'), id="dotdot"),
        pytest.param(
            _framed(b'{"v":1,"entries":[[["a"],"f",1],[["a","b"],"f",1]]}'), id="file-parent"
        ),
    ],
)
def test_hostile_offer_record(encoded: bytes) -> None:
    sender, receiver = handshake()
    receiver.receive_data(_seal_offer(sender, encoded))
    with pytest.raises(UnsafeOffer) as info:
        receiver.next_event()
    assert "\n" not in str(info.value)


def test_offer_split_over_records_waits_for_the_rest() -> None:
    sender, receiver = handshake()
    wire = sender.send_offer(Offer(entries=tuple(Entry((f"f{i:05}",)) for i in range(4000))))
    assert kinds(wire) == [Kind.OFFER, Kind.OFFER]
    receiver.receive_data(wire)
    event = receiver.next_event()
    assert isinstance(event, Offered) and len(event.offer.entries) == 4000


# -- compressed records -------------------------------------------------------------------


def _bomb_liar(size: int = 1 << 30) -> Liar:
    return Liar((Entry(("bomb",), size=size),))


@pytest.mark.parametrize("expanded", [RECORD_SIZE + 1, 2 * RECORD_SIZE, 8 << 20])
def test_zip_bomb_is_refused(output: Path, expanded: int) -> None:
    liar = _bomb_liar()
    wire = liar.seal(Kind.DATA_Z, zlib.compress(bytes(expanded), 9))
    refused(liar, output, wire, match="expands beyond its limit")
    assert saved_files(output) == {}


def test_zip_bomb_in_an_unknown_length_stream(output: Path) -> None:
    liar = Liar((Entry(("stdin",), size=None),))
    wire = liar.seal(Kind.DATA_Z, zlib.compress(bytes(4 << 20), 9))
    refused(liar, output, wire, match="expands beyond its limit")


def test_full_record_compressed_is_fine(output: Path) -> None:
    content = bytes(RECORD_SIZE)
    liar = _bomb_liar(len(content))
    wire = liar.seal(Kind.DATA_Z, zlib.compress(content, 9)) + liar.file_end(content)
    wire += liar.end()
    receive(liar, output, wire)
    assert (output / "bomb").read_bytes() == content


@pytest.mark.parametrize(
    ("packed", "match"),
    [
        pytest.param(b"not zlib at all", "corrupt", id="garbage"),
        pytest.param(zlib.compress(b"hello" * 100)[:-5], "truncated", id="truncated"),
        pytest.param(zlib.compress(b"hello") + b"tail", "trailing", id="trailing"),
        pytest.param(zlib.compress(b"a") + zlib.compress(b"b"), "trailing", id="two-streams"),
        pytest.param(b"", "truncated", id="empty"),
        pytest.param(zlib.compress(b"x")[:-1] + b"\0", "corrupt", id="bad-checksum"),
    ],
)
def test_malformed_compressed_record(output: Path, packed: bytes, match: str) -> None:
    liar = _bomb_liar()
    refused(liar, output, liar.seal(Kind.DATA_Z, packed), match=match)
    assert saved_files(output) == {}


def test_compressed_record_cannot_exceed_the_declared_size(output: Path) -> None:
    liar = _bomb_liar(100)
    refused(liar, output, liar.seal(Kind.DATA_Z, zlib.compress(bytes(1000))), match="more data")


# -- the key exchange ---------------------------------------------------------------------


def test_wrong_passphrase_fails_on_both_sides() -> None:
    sender = Session(Side.SENDER, CODE)
    receiver = Session(Side.RECEIVER, Code("7", ("purple", "sofas")))
    receiver.receive_data(sender.start())
    sender.receive_data(receiver.start())
    assert receiver.next_event() is None and sender.next_event() is None
    receiver.receive_data(sender.data_to_send())
    sender.receive_data(receiver.data_to_send())
    for side in (sender, receiver):
        with pytest.raises(PakeFailed, match="wrong passphrase") as info:
            side.next_event()
        assert "\n" not in str(info.value)


def test_other_nameplate_is_a_wrong_passphrase() -> None:
    with pytest.raises(PakeFailed, match="wrong passphrase"):
        handshake(CODE, Code("8", CODE.secret_words))


_P = 2**255 - 19
_ED = [
    pytest.param(b"\x01" + bytes(31), id="identity"),
    pytest.param(b"\x01" + bytes(30) + b"\x80", id="identity-negative-zero"),
    pytest.param((_P + 1).to_bytes(32, "little"), id="identity-y-plus-p"),
    pytest.param(((_P + 1) | 1 << 255).to_bytes(32, "little"), id="identity-y-plus-p-signed"),
    pytest.param((_P - 1).to_bytes(32, "little"), id="order-2"),
    pytest.param(((_P - 1) | 1 << 255).to_bytes(32, "little"), id="order-2-signed"),
    pytest.param(bytes(32), id="zero-order-4"),
    pytest.param(b"\xff" * 32, id="all-ones"),
    pytest.param(b"\xec" + b"\xff" * 30 + b"\x7f", id="y-equals-p"),
    pytest.param(b"\xee" + b"\xff" * 30 + b"\x7f", id="y-p-plus-1"),
]


@pytest.mark.parametrize("point", _ED)
@pytest.mark.parametrize("side", [Side.SENDER, Side.RECEIVER])
def test_identity_and_small_order_points_fail(side: Side, point: bytes) -> None:
    pake = Pake(side, CODE.pake_password())
    pake.start()
    with pytest.raises(NoKeyExchange, match="malformed"):
        pake.finish(side.other.tag + point)


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"B", id="side-only"),
        pytest.param(b"B" + bytes(31), id="short"),
        pytest.param(b"B" + os.urandom(33), id="long"),
        pytest.param(b"B" + os.urandom(1000), id="much-longer"),
        pytest.param(b"A" + os.urandom(32), id="own-side-byte"),
        pytest.param(b"C" + os.urandom(32), id="unknown-side-byte"),
        pytest.param(b"\0" + os.urandom(32), id="nul-side-byte"),
    ],
)
def test_malformed_pake_message(message: bytes) -> None:
    pake = Pake(Side.SENDER, CODE.pake_password())
    pake.start()
    with pytest.raises(NoKeyExchange, match="malformed") as info:
        pake.finish(message)
    assert str(info.value) == (
        "the other side sent a malformed key exchange message; no guess at the passphrase was made"
    )


def test_reflected_pake_message() -> None:
    for side in Side:
        pake = Pake(side, CODE.pake_password())
        own = pake.start()
        with pytest.raises(NoKeyExchange):
            pake.finish(own)


@settings(max_examples=150, deadline=None)
@given(
    side=st.sampled_from(Side),
    body=st.binary(min_size=MESSAGE_SIZE - 1, max_size=MESSAGE_SIZE - 1),
    tag=st.sampled_from([b"A", b"B"]) | st.binary(min_size=1, max_size=1),
)
def test_random_pake_message_never_raises_anything_else(
    side: Side, body: bytes, tag: bytes
) -> None:
    pake = Pake(side, CODE.pake_password())
    pake.start()
    with contextlib.suppress(NoKeyExchange):
        pake.finish(tag + body)  # a point that decodes is a legal (wrong-password) message


@settings(max_examples=40, deadline=None)
@given(
    side=st.sampled_from(Side),
    point=st.binary(min_size=32, max_size=32),
    junk=st.none() | st.binary(max_size=40),
    confirm=st.binary(min_size=32, max_size=32),
)
def test_session_with_a_random_peer_fails_as_a_guess_only_once_our_confirm_is_out(
    side: Side, point: bytes, junk: bytes | None, confirm: bytes
) -> None:
    """A message that is no well-formed PAKE message is no guess (NoKeyExchange, and no
    CONFIRM of ours to check one against); one that is ends in a failed guess."""
    session = Session(side, CODE)
    session.start()
    message = side.other.tag + point if junk is None else junk
    session.receive_data(records.frame(Kind.PAKE, message))
    try:
        assert session.next_event() is None  # a point that decodes: keys, then our CONFIRM
    except NoKeyExchange:
        assert not session.revealed and session.data_to_send() == b""
        return
    assert session.revealed and session.data_to_send()[:1] == bytes([Kind.CONFIRM])
    session.receive_data(records.frame(Kind.CONFIRM, confirm))
    with pytest.raises(PakeFailed, match="wrong passphrase"):
        session.next_event()  # which no random peer can match


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(records.frame(Kind.CONFIRM, bytes(32)), id="confirm-first"),
        pytest.param(records.header(Kind.DATA, 17) + bytes(17), id="record-first"),
        pytest.param(records.header(0x7F, 0), id="unknown-first"),
    ],
)
def test_peer_not_speaking_bob(first: bytes) -> None:
    session = Session(Side.RECEIVER, CODE)
    session.start()
    session.receive_data(first)
    with pytest.raises(NoKeyExchange, match="not speaking bob/1"):
        session.next_event()
    assert not session.revealed and session.data_to_send() == b""


@pytest.mark.parametrize(
    "second",
    [
        pytest.param(records.frame(Kind.CONFIRM, bytes(31)), id="short-confirm"),
        pytest.param(records.frame(Kind.CONFIRM, bytes(33)), id="long-confirm"),
        pytest.param(records.frame(Kind.PAKE, bytes(33)), id="second-pake"),
        pytest.param(records.header(Kind.OFFER, 20) + bytes(20), id="record-before-confirm"),
    ],
)
def test_missing_key_confirmation(second: bytes) -> None:
    sender = Session(Side.SENDER, CODE)
    receiver = Session(Side.RECEIVER, CODE)
    receiver.start()
    receiver.receive_data(sender.start())
    assert receiver.next_event() is None
    receiver.receive_data(second)
    with pytest.raises(PakeFailed, match="no key confirmation"):
        receiver.next_event()


def test_eof_during_the_handshake() -> None:
    session = Session(Side.RECEIVER, CODE)
    session.start()
    session.receive_data(b"")
    with pytest.raises(PeerGone, match="ended early, during pake"):
        session.next_event()
