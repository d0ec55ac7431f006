"""The red-team findings against bob (issue 7), in process: one test per finding, named for it.

The real-process halves (a real relay, the real CLI, signals, a terminal) are in
tests/e2e/test_red_team_cli.py; the relay's own findings in tests/relay/test_red_team.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import zlib
from pathlib import Path

import pytest

from retreatkit.cli import ui
from retreatkit.relay import wire
from retreatkit.transfer import aio, codes, link, records, source
from retreatkit.transfer.errors import (
    LocalProtocolError,
    OverLimit,
    RemoteProtocolError,
    UnsafeOffer,
)
from retreatkit.transfer.machine import Ended, FileData, FileEnd, Offered, Session, State
from retreatkit.transfer.offer import MAX_ENTRIES, Entry, Offer
from retreatkit.transfer.pake import Side
from retreatkit.transfer.receive import WriteError, Writer
from retreatkit.transfer.records import Kind
from retreatkit.transfer.testing import CODE, accepted_pair


@pytest.fixture
def output(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


def accepted(entries: tuple[Entry, ...]) -> tuple[Session, Session]:
    """A pair past the offer, a yes and the sender's PATH."""
    return accepted_pair(Offer(entries=entries))


def sealed(session: Session, kind: Kind, body: bytes) -> bytes:
    assert session._sealer is not None
    return session._sealer.seal(kind, body)


# -- 1. hidden files land unseen --------------------------------------------------------------


CROC = (
    *(Entry((f"photo{i}.jpg",), size=100) for i in range(10)),
    Entry((".bash_profile",), size=30),
    Entry((".ssh",), is_dir=True),
    Entry((".ssh", "authorized_keys"), size=400),
)


def test_01_hidden_files_are_named_at_the_prompt(output: Path) -> None:
    lines = ui.describe_offer(Offer(entries=CROC), Writer(output, Offer(entries=CROC)), "peer")
    assert lines == [
        "Offer from peer: 12 files (1.4 kB)",
        *(f"  photo{i}.jpg  100 bytes" for i in range(10)),
        "  .bash_profile  30 bytes  (hidden)",
        "  .ssh/  1 file (400 bytes)  (hidden)",
    ]


def test_01_big_folders_are_summed_up_and_hidden_names_inside_named(output: Path) -> None:
    entries = [Entry(("proj",), is_dir=True), Entry(("proj", "src"), is_dir=True)]
    entries += [Entry(("proj", "src", f"m{i}.py"), size=10) for i in range(5000)]
    entries += [
        Entry(("proj", "src", ".env"), size=12),
        Entry(("proj", ".git"), is_dir=True),
        Entry(("proj", ".git", "objects"), is_dir=True),
        Entry(("proj", ".git", "objects", ".hidden-too"), size=7),
        Entry(("proj", ".git", "HEAD"), size=23),
        Entry(("notes.txt",), size=3),
    ]
    offer = Offer(entries=tuple(entries))
    (output / "proj").mkdir()  # an existing folder: received beside it, never into it
    assert ui.describe_offer(offer, Writer(output, offer), "peer") == [
        "Offer from peer: 5004 files (50.0 kB)",
        "  proj (1)/  (renamed: 'proj' exists)  5003 files (50.0 kB)",
        "    proj (1)/src/.env  12 bytes  (hidden)",
        "    proj (1)/.git/  2 files (30 bytes)  (hidden)",
        "  notes.txt  3 bytes",
    ]


def test_01_yes_never_accepts_hidden_top_level_names() -> None:
    assert ui.hidden_tops(Offer(entries=CROC)) == [".bash_profile", ".ssh"]
    assert ui.hidden_tops(Offer(entries=(Entry(("a",), is_dir=True), Entry(("a", ".b"))))) == []


# -- 2. cost grows with the square of the file count ------------------------------------------


def test_02_an_offer_at_the_limits_is_checked_in_one_pass(output: Path) -> None:
    # the file list was rebuilt from every entry for each record: O(files x records)
    entries = (Entry(("d",), is_dir=True), *(Entry(("d", f"{i:05}"), size=1) for i in range(999)))
    offer = Offer(entries=entries)
    assert offer.files is offer.files and len(offer.files) == 999
    # a deep offer: each parent is looked up once, not once per level
    deep = tuple(Entry(tuple("d" for _ in range(n)), is_dir=True) for n in range(1, 65))
    assert Offer(entries=deep).total_size == 0
    with pytest.raises(UnsafeOffer, match=f"over {MAX_ENTRIES} entries"):
        Offer(entries=tuple(Entry((f"{i}",)) for i in range(MAX_ENTRIES + 1)))


