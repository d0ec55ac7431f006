"""Resume in process: a real Writer on disk and two sessions joined in memory. The part
an interrupted receive left is verified block by block before it counts; a hostile
sender, a hostile receiver and a neighbour who plants files cannot turn it against us."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from retreatkit.testing import scratch_disk
from retreatkit.transfer import partial, resume, source
from retreatkit.transfer.errors import LocalProtocolError, RemoteProtocolError
from retreatkit.transfer.machine import (
    Answered,
    Ended,
    FileData,
    FileEnd,
    Offered,
    PathChosen,
    Prefixed,
    Session,
    Started,
)
from retreatkit.transfer.offer import Entry, Offer
from retreatkit.transfer.receive import Writer
from retreatkit.transfer.records import RECORD_SIZE, Kind
from retreatkit.transfer.resume import BLOCK, NOTHING, Claim
from retreatkit.transfer.testing import connected_pair

MIB = 1 << 20


def offered(offer: Offer) -> tuple[Session, Session]:
    """A sender and a receiver joined in memory, the offer made and read."""
    sender, receiver = connected_pair()
    receiver.receive_data(sender.send_offer(offer))
    receiver.next_event()
    return sender, receiver


def claimed(offer: Offer, claim: Claim) -> tuple[Session, Session]:
    """As `offered`, then accepted with a resume claim that the sender has read."""
    sender, receiver = offered(offer)
    sender.receive_data(receiver.answer(True, claim))
    sender.next_event()
    return sender, receiver


@pytest.fixture
def output(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def sources_of(tmp_path: Path, files: dict[str, bytes]) -> source.Sources:
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return source.collect([str(folder / name) for name in files])


def run(
    sources: source.Sources, output: Path, stop_after: int | None = None, ctrl_c: bool = False
) -> tuple[Writer, Session]:
    """One transfer in process, as aio does it; `stop_after` bytes, and the receiver dies
    (its part and record stay, as a kill leaves them) or, `ctrl_c`, stops on purpose."""
    sender, receiver = connected_pair()
    receiver.receive_data(sender.send_offer(sources.offer))
    event = receiver.next_event()
    assert isinstance(event, Offered)
    writer = Writer(output, event.offer)
    sender.receive_data(receiver.answer(True, writer.claim))
    answer = sender.next_event()
    assert isinstance(answer, Answered) and answer.claim == writer.claim
    if writer.claim != NOTHING:
        receiver.receive_data(sender.send_prefix(source.prefix_hashes(sources, answer.claim)))
        prefixed = receiver.next_event()
        assert isinstance(prefixed, Prefixed)
        start = resume.start(receiver.files, writer.claim, prefixed.hashes, writer.prefix_hashes())
        writer.start_at(start)
        sender.receive_data(receiver.send_from(start))
        assert isinstance(sender.next_event(), Started)
    writer.make_folders()
    receiver.receive_data(sender.send_path(None))
    assert receiver.next_event() == PathChosen(None)
    producer = source.Producer(sender, sources, compress=False, start=sender.start_at)
    sent = 0
    while True:
        more = producer.fill()
        for chunk in producer.take():
            receiver.receive_data(bytes(chunk))
        while (got := receiver.next_event()) is not None:
            if isinstance(got, FileData):
                writer.write(got.data)
                sent += len(got.data)
                if stop_after is not None and sent >= stop_after:
                    if ctrl_c:
                        writer.abort()
                    writer.close()  # killed: nothing cleaned up
                    return writer, receiver
            elif isinstance(got, FileEnd):
                writer.finish_file()
            elif isinstance(got, Ended):
                writer.complete()
                writer.close()
                return writer, receiver
        assert more


def test_an_interrupted_file_resumes_where_it_stopped(tmp_path: Path, output: Path) -> None:
    data = os.urandom(40 * MIB + 123)
    sources = sources_of(tmp_path, {"vm.img": data})
    run(sources, output, stop_after=21 * MIB)
    held = sum(p.stat().st_size for p in output.glob(".bob-*.part"))
    assert held >= 21 * MIB and (output / f".bob-{_key(sources)}.resume").exists()
    writer, receiver = run(sources, output)
    assert writer.claim == Claim(0, held)  # it resumed from all it held: every block matched
    assert receiver.bytes_done == len(data)
    assert (output / "vm.img").read_bytes() == data
    assert sorted(p.name for p in output.iterdir()) == ["vm.img"]


def test_a_stop_on_purpose_while_resuming_keeps_what_it_resumed_from(
    tmp_path: Path, output: Path
) -> None:
    files = {"a.bin": os.urandom(2 * MIB), "b.bin": os.urandom(3 * MIB)}
    sources = sources_of(tmp_path, files)
    run(sources, output, stop_after=3 * MIB)  # killed: a.bin whole, b.bin in part
    held = sorted(p.name for p in output.iterdir())
    writer, _ = run(sources, output, stop_after=MIB // 2, ctrl_c=True)  # resumed, Ctrl-C
    assert writer.claim.index == 1
    assert sorted(p.name for p in output.iterdir()) == held  # a.bin, the part, the record
    writer, _ = run(sources, output)
    assert writer.claim.index == 1 and writer.claim.length >= MIB  # and it resumes still
    for name, data in files.items():
        assert (output / name).read_bytes() == data


def test_a_stop_on_purpose_leaves_nothing_of_a_fresh_run(tmp_path: Path, output: Path) -> None:
    sources = sources_of(tmp_path, {"a.bin": os.urandom(2 * MIB), "b.bin": os.urandom(MIB)})
    run(sources, output, stop_after=2 * MIB + 1, ctrl_c=True)
    assert list(output.iterdir()) == []


def test_a_part_that_does_not_match_is_received_again(tmp_path: Path, output: Path) -> None:
    data = os.urandom(3 * BLOCK // 2)
    sources = sources_of(tmp_path, {"vm.img": data})
    run(sources, output, stop_after=BLOCK + MIB)
    (part,) = output.glob(".bob-*.part")
    with part.open("r+b") as f:  # the first block rots on disk
        f.write(b"\xff" * 10)
    writer, _ = run(sources, output)
    assert writer.claim == NOTHING  # from the start: (0, 0)
    assert (output / "vm.img").read_bytes() == data


def test_only_the_blocks_past_a_bad_one_travel_again(tmp_path: Path, output: Path) -> None:
    data = os.urandom(3 * BLOCK)
    sources = sources_of(tmp_path, {"vm.img": data})
    run(sources, output, stop_after=2 * BLOCK + MIB)
    (part,) = output.glob(".bob-*.part")
    with part.open("r+b") as f:
        f.seek(BLOCK + 5)
        f.write(b"\x00\x01")
    writer, _ = run(sources, output)
    assert writer.claim == Claim(0, BLOCK)
    assert (output / "vm.img").read_bytes() == data


def test_files_of_a_folder_that_arrived_are_not_sent_again(tmp_path: Path, output: Path) -> None:
    files = {"a.bin": os.urandom(2 * MIB), "b.bin": os.urandom(3 * MIB), "c.bin": os.urandom(MIB)}
    sources = sources_of(tmp_path, files)
    run(sources, output, stop_after=3 * MIB)  # a.bin whole, b.bin in part
    assert (output / "a.bin").exists() and not (output / "b.bin").exists()
    writer, _ = run(sources, output)
    assert writer.claim.index == 1 and writer.claim.length >= MIB
    for name, data in files.items():
        assert (output / name).read_bytes() == data


def test_a_whole_file_that_differs_starts_all_over_under_fresh_names(
    tmp_path: Path, output: Path
) -> None:
    files = {"a.bin": os.urandom(2 * MIB), "b.bin": os.urandom(3 * MIB)}
    sources = sources_of(tmp_path, files)
    run(sources, output, stop_after=3 * MIB)
    (output / "a.bin").write_bytes(bytes(2 * MIB))  # someone changed the finished file
    writer, _ = run(sources, output)
    assert writer.claim == NOTHING
    assert (output / "a (1).bin").read_bytes() == files["a.bin"]  # nothing overwritten
    assert (output / "a.bin").read_bytes() == bytes(2 * MIB)
    assert (output / "b.bin").read_bytes() == files["b.bin"]


def test_a_neighbour_s_planted_part_or_record_is_never_followed(
    tmp_path: Path, output: Path
) -> None:
    data = os.urandom(2 * MIB)
    sources = sources_of(tmp_path, {"f.bin": data})
    secret = tmp_path / "secret"
    secret.write_bytes(b"do not touch")
    key = _key(sources)
    (output / f".bob-{key}.resume").symlink_to(secret)  # a record that is a symlink
    (output / f".bob-{key[:16]}-0.part").symlink_to(secret)
    writer, _ = run(sources, output)
    assert writer.claim == NOTHING  # neither counted
    assert secret.read_bytes() == b"do not touch"
    assert (output / "f.bin").read_bytes() == data


def test_a_hostile_receiver_s_claims_are_refused_by_the_sender() -> None:
    offer = Offer(entries=(Entry(("a",), size=10), Entry(("s",), size=None), Entry(("b",), size=5)))
    for claim, why in [
        (Claim(0, 11), "more of a file than it holds"),
        (Claim(1, 3), "part of a stream"),
        (Claim(2, 1), "a file the offer does not have"),
        (Claim(7, 0), "a file the offer does not have"),
    ]:
        sender, receiver = offered(offer)
        assert receiver._sealer is not None
        sender.receive_data(receiver._sealer.seal(Kind.ANSWER, b"yes" + claim.encode()))
        with pytest.raises(RemoteProtocolError, match=why):
            sender.next_event()
        with pytest.raises(LocalProtocolError):  # and the receiver's own session refuses it
            offered(offer)[1].answer(True, claim)


def test_a_hostile_receiver_cannot_start_where_it_claimed_nothing() -> None:
    offer = Offer(entries=(Entry(("a",), size=10), Entry(("b",), size=5)))
    sender, receiver = claimed(offer, Claim(0, 4))
    receiver.receive_data(sender.send_prefix([bytes(32)]))
    receiver.next_event()
    assert receiver._sealer is not None
    sender.receive_data(receiver._sealer.seal(Kind.FROM, Claim(1, 2).encode()))
    with pytest.raises(RemoteProtocolError, match="start where it claimed nothing"):
        sender.next_event()


@pytest.mark.parametrize("count", [0, 2])
def test_a_hostile_sender_s_hashes_must_cover_the_claim_exactly(count: int) -> None:
    offer = Offer(entries=(Entry(("a",), size=10),))
    sender, receiver = claimed(offer, Claim(0, 4))
    assert sender._sealer is not None
    receiver.receive_data(sender._sealer.seal(Kind.PREFIX, bytes(32 * count)))
    with pytest.raises(RemoteProtocolError, match="hashes"):
        receiver.next_event()


def test_a_hostile_sender_may_not_skip_the_resume_exchange() -> None:
    offer = Offer(entries=(Entry(("a",), size=10),))
    sender, receiver = claimed(offer, Claim(0, 4))
    assert sender._sealer is not None
    receiver.receive_data(sender._sealer.seal(Kind.PATH, b"\x00"))
    with pytest.raises(RemoteProtocolError, match="before the resume exchange"):
        receiver.next_event()


def test_block_sizes_keep_every_hash_in_one_record() -> None:
    assert resume.block_size(1) == BLOCK
    assert resume.block_count(BLOCK * 2047) == 2047
    big = 1 << 40
    assert resume.block_count(big) <= resume.MAX_HASHES
    assert resume.block_size(big) % MIB == 0
    assert RECORD_SIZE >= resume.MAX_HASHES * resume.HASH_SIZE


def _key(sources: source.Sources) -> str:
    from retreatkit.transfer.partial import offer_key

    return offer_key(sources.offer)


def test_a_hostile_relay_cannot_replay_another_session_s_hashes() -> None:
    """A relay that kept an earlier session's PREFIX (or FROM) and plays it into this one:
    every session has its own keys, so the record does not open."""
    offer = Offer(entries=(Entry(("a",), size=10),))
    old_sender, _ = claimed(offer, Claim(0, 4))
    recorded = old_sender.send_prefix([bytes(32)])
    _, receiver = claimed(offer, Claim(0, 4))
    receiver.receive_data(recorded)
    with pytest.raises(RemoteProtocolError, match="failed authentication"):
        receiver.next_event()


# -- the record, written over -------------------------------------------------------------

TOPS = Offer(entries=tuple(Entry((f"{i:02}.bin",), size=1) for i in range(40)))


def tops(moved: str = "") -> dict[str, str]:
    """Where TOPS' names went: as offered, or each moved to a longer name."""
    return {name: f"{name[:2]}{moved}.bin" for name in TOPS.top_level}


