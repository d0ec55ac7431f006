"""A connection cut in the middle of a record, in process: both ends are the real asyncio
sender and receiver, with a real Writer on disk, and between them a relay the test
controls, which reads the clear frame headers and stops exactly where it is told.

A relay that crashed (or a sender that gave up on a paused receiver) cuts a record off:
every record before the cut was authenticated, so the part and the resume record stay
and the next receive resumes. A record that lies still removes them."""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from retreatkit.relay import wire
from retreatkit.transfer import aio, resume, source
from retreatkit.transfer.channel import Channel
from retreatkit.transfer.codes import Code
from retreatkit.transfer.errors import PeerAborted, PeerGone, Refused, RemoteProtocolError
from retreatkit.transfer.link import Link
from retreatkit.transfer.offer import Offer
from retreatkit.transfer.records import HEADER, HEADER_SIZE, RECORD_SIZE, Kind
from retreatkit.transfer.testing import Handed, Heard

CODE = Code("7", ("purple", "sofa"))
KEPT = (
    "The partial files are kept: to resume, ask the sender to run the same bob send again,"
    " and receive it into the same folder."
)


class Relay:
    """Pairs one receiver with one sender and forwards; from the sender's `stop_at`-th
    DATA record on, it does what `how` says: `cut` sends half of that record and closes
    both connections (as a relay killed mid-transfer), `flip` flips a bit of its body,
    `bloat` makes its header claim more than a record may hold; `end` forwards
    everything but the sender's END and closes both connections there."""

    def __init__(self, stop_at: int | None = None, how: str = "cut") -> None:
        self.stop_at = stop_at
        self.how = how
        self.data_records = 0  # DATA records forwarded whole and untouched

    async def run(self, receiver: socket.socket, sender: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        line = b""
        while not line.endswith(b"\n"):
            line += await loop.sock_recv(receiver, 1)
        assert wire.parse_request(line).role is wire.Role.RECV
        await loop.sock_sendall(receiver, wire.reply("paired", "10.0.0.8:1"))
        back = asyncio.ensure_future(self._copy(receiver, sender))
        try:
            await self._frames(sender, receiver)
        finally:
            back.cancel()
            receiver.close()
            sender.close()

    async def _copy(self, src: socket.socket, dst: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while chunk := await loop.sock_recv(src, 65536):
            await loop.sock_sendall(dst, chunk)

    async def _frames(self, src: socket.socket, dst: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        buf = bytearray()
        while chunk := await loop.sock_recv(src, 1 << 20):
            buf += chunk
            while len(buf) >= HEADER_SIZE:
                (word,) = HEADER.unpack_from(buf)
                end = HEADER_SIZE + (word & 0xFFFFFF)
                if len(buf) < end:
                    break
                frame, buf = bytes(buf[:end]), buf[end:]
                if word >> 24 == Kind.END and self.how == "end":
                    return
                if word >> 24 == Kind.DATA and self.data_records == self.stop_at:
                    await loop.sock_sendall(dst, self._spoil(frame))
                    if self.how == "cut":
                        return
                    continue
                self.data_records += word >> 24 == Kind.DATA
                await loop.sock_sendall(dst, frame)

    def _spoil(self, frame: bytes) -> bytes:
        if self.how == "cut":
            return frame[: len(frame) // 2]
        if self.how == "flip":
            return frame[:100] + bytes([frame[100] ^ 4]) + frame[101:]
        return HEADER.pack((Kind.DATA << 24) | 0xFFFFFF) + frame[HEADER_SIZE:]


@dataclass
class Running:
    """A `bob send` and a `bob recv` under way through a relay: three tasks, and what the
    receiver's user heard."""

    sending: asyncio.Task[None]
    receiving: asyncio.Task[Offer]
    relaying: asyncio.Task[None]
    heard: Heard


async def start(
    sources: source.Sources, output: Path, relay: Relay, confirm: aio.Confirm
) -> Running:
    loop = asyncio.get_running_loop()
    r_ours, r_relay = socket.socketpair()
    s_ours, s_relay = socket.socketpair()
    for sock in (r_relay, s_relay):
        sock.setblocking(False)
    _, s_channel = await loop.create_connection(Channel, sock=s_ours)

    async def connector(request: wire.Request) -> Link:
        _, channel = await loop.create_connection(Channel, sock=r_ours)
        channel.write(request.encode())
        return Link.over(channel, 10.0)

    heard = Heard()
    options = aio.Options(compress=False, direct=False, timeout=10.0)
    sending = aio.send(Handed([Link.over(s_channel, 10.0)]), sources, CODE, Heard(), options)
    receiving = aio.receive(connector, CODE, output, heard, confirm, options)
    return Running(
        asyncio.ensure_future(sending),
        asyncio.ensure_future(receiving),
        asyncio.ensure_future(relay.run(r_relay, s_relay)),
        heard,
    )


async def transfer(
    sources: source.Sources, output: Path, relay: Relay, accept: bool = True
) -> tuple[Heard, object]:
    """One `bob send` and one `bob recv` through `relay`; what the receiver heard, and
    what its receive returned or raised."""

    async def confirm(*_: object) -> bool:
        return accept

    async with asyncio.timeout(60):
        run = await start(sources, output, relay, confirm)
        _, got, _ = await asyncio.gather(
            run.sending, run.receiving, run.relaying, return_exceptions=True
        )
    return run.heard, got


@pytest.fixture
def sources(tmp_path: Path) -> source.Sources:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 * (1 << 20) + 123))
    return source.collect([str(src)])


@pytest.fixture
def output(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


async def test_a_relay_that_dies_mid_record_leaves_the_part_and_the_next_receive_resumes(
    sources: source.Sources, output: Path
) -> None:
    dying = Relay(stop_at=20)
    heard, got = await transfer(sources, output, dying)
    assert isinstance(got, PeerGone)
    assert str(got) == "the connection ended in the middle of a record"
    assert heard.said == [KEPT]
    (part,) = output.glob(".bob-*.part")
    assert part.stat().st_size == 20 * RECORD_SIZE  # every record before the cut, no more
    assert len(list(output.glob(".bob-*.resume"))) == 1

    heard, got = await transfer(sources, output, Relay())
    assert isinstance(got, Offer), got
    assert heard.resumes == [resume.Claim(0, 20 * RECORD_SIZE)]
    assert (output / "big.bin").read_bytes() == Path(str(sources.paths[0])).read_bytes()
    assert sorted(p.name for p in output.iterdir()) == ["big.bin"]


@pytest.mark.parametrize("what", ["file", "folder", "stream"])
async def test_a_cut_before_the_first_byte_keeps_nothing_and_says_nothing_of_it(
    output: Path, tmp_path: Path, what: str
) -> None:
    """Cut in the first DATA record, after the yes: no byte of any file arrived. The
    receiver said "The partial files are kept" (or of a stream, "Nothing was kept") and
    left its resume record and the folders it made, which held nothing to resume."""
    fold = tmp_path / "fold"
    (fold / "inner").mkdir(parents=True)
    (fold / "inner" / "a.bin").write_bytes(os.urandom(3 << 20))
    stream = tmp_path / "stream"
    stream.write_bytes(os.urandom(3 << 20))
    with stream.open("rb") as stdin, pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", type("In", (), {"buffer": stdin})())
        args = {"file": [str(stream)], "folder": [str(fold)], "stream": ["-"]}[what]
        heard, got = await transfer(source.collect(args), output, Relay(stop_at=0))
    assert isinstance(got, PeerGone), got
    assert str(got) == "the connection ended in the middle of a record"
    assert heard.said == []
    assert list(output.iterdir()) == []


async def test_a_resumed_receive_cut_before_its_first_byte_keeps_what_was_there(
    sources: source.Sources, output: Path
) -> None:
    heard, got = await transfer(sources, output, Relay(stop_at=20))
    assert heard.said == [KEPT]
    (part,) = output.glob(".bob-*.part")
    assert part.stat().st_size == 20 * RECORD_SIZE

    heard, got = await transfer(sources, output, Relay(stop_at=0))
    assert isinstance(got, PeerGone), got
    assert heard.resumes == [resume.Claim(0, 20 * RECORD_SIZE)]
    assert heard.said == [KEPT]  # nothing came this time, and the earlier part stays
    assert part.stat().st_size == 20 * RECORD_SIZE
    assert len(list(output.glob(".bob-*.resume"))) == 1


async def test_a_relay_that_cuts_only_the_end_says_every_file_arrived(
    sources: source.Sources, output: Path, tmp_path: Path
) -> None:
    """Every FILE_END came, so every file is whole and authenticated: nothing is partial,
    and the receiver says so; without END it sent no DONE, so it still fails, as the
    sender does, and keeps the record for a rerun that moves no data."""
    heard, got = await transfer(sources, output, Relay(how="end"))
    assert isinstance(got, PeerGone), got
    assert heard.said == [
        "Every file arrived whole and checked, and has its name; only the sender's final"
        " record did not, so the sender was not told. To end it on both sides, ask the"
        " sender to run the same bob send again, and receive it into the same folder: no"
        " data travels again."
    ]
    assert (output / "big.bin").read_bytes() == Path(str(sources.paths[0])).read_bytes()
    assert len(list(output.glob(".bob-*.resume"))) == 1

    heard, got = await transfer(sources, output, Relay(stop_at=0))  # no DATA may come
    assert isinstance(got, Offer), got
    assert heard.resumes == [resume.Claim(1, 0)]
    assert sorted(p.name for p in output.iterdir()) == ["big.bin"]

    stream = tmp_path / "stream"
    stream.write_bytes(b"from stdin")
    (output / "big.bin").unlink()
    with stream.open("rb") as stdin, pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", type("In", (), {"buffer": stdin})())
        heard, got = await transfer(source.collect(["-"]), output, Relay(how="end"))
    assert isinstance(got, PeerGone), got
    assert heard.said == [  # a stream is never claimed: the same send would send it again
        "Every file arrived whole and checked, and has its name; only the sender's final"
        " record did not, so the sender was not told."
    ]
    assert (output / "stdin").read_bytes() == b"from stdin"


async def test_a_stream_cut_mid_record_says_nothing_was_kept_and_leaves_nothing(
    output: Path, tmp_path: Path
) -> None:
    """A stream's part is never resumed (stdin is read once), and went: the receiver said
    "The partial files are kept" and left the resume record behind, alone."""
    stream = tmp_path / "stream"
    stream.write_bytes(os.urandom(3 << 20))
    with stream.open("rb") as stdin, pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", type("In", (), {"buffer": stdin})())
        heard, got = await transfer(source.collect(["-"]), output, Relay(stop_at=20))
    assert isinstance(got, PeerGone), got
    assert heard.said == [
        "Nothing was kept: a stream cannot be resumed. Ask the sender to send it again."
    ]
    assert list(output.iterdir()) == []


@pytest.mark.parametrize(
    ("how", "why"),
    [
        ("flip", "a record failed authentication: the data was altered, reordered or lost"),
        ("bloat", "the peer sent a 16777215-byte record (limit 66560)"),
    ],
)
async def test_a_record_that_lies_leaves_nothing_to_resume(
    sources: source.Sources, output: Path, how: str, why: str
) -> None:
    heard, got = await transfer(sources, output, Relay(stop_at=20, how=how))
    assert isinstance(got, RemoteProtocolError) and not isinstance(got, PeerGone)
    assert str(got) == why
    assert KEPT not in heard.said
    assert list(output.iterdir()) == []


class Racer:
    """Stands for the receiver's direct-connection racer: its dials and listener were
    left pending when an offer was refused, and destroyed pending at the next collection
    ("Task was destroyed but it is pending!" on the receiver's stderr)."""

    def __init__(self) -> None:
        self.closed = 0

    async def close(self, keep: object = None) -> None:
        self.closed += 1


async def test_a_refused_offer_closes_the_receivers_racer(
    sources: source.Sources, output: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    racer = Racer()
    real = aio.offered

    async def offered(*args: object) -> tuple[Offer, Racer]:
        offer, _ = await real(*args)  # type: ignore[arg-type]
        return offer, racer

    monkeypatch.setattr(aio, "offered", offered)
    _, got = await transfer(sources, output, Relay(), accept=False)
    assert isinstance(got, Refused) and str(got) == "transfer declined"
    assert racer.closed >= 1
    assert list(output.iterdir()) == []


async def test_a_refusal_with_a_reason_reaches_the_sender_in_an_abort(
    sources: source.Sources, output: Path
) -> None:
    """A receiver that cannot take the offer where it was told to put it (--stdout and a
    folder) refused with ANSWER no, and its sender said "the receiver declined the
    transfer", which its user never did. The reason travels in the ABORT's reason field,
    which every bob/1 sender reads after its offer; the user's own no stays ANSWER no."""

    async def refuse(*_: object) -> bool:
        raise Refused("not accepted here", "the receiver cannot take it: send another way")

    async with asyncio.timeout(60):
        run = await start(sources, output, Relay(), refuse)
        sent, got, _ = await asyncio.gather(
            run.sending, run.receiving, run.relaying, return_exceptions=True
        )
    assert isinstance(got, Refused) and str(got) == "not accepted here"
    assert type(sent) is PeerAborted
    assert str(sent) == "the other side says: the receiver cannot take it: send another way"
    assert list(output.iterdir()) == []


@pytest.mark.parametrize(
    ("stop", "why"),
    [
        ("ctrl-c", "the other side says: the sender stopped the transfer"),
        ("gone", "the other side closed the connection"),
    ],
)
async def test_a_sender_that_stops_while_the_user_decides_ends_the_question(
    sources: source.Sources, output: Path, stop: str, why: str
) -> None:
    """Nothing is due from the sender while its offer waits for an answer: its ABORT (its
    user's Ctrl-C) or the end of its connection comes instead, and ends the question at
    once. The receiver used to go on asking, and heard of it only once answered."""
    asked = asyncio.Event()

    async def undecided(*_: object) -> bool:  # a user who has not answered yet
        asked.set()
        await asyncio.Event().wait()
        return True

    async with asyncio.timeout(60):
        run = await start(sources, output, Relay(), undecided)
        await asked.wait()
        # the sender's Ctrl-C cancels it, as bob's SIGINT handler does; a relay or sender
        # that dies closes the receiver's connection
        (run.sending if stop == "ctrl-c" else run.relaying).cancel()
        got = (await asyncio.gather(run.receiving, return_exceptions=True))[0]
        await asyncio.gather(run.sending, run.relaying, return_exceptions=True)
    assert type(got) is (PeerAborted if stop == "ctrl-c" else PeerGone), got
    assert str(got) == why
    assert run.heard.said == []
    assert list(output.iterdir()) == []