# -- 4. the sender crashes or hangs when the receiver goes away -------------------------------


def test_04_closed_connection_is_a_clean_error_not_a_runtime_error() -> None:
    class Closed:
        def is_closing(self) -> bool:
            return True

    closed = link.Link(None, Closed(), 1.0)  # type: ignore[arg-type]
    with pytest.raises(aio.PeerGone, match="the connection broke"):
        closed.write([b"x"])


# -- 5. the relay's text reaches the terminal raw ---------------------------------------------


async def test_05_relay_lines_are_escaped_and_checked() -> None:
    async def relay_says(line: bytes, expect: str = "paired") -> str:
        reader = asyncio.StreamReader()
        reader.feed_data(line)
        reader.feed_eof()
        with pytest.raises(aio.RelayError) as info:
            await link.Link(reader, None, 1.0).line(1.0, expect)  # type: ignore[arg-type]
        return str(info.value)

    said = await relay_says(b"error \x1b]0;owned\x07\x1b[2J gone\n")
    assert said == "the relay says: \\x1b]0;owned\\x07\\x1b[2J gone"
    assert await relay_says(b"ok 12\n") == "the relay answered 'ok' where bob/1 says 'paired'"
    assert await relay_says(b"paired " + b"x" * 200 + b"\n") == "the relay sent an overlong line"


# -- 7. sender-side failures ------------------------------------------------------------------


def test_07_an_empty_folder_can_be_sent(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    sources = source.collect([str(tmp_path / "empty")])
    assert ui.describe_send(sources.offer) == "Sending 0 files (0 bytes) in folder 'empty'"


def test_07_a_symlink_named_on_the_command_line_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_text("hi")
    (tmp_path / "link.txt").symlink_to(tmp_path / "real.txt")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "inner").symlink_to(tmp_path / "real.txt")
    sources = source.collect([str(tmp_path / "link.txt"), str(tmp_path / "dir")])
    assert [e.path for e in sources.offer.entries] == [("link.txt",), ("dir",)]
    assert sources.paths == [str(tmp_path / "real.txt")]
    assert sources.skipped == ["dir/inner (symlink)"]  # inside a folder: never followed