@pytest.fixture
def root(output: Path) -> Iterator[int]:
    fd = os.open(output, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def read_back(root: int) -> dict[str, str]:
    record = partial.Record.open(root, TOPS)
    record.close()
    return record.tops


def test_a_shorter_record_cut_short_of_its_cut_is_still_read(
    root: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between writing a shorter record over the old one and cutting the file to
    it: the old one's end followed the new one, and no resume could read either."""
    record = partial.Record(root, partial.offer_key(TOPS))
    record.save(tops(" moved far away from here"), [])

    def killed(fd: int, length: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "ftruncate", killed)
    with pytest.raises(KeyboardInterrupt):
        record.save(tops(), [])
    monkeypatch.undo()
    record.close()
    assert read_back(root) == tops()


@pytest.mark.skipif(os.geteuid() != 0, reason="a full disk needs a tmpfs mount (root)")
def test_a_longer_record_a_full_disk_cannot_take_leaves_the_old_one_whole() -> None:
    """The disk took the new record up to the end of its page: a piece of JSON, which the
    next receive ignored, starting over under fresh names beside what it was told is kept
    to resume from."""
    with scratch_disk("1m") as disk:
        fd = os.open(disk, os.O_RDONLY | os.O_DIRECTORY)
        try:
            record = partial.Record(fd, partial.offer_key(TOPS))
            record.save(tops(), [])
            st = os.statvfs(disk)
            (disk / "filler").write_bytes(bytes(st.f_bavail * st.f_frsize))
            with pytest.raises(OSError, match="No space left on device"):
                record.save(tops(" moved" * 20), [])  # 5 kB: past its page
            assert record.tops == tops()
            record.close()
            assert read_back(fd) == tops()
        finally:
            os.close(fd)