def test_07_names_the_receiver_refuses_are_found_before_the_passphrase(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("ok.txt", "a:b.txt", "esc\x1b[2J", "bidi\u202etxt.exe"):
        (tree / name).write_text("x")
    (tree.joinpath(os.fsdecode(b"latin\xe9"))).write_text("x")
    sources = source.collect([str(tree)])
    assert [e.path[-1] for e in sources.offer.files] == ["ok.txt"]
    assert sources.skipped == [
        "tree/a:b.txt (the receiver would refuse the name: looks like a drive letter)",
        "tree/bidi\\u202etxt.exe (the receiver would refuse the name:"
        " contains a bidi control character)",
        "tree/esc\\x1b[2J (the receiver would refuse the name:"
        " contains a control character or line break)",
        "tree/latin\\udce9 (the receiver would refuse the name: not valid UTF-8)",
    ]
    with pytest.raises(source.SourceError, match=r"a:b\.txt: the receiver would refuse it"):
        source.collect([str(tree / "a:b.txt")])


@pytest.mark.parametrize(
    ("args", "advice"),
    [
        (["my photos"], "tar c 'my photos' | bob send --name 'my photos.tar' -"),
        (["a", "b"], "tar c a b | bob send --name files.tar -"),
        (["a", "-"], "tar c PATH... | bob send --name files.tar -"),
        (["esc\x1b[2J"], "tar c PATH... | bob send --name files.tar -"),
    ],
)
def test_07_over_the_entry_limit_the_advice_is_one_stream(args: list[str], advice: str) -> None:
    assert source.too_many(args) == (
        "cannot send: over 100000 files and folders, more than one offer may list; send them"
        f" as one stream instead: {advice}"
    )


# -- 8. names with controls and bidi overrides are written as they are ------------------------


@pytest.mark.parametrize(
    "name", ["new\nline", "esc\x1b[31m", "\u202eexe.txt", "a\u2066b", "c1\x9b", "del\x7f"]
)
def test_08_control_and_bidi_names_are_refused(name: str) -> None:
    with pytest.raises(UnsafeOffer) as info:
        Offer.decode(Offer(entries=(Entry(("ok",)),)).encode()[4:].replace(b'"ok"', _json(name)))
    assert str(info.value).isprintable()


def _json(name: str) -> bytes:
    return json.dumps(name).encode()


def test_08_trailing_spaces_and_device_names_are_kept_and_shown(output: Path) -> None:
    offer = Offer(entries=(Entry(("report.pdf ",), size=1), Entry(("CON",), size=1)))
    lines = ui.describe_offer(offer, Writer(output, offer), "peer")
    assert lines[1:] == ["  report.pdf\\x20  1 byte", "  CON  1 byte"]


# -- 9. a lone surrogate crashes a piped receiver ---------------------------------------------


def test_09_text_with_lone_surrogates_is_printable_to_a_pipe() -> None:
    pipe = io.StringIO()
    assert ui.safe_text("caf\udce9 \ud800!", pipe) == "caf\ufffd \ufffd!".encode()
    assert ui.safe_text("raw \udcff", pipe) == b"raw \xff"  # a sender's undecodable byte
    assert ui.text_size("\ud800") == 3


# -- 10. the passphrase: ps, and how guessable it is ------------------------------------------


@pytest.mark.parametrize(
    ("text", "bits"),
    [
        ("7-purple-sofa", 22.0),  # neither word in the list: each counts at most 11
        ("5-a-b", 9.4),
        ("12-our-own-words", 33.0),
        ("3-tree-tree-tree", 11.0),  # repeats add nothing
        ("4-ab-abandon", 20.4),
    ],
)
def test_10_chosen_passphrases_are_measured_honestly(text: str, bits: float) -> None:
    assert codes.entropy_bits(codes.parse(text)) == pytest.approx(bits, abs=0.05)
    assert len(codes.words()) == 2048  # BIP-39: 11 bits a word drawn at random
    assert codes.MIN_BITS == 22


# -- 12. unbounded stream, empty records, records after END -----------------------------------


def test_12_a_stream_of_unknown_length_stops_at_the_receivers_limit() -> None:
    sender, receiver = accepted((Entry(("stdin",), size=None),))
    receiver.stream_limit = 100_000
    receiver.receive_data(b"".join(sender.send_data(os.urandom(50_000)) for _ in range(3)))
    assert isinstance(receiver.next_event(), FileData)
    assert isinstance(receiver.next_event(), FileData)
    with pytest.raises(OverLimit, match=r"stdin went over 100000 bytes"):
        receiver.next_event()
    assert receiver.state is State.ERROR


@pytest.mark.parametrize("kind", [Kind.DATA, Kind.DATA_Z])
def test_12_empty_data_records_are_refused(kind: Kind) -> None:
    sender, receiver = accepted((Entry(("f",), size=5),))
    body = zlib.compress(b"") if kind is Kind.DATA_Z else b""
    receiver.receive_data(sealed(sender, kind, body))
    with pytest.raises(RemoteProtocolError, match="empty data record"):
        receiver.next_event()
    with pytest.raises(LocalProtocolError, match="1 to 65536 bytes"):
        sender.send_data(b"")


def test_12_a_record_after_end_is_an_error() -> None:
    sender, receiver = accepted((Entry(("f",), size=1),))
    wire_ = sender.send_data(b"x") + sender.end_file() + sender.end()
    assert sender._sealer is not None
    sender._sealer.closed = False
    receiver.receive_data(wire_ + sealed(sender, Kind.DATA, b"more"))
    assert isinstance(receiver.next_event(), FileData)
    assert isinstance(receiver.next_event(), FileEnd)
    with pytest.raises(RemoteProtocolError, match="after its final record"):
        receiver.next_event()


# -- 13. the abort message tells the sender where and how much --------------------------------


def test_13_what_the_sender_is_told_names_no_path_and_no_size(output: Path) -> None:
    offer = Offer(entries=(Entry(("big",), size=1 << 49),))
    with pytest.raises(WriteError) as info:
        Writer(output, offer).check_space()
    assert str(output) not in info.value.public and not any(c.isdigit() for c in info.value.public)
    assert aio.tell_peer(info.value, Side.RECEIVER) == "the receiver has not enough free space"
    full = WriteError(
        f"cannot write {output}/x: No space left on device", "the receiver's disk is full"
    )
    assert aio.tell_peer(full, Side.RECEIVER) == "the receiver's disk is full"
    unreadable = source.SourceError("cannot read /home/alice/secret.txt: Permission denied")
    assert aio.tell_peer(unreadable, Side.SENDER) == "the sender could not read a file"


# -- 14. what the relay learns ----------------------------------------------------------------


def test_14_the_relay_learns_counts_and_sizes_but_no_names_or_words() -> None:
    """Exactly what PROTOCOL.md section 8 says the relay learns, read off the bytes it
    forwards: the kind and length of every record, so the file count, each file's size
    (exact when sent raw), the offer's size, the answer and the ending. No name, no word."""
    contents = [os.urandom(70_000), os.urandom(5)]  # random: sent raw, not compressed
    names = ("secret-plans.pdf", "diary.txt")
    entries = tuple(Entry((n,), size=len(c)) for n, c in zip(names, contents, strict=True))
    up, down = _recorded_transfer(Offer(entries=entries), contents)
    assert not any(word.encode() in up + down for word in CODE.secret_words)
    assert not any(name.encode() in up + down for name in names)
    tag = records.TAG_SIZE
    sent = _headers(up)
    assert [kind for kind, _ in sent] == [
        Kind.PAKE, Kind.CONFIRM, Kind.HINTS, Kind.OFFER, Kind.PATH,
        Kind.DATA, Kind.DATA, Kind.FILE_END, Kind.DATA, Kind.FILE_END, Kind.END,
    ]  # fmt: skip
    assert sum(1 for kind, _ in sent if kind == Kind.FILE_END) == len(contents)  # the count
    assert [n - tag for kind, n in sent if kind == Kind.DATA] == [65_536, 4_464, 5]  # sizes
    assert sent[3][1] - tag == len(Offer(entries=entries).encode())  # the offer's size
    assert sent[2] == (Kind.HINTS, 1 + tag)  # how many hints, never what they say
    assert _headers(down) == [
        (Kind.PAKE, 33),
        (Kind.CONFIRM, 32),
        (Kind.HINTS, 1 + tag),
        (Kind.ANSWER, 15 + tag),
        (Kind.DONE, tag),
    ]  # the answer (yes with a claim is 15 bytes, no 2) and whether it all arrived


def _recorded_transfer(offer: Offer, contents: list[bytes]) -> tuple[bytes, bytes]:
    """An honest transfer in process; returns what went each way, as the relay saw it."""
    sender, receiver = Session(Side.SENDER, CODE), Session(Side.RECEIVER, CODE)
    up, down = bytearray(), bytearray()

    def to_receiver(data: bytes) -> None:
        up.extend(data)
        receiver.receive_data(data)

    def to_sender(data: bytes) -> None:
        down.extend(data)
        sender.receive_data(data)

    to_receiver(sender.start())
    to_sender(receiver.start())
    assert receiver.next_event() is None and sender.next_event() is None
    to_receiver(sender.data_to_send())
    to_sender(receiver.data_to_send())
    receiver.next_event(), sender.next_event()
    to_receiver(sender.send_hints([]))
    to_sender(receiver.send_hints([]))
    receiver.next_event(), sender.next_event()
    to_receiver(sender.send_offer(offer))
    assert isinstance(receiver.next_event(), Offered)
    to_sender(receiver.answer(True))
    sender.next_event()
    to_receiver(sender.send_path(None))
    receiver.next_event()
    for content in contents:
        for i in range(0, len(content), records.RECORD_SIZE):
            to_receiver(sender.send_data(content[i : i + records.RECORD_SIZE]))
        to_receiver(sender.end_file())
    to_receiver(sender.end())
    while not isinstance(receiver.next_event(), Ended):
        pass
    to_sender(receiver.done())
    sender.next_event()
    assert sender.state is receiver.state is State.CLOSED
    return bytes(up), bytes(down)


def _headers(data: bytes) -> list[tuple[int, int]]:
    parser = records.FrameParser()
    parser.feed(data)
    out = []
    while (frame := parser.next()) is not None:
        out.append((frame[0], len(frame[2])))
        frame[2].release()
    return out


def test_relay_request_lines_carry_only_the_nameplate() -> None:
    assert wire.Request(wire.Role.RECV, CODE.nameplate).encode() == b"bob/1 recv 7\n"
