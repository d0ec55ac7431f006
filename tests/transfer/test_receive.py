"""The Writer under hostile offers and a hostile file system: nothing lands outside the
output folder, nothing is overwritten, no symlink is followed, no partial file stays."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from retreatkit.transfer.codes import Code
from retreatkit.transfer.errors import RemoteProtocolError, TransferError, UnsafeOffer
from retreatkit.transfer.machine import Ended, FileData, FileEnd, Offered, PathChosen, Session
from retreatkit.transfer.offer import Entry, Offer, check_component
from retreatkit.transfer.receive import WriteError, Writer
from retreatkit.transfer.records import RECORD_SIZE, Kind
from retreatkit.transfer.resume import Claim
from retreatkit.transfer.testing import connected_pair

CODE = Code("7", ("purple", "sofa"))


# -- an in-process sender and receiver ----------------------------------------------------


handshake = connected_pair


class RawSender:
    """A keyed sender that seals whatever it is told: the offer JSON need not be valid."""

    def __init__(self) -> None:
        self.session, self.receiver = handshake()

    def seal(self, kind: Kind, body: bytes) -> bytes:
        assert self.session._sealer is not None
        return self.session._sealer.seal(kind, body)

    def offer(self, doc: Any) -> bytes:
        raw = json.dumps(doc).encode()
        encoded = len(raw).to_bytes(4, "big") + raw
        return b"".join(
            self.seal(Kind.OFFER, encoded[i : i + RECORD_SIZE])
            for i in range(0, len(encoded), RECORD_SIZE)
        )

    def file(self, data: bytes) -> bytes:
        out = [self.seal(Kind.DATA, data[i : i + 1000]) for i in range(0, len(data), 1000)]
        out.append(self.seal(Kind.FILE_END, b""))
        return b"".join(out)

    def accept(self) -> bytes:
        """The receiver's yes; what the sender sends next: PATH, staying put."""
        self.receiver.answer(True)
        return self.seal(Kind.PATH, b"\x00")


def offered(receiver: Session, wire: bytes) -> Offer:
    receiver.receive_data(wire)
    event = receiver.next_event()
    assert isinstance(event, Offered)
    return event.offer


def drive(receiver: Session, writer: Writer, wire: bytes) -> list[str]:
    """What aio.receive does with the events after the answer; abort on any error."""
    saved: list[str] = []
    receiver.receive_data(wire)
    try:
        while True:
            event = receiver.next_event()
            if isinstance(event, FileData):
                writer.write(event.data)
            elif isinstance(event, FileEnd):
                saved.append(writer.finish_file())
            elif isinstance(event, Ended):
                writer.complete()
                return saved
            elif isinstance(event, PathChosen):
                continue
            else:
                raise RemoteProtocolError(f"unexpected {type(event).__name__}")
    except TransferError:
        writer.abort()
        raise


def transfer(output: Path, offer: Offer, contents: list[bytes], umask: int | None = None) -> Writer:
    """A whole honest transfer of `offer` into `output`; returns the (closed) Writer."""
    sender, receiver = handshake()
    got = offered(receiver, sender.send_offer(offer))
    writer = Writer(output, got, umask=umask)
    try:
        sender.receive_data(receiver.answer(True))
        sender.next_event()
        receiver.receive_data(sender.send_path(None))
        receiver.next_event()
        writer.make_folders()
        wire = []
        for data in contents:
            wire += [
                sender.send_data(data[i : i + RECORD_SIZE])
                for i in range(0, len(data), RECORD_SIZE)
            ]
            wire.append(sender.end_file())
        wire.append(sender.end())
        drive(receiver, writer, b"".join(wire))
    finally:
        writer.close()
    return writer


Node = tuple[str, object]


def tree(root: Path, content: bool = True) -> dict[str, Node]:
    """Every entry under root, symlinks not followed: its kind and its content (or size
    and mtime), its link target; other kinds (sockets, FIFOs) by kind only."""
    found: dict[str, Node] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            st_ = path.lstat()
            if stat.S_ISLNK(st_.st_mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st_.st_mode):
                found[rel] = ("dir", None)
            elif stat.S_ISREG(st_.st_mode):
                found[rel] = (
                    "file",
                    path.read_bytes() if content else (st_.st_size, st_.st_mtime_ns),
                )
            else:
                found[rel] = ("other", stat.S_IFMT(st_.st_mode))
    return found


def parts(root: Path) -> list[str]:
    return [rel for rel in tree(root) if rel.endswith(".part")]


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to the output folder that must never change."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "target.txt").write_bytes(b"precious")
    (path / "dir").mkdir()
    return path


@pytest.fixture
def output(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# -- nothing outside the output folder (property) -----------------------------------------


_UNSAFE = [
    "..",
    ".",
    "",
    "/",
    "\\",
    "a/b",
    "../x",
    "..\\x",
    "/etc/passwd",
    "C:x",
    "c:\\x",
    "\0",
    "a\0b",
    "x" * 256,
    "\u00e9" * 128,
    "\udc80",
]
_ODD = [
    "\x1b[31m",
    "\u202etxt.exe",
    "e\u0301",
    "\u00e9",
    "\ufb00",
    "\ufeff",
    "\uff0e\uff0e",
    "\u2215etc",
    "\u2024\u2024",
    "~",
    " ",
    "...",
    "-",
    ".bob-0-00000000.part",
    "x" * 255,
    "\u00e9" * 127,
    "outside",
    "out",
    "a (1)",
    "a",
]


@st.composite
def _component(draw: st.DrawFn) -> str:
    roll = draw(st.integers(0, 19))
    if roll < 2:
        return draw(st.sampled_from(_UNSAFE))
    if roll < 9:
        return draw(st.sampled_from(_ODD))
    if roll < 12:
        return draw(st.sampled_from(_ODD)) + draw(st.text(max_size=3))
    return draw(st.text(st.characters(), min_size=1, max_size=6))


@st.composite
def hostile_offers(draw: st.DrawFn) -> list[list[Any]]:
    """Raw offer entries: mostly well formed, with hostile names, sizes and orders."""
    entries: list[list[Any]] = []
    folders: list[list[str]] = [[]]
    for _ in range(draw(st.integers(1, 6))):
        parent = draw(st.sampled_from(folders))
        path = [*parent, draw(_component())]
        if draw(st.integers(0, 9)) == 0:  # a path that skips its folders
            path = [draw(_component()), *path]
        kind = draw(st.sampled_from(["d", "d", "f", "x"]))
        if kind == "d":
            folders.append(path)
            entries.append([path, "d", 0])
        else:
            entries.append([path, kind, draw(st.integers(0, 300))])
    return entries


def _safe_component(name: str) -> bool:
    try:
        check_component(name)
    except UnsafeOffer:
        return False
    return True


def content(path: list[str], size: int) -> bytes:
    seed = hashlib.sha256(json.dumps(path).encode()).digest()
    return (seed * (size // 32 + 1))[:size]


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(entries=hostile_offers(), clash=st.integers(0, 3))
def test_nothing_is_ever_written_outside_the_output_folder(
    tmp_path: Path, outside: Path, entries: list[list[Any]], clash: int
) -> None:
    # the output two folders down: an escape of up to three levels lands in the watched
    # tree (tmp_path, not the session's folder of every test's files, which takes minutes
    # to walk a hundred times late in a run)
    deep = tmp_path / "up" / "up"
    deep.mkdir(parents=True, exist_ok=True)
    output = Path(tempfile.mkdtemp(dir=deep, prefix="out-"))
    # plant a clash under the first offered top-level name: a file, or a symlink out to a
    # folder or a file; only under a safe name (`output / "/etc/passwd"` is /etc/passwd!)
    top = entries[0][0][0] if entries[0][0] else ""
    if clash and _safe_component(top):
        planted = output / top
        assert planted.parent == output
        if clash == 1:
            planted.write_bytes(b"mine")
        elif clash == 2:
            planted.symlink_to(outside)
        else:
            planted.symlink_to(outside / "target.txt")
    before_all = tree(tmp_path, content=False)
    before_out = tree(output)

    raw = RawSender()
    try:
        offer = offered(raw.receiver, raw.offer({"v": 1, "entries": entries}))
    except UnsafeOffer:
        event("offer refused")
        assert tree(tmp_path, content=False) == before_all
        return
    event("offer accepted")
    writer = Writer(output, offer)  # a clash gets a free name, even on a 255-byte one
    wire = raw.accept()
    wire += b"".join(raw.file(content(list(e.path), e.size or 0)) for e in offer.files)
    try:
        writer.make_folders()
        drive(raw.receiver, writer, wire + raw.seal(Kind.END, b""))
    except WriteError as exc:
        # only running out of free variants of a name is allowed to fail
        assert "no free name" in str(exc)
        return
    finally:
        writer.close()

    after_all = tree(tmp_path, content=False)
    out_rel = str(output.relative_to(tmp_path))
    changed = {
        k for k in after_all.keys() | before_all.keys() if after_all.get(k) != before_all.get(k)
    }
    assert all(k.startswith(out_rel + os.sep) for k in changed), changed - {out_rel}
    after_out = tree(output)
    # nothing pre-existing was touched
    for rel, value in before_out.items():
        assert after_out[rel] == value
    # every offered entry is where the writer says, with its content; nothing else is new
    expected: dict[str, Node] = {}
    for entry in offer.entries:
        rel = os.sep.join(writer.final_path(entry))
        expected[rel] = (
            ("dir", None) if entry.is_dir else ("file", content(list(entry.path), entry.size or 0))
        )
    assert {k: v for k, v in after_out.items() if k not in before_out} == expected
    assert not [p for p in parts(output) if p not in expected and p not in before_out]
    assert (outside / "target.txt").read_bytes() == b"precious"


# -- no overwriting -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "renamed"),
    [
        ("photo.jpg", "photo (1).jpg"),
        ("README", "README (1)"),
        (".bashrc", ".bashrc (1)"),
        ("a.tar.gz", "a.tar (1).gz"),
        ("trailing.", "trailing. (1)"),
        ("...", "... (1)"),
    ],
)
def test_top_level_file_clash_is_renamed(output: Path, name: str, renamed: str) -> None:
    (output / name).write_bytes(b"original")
    writer = transfer(output, Offer(entries=(Entry((name,), size=3),)), [b"new"])
    assert (output / name).read_bytes() == b"original"
    assert (output / renamed).read_bytes() == b"new"
    assert writer.written == [renamed]
    assert sorted(os.listdir(output)) == sorted([name, renamed])


def test_clash_counts_up(output: Path) -> None:
    (output / "photo.jpg").write_bytes(b"0")
    (output / "photo (1).jpg").write_bytes(b"1")
    transfer(output, Offer(entries=(Entry(("photo.jpg",), size=1),)), [b"2"])
    assert (output / "photo.jpg").read_bytes() == b"0"
    assert (output / "photo (1).jpg").read_bytes() == b"1"
    assert (output / "photo (2).jpg").read_bytes() == b"2"


def test_top_level_folder_clash_is_renamed_not_merged(output: Path) -> None:
    (output / "album").mkdir()
    (output / "album" / "a.txt").write_bytes(b"original")
    offer = Offer(
        entries=(
            Entry(("album",), is_dir=True),
            Entry(("album", "a.txt"), size=3),
            Entry(("album", "b.txt"), size=1),
        )
    )
    writer = transfer(output, offer, [b"new", b"b"])
    assert (output / "album" / "a.txt").read_bytes() == b"original"
    assert sorted(os.listdir(output / "album")) == ["a.txt"]
    assert (output / "album (1)" / "a.txt").read_bytes() == b"new"
    assert (output / "album (1)" / "b.txt").read_bytes() == b"b"
    assert writer.written == ["album (1)/a.txt", "album (1)/b.txt"]


def test_offered_name_that_looks_like_a_rename_is_not_merged(output: Path) -> None:
    # `a.txt` exists; the offer holds `a.txt` and `a (1).txt`: both must arrive intact
    (output / "a.txt").write_bytes(b"original")
    offer = Offer(entries=(Entry(("a.txt",), size=1), Entry(("a (1).txt",), size=1)))
    writer = transfer(output, offer, [b"A", b"B"])
    assert (output / "a.txt").read_bytes() == b"original"
    assert (output / "a (1).txt").read_bytes() == b"B"
    assert len(set(writer.top_names.values())) == 2
    saved = writer.top_names["a.txt"]
    assert (output / saved).read_bytes() == b"A"


def test_offered_folders_that_look_like_renames(output: Path) -> None:
    (output / "d").mkdir()
    offer = Offer(
        entries=(
            Entry(("d",), is_dir=True),
            Entry(("d", "x"), size=1),
            Entry(("d (1)",), is_dir=True),
            Entry(("d (1)", "x"), size=1),
        )
    )
    writer = transfer(output, offer, [b"1", b"2"])
    assert os.listdir(output / "d") == []
    assert (output / "d (1)" / "x").read_bytes() == b"2"
    assert (output / writer.top_names["d"] / "x").read_bytes() == b"1"


def test_no_free_name_is_an_error_not_an_overwrite(output: Path) -> None:
    names = ["a.txt", *(f"a ({n}).txt" for n in range(1, 1000))]  # every name bob tries
    for name in names:
        (output / name).write_bytes(b"original")
    with pytest.raises(WriteError, match="no free name"):
        Writer(output, Offer(entries=(Entry(("a.txt",), size=1),)))
    assert sorted(os.listdir(output)) == sorted(names)
    assert {(output / name).read_bytes() for name in names} == {b"original"}


@pytest.mark.parametrize(
    ("name", "renamed"),
    [
        ("x" * 252 + ".ab", "x" * 248 + " (1).ab"),
        # a two-byte character is dropped whole, never cut in half
        ("\u00e9" * 125 + "x.txt", "\u00e9" * 123 + " (1).txt"),
        # an extension with no room for a stem is cut with it
        ("a." + "b" * 253, "a." + "b" * 249 + " (1)"),
    ],
    ids=["ascii", "two-byte", "long-extension"],
)
def test_a_name_of_255_bytes_that_exists_is_renamed_within_255(
    output: Path, name: str, renamed: str
) -> None:
    assert len(name.encode()) == 255 and len(renamed.encode()) <= 255
    (output / name).write_bytes(b"original")
    writer = transfer(output, Offer(entries=(Entry((name,), size=3),)), [b"new"])
    assert (output / name).read_bytes() == b"original"
    assert (output / renamed).read_bytes() == b"new"
    assert writer.written == [renamed]


@pytest.mark.parametrize("planted", ["file", "symlink", "folder"])
def test_final_name_taken_mid_transfer_is_not_overwritten(
    output: Path, outside: Path, planted: str
) -> None:
    offer = Offer(entries=(Entry(("d",), is_dir=True), Entry(("d", "f"), size=3)))
    writer = Writer(output, offer)
    writer.make_folders()
    writer.write(b"new")
    final = output / "d" / "f"  # someone else's entry appears under the final name
    if planted == "file":
        final.write_bytes(b"theirs")
    elif planted == "symlink":
        final.symlink_to(outside / "target.txt")
    else:
        final.mkdir()
    before = {k: v for k, v in tree(output / "d").items() if not k.endswith(".part")}
    with pytest.raises(WriteError, match="already exists"):
        writer.finish_file()
    writer.close()
    assert (outside / "target.txt").read_bytes() == b"precious"
    assert tree(output / "d") == before
    assert not parts(output)


# -- symlinks ------------------------------------------------------------------------------


@pytest.mark.parametrize("dangling", [False, True])
def test_symlink_under_offered_file_name_is_not_followed(
    output: Path, outside: Path, dangling: bool
) -> None:
    target = outside / ("missing.txt" if dangling else "target.txt")
    (output / "f.txt").symlink_to(target)
    transfer(output, Offer(entries=(Entry(("f.txt",), size=4),)), [b"evil"])
    assert (output / "f.txt").is_symlink()
    assert os.readlink(output / "f.txt") == str(target)
    assert (output / "f (1).txt").read_bytes() == b"evil"
    assert not (outside / "missing.txt").exists()
    assert (outside / "target.txt").read_bytes() == b"precious"


def test_symlink_under_offered_folder_name_is_not_followed(output: Path, outside: Path) -> None:
    (output / "d").symlink_to(outside)
    before = tree(outside)
    offer = Offer(entries=(Entry(("d",), is_dir=True), Entry(("d", "target.txt"), size=4)))
    transfer(output, offer, [b"evil"])
    assert tree(outside) == before
    assert (output / "d (1)" / "target.txt").read_bytes() == b"evil"


def _swap_for_symlink(folder: Path, target: Path) -> Path:
    """Move `folder` aside (still inside the output folder) and plant a symlink instead."""
    aside = folder.with_name(folder.name + ".aside")
    folder.rename(aside)
    folder.symlink_to(target, target_is_directory=True)
    return aside


@pytest.mark.parametrize("which", [("d",), ("d", "e")])
def test_parent_swapped_for_symlink_before_the_file(
    output: Path, outside: Path, which: tuple[str, ...]
) -> None:
    offer = Offer(
        entries=(
            Entry(("d",), is_dir=True),
            Entry(("d", "e"), is_dir=True),
            Entry(("d", "e", "f"), size=4),
        )
    )
    before = tree(outside)
    writer = Writer(output, offer)
    writer.make_folders()
    _swap_for_symlink(output.joinpath(*which), outside / "dir")
    with pytest.raises(WriteError, match="symlink or file stands in the way") as info:
        writer.write(b"evil")
    assert "\n" not in str(info.value)
    writer.abort()
    writer.close()
    assert tree(outside) == before
    assert not parts(output)
    assert not any(rel.endswith("f") for rel in tree(output))


def test_parent_swapped_for_symlink_mid_file(output: Path, outside: Path) -> None:
    offer = Offer(
        entries=(Entry(("d",), is_dir=True), Entry(("d", "f"), size=8), Entry(("d", "g"), size=4))
    )
    before = tree(outside)
    writer = Writer(output, offer)
    writer.make_folders()
    writer.write(b"evil")
    aside = _swap_for_symlink(output / "d", outside / "dir")
    writer.write(b"more")
    writer.finish_file()  # into the folder it opened, wherever that is now: not through the link
    with pytest.raises(WriteError, match="symlink or file stands in the way"):
        writer.write(b"next")  # the next file must go through the link: refused
    writer.abort()
    writer.close()
    assert tree(outside) == before
    assert (aside / "f").read_bytes() == b"evilmore"
    assert not parts(output)


def test_output_folder_path_components_are_trusted_but_names_are_not(
    tmp_path: Path, outside: Path
) -> None:
    # the user may choose a symlink as output folder; only offered names are distrusted
    link = tmp_path / "link-to-out"
    real = tmp_path / "real-out"
    real.mkdir()
    link.symlink_to(real)
    transfer(link, Offer(entries=(Entry(("f",), size=1),)), [b"x"])
    assert (real / "f").read_bytes() == b"x"


# -- permission bits ---------------------------------------------------------------------
# PROTOCOL.md: 0666, or 0777 for `x` entries, minus the umask; never setuid/setgid/sticky.


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o000, 0o027])
def test_permission_bits(output: Path, mask: int) -> None:
    offer = Offer(
        entries=(
            Entry(("run.sh",), size=2, executable=True),
            Entry(("data.txt",), size=2),
            Entry(("d",), is_dir=True),
            Entry(("d", "tool"), size=0, executable=True),
        )
    )
    with umask(mask):
        transfer(output, offer, [b"#!", b"hi", b""])
    assert stat.S_IMODE((output / "run.sh").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((output / "data.txt").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((output / "d" / "tool").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((output / "d").stat().st_mode) == 0o777 & ~mask


def test_executable_is_0755_under_the_usual_umask(output: Path) -> None:
    offer = Offer(entries=(Entry(("run",), size=1, executable=True), Entry(("plain",), size=1)))
    with umask(0o000):
        transfer(output, offer, [b"x", b"y"], umask=0o022)  # an explicit umask wins
    assert stat.S_IMODE((output / "run").stat().st_mode) == 0o755
    assert stat.S_IMODE((output / "plain").stat().st_mode) == 0o644


@pytest.mark.parametrize("mask", [0o000, 0o022])
def test_no_setuid_setgid_or_sticky(output: Path, mask: int) -> None:
    output.chmod(0o3777)  # a setgid, sticky output folder: its files still get none
    offer = Offer(
        entries=(
            Entry(("run",), size=1, executable=True),
            Entry(("plain",), size=1),
            Entry(("d",), is_dir=True),
            Entry(("d", "x"), size=1, executable=True),
        )
    )
    transfer(output, offer, [b"x", b"y", b"z"], umask=mask)
    for path in (output / "run", output / "plain", output / "d" / "x"):
        assert not path.stat().st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX), path
    assert stat.S_IMODE((output / "run").stat().st_mode) == 0o777 & ~mask


def test_part_file_is_private_while_written(output: Path) -> None:
    writer = Writer(output, Offer(entries=(Entry(("f",), size=10),)), umask=0)
    writer.write(b"half")
    [part] = parts(output)
    assert stat.S_IMODE((output / part).stat().st_mode) == 0o600
    writer.close()
    assert not parts(output)


# -- names taken after the question ---------------------------------------------------


def test_a_top_name_taken_after_the_question_moves_on_to_the_next_free_one(
    output: Path,
) -> None:
    # another receive into this folder (or a user) took the name meanwhile
    offer = Offer(entries=(Entry(("big.bin",), size=3), Entry(("big (1).bin",), size=1)))
    writer = Writer(output, offer)
    writer.make_folders()
    (output / "big.bin").write_bytes(b"theirs")
    writer.write(b"new")
    assert writer.finish_file() == "big (2).bin"  # 'big (1).bin' is the offer's own next
    writer.write(b"x")
    assert writer.finish_file() == "big (1).bin"
    writer.complete()
    writer.close()
    assert writer.renamed == [("big.bin", "big (2).bin")]
    assert (output / "big.bin").read_bytes() == b"theirs"
    assert (output / "big (2).bin").read_bytes() == b"new"


def test_a_top_folder_taken_after_the_question_moves_on_too(output: Path) -> None:
    writer = Writer(output, FOLD)
    (output / "fold").mkdir()
    writer.make_folders()
    writer.write(b"#!")
    assert writer.finish_file() == "fold (1)/a.sh"
    assert writer.renamed == [("fold", "fold (1)")]
    writer.abort()
    writer.close()
    assert sorted(tree(output)) == ["fold"]


def test_a_resume_finds_a_file_under_the_name_it_moved_to(output: Path) -> None:
    offer = Offer(entries=(Entry(("a.bin",), size=2), Entry(("b.bin",), size=4)))
    writer = Writer(output, offer)
    writer.make_folders()
    (output / "a.bin").write_bytes(b"theirs")
    writer.write(b"aa")
    writer.finish_file()
    writer.write(b"bb")
    writer.abort(keep=True)  # the connection broke
    writer.close()
    again = Writer(output, offer)
    assert again.top_names == {"a.bin": "a (1).bin", "b.bin": "b.bin"}
    assert again.claim == Claim(1, 2)
    again.close()


# -- failed and aborted files ------------------------------------------------------------


FOLD = Offer(
    entries=(
        Entry(("fold",), is_dir=True),
        Entry(("fold", "a.sh"), size=2, executable=True),
        Entry(("fold", "sub"), is_dir=True),
        Entry(("fold", "sub", "b.bin"), size=10),
    )
)


def half_folder(output: Path) -> Writer:
    """A receive of FOLD stopped in the middle of b.bin: a.sh whole, b.bin in its part."""
    writer = Writer(output, FOLD)
    writer.make_folders()
    writer.write(b"#!")
    writer.finish_file()
    writer.write(b"half")
    return writer


def test_a_stop_on_purpose_leaves_the_folder_as_this_run_found_it(output: Path) -> None:
    # Ctrl-C, an ABORT or a lie mid-folder: a half folder left behind would make the next
    # try land in 'fold (1)' beside it (README: a stop leaves nothing)
    (output / "fold").mkdir()
    (output / "fold" / "mine.txt").write_text("was here")
    before = tree(output)
    writer = half_folder(output)
    assert (output / "fold (1)" / "a.sh").exists() and parts(output)
    writer.abort()
    writer.close()
    assert tree(output) == before  # the user's 'fold' untouched; nothing of ours, no record


def test_a_stop_removes_only_what_is_still_its_own(output: Path) -> None:
    writer = half_folder(output)
    top = output / "fold"
    (top / "sub" / "note.txt").write_text("put here meanwhile")
    (top / "new").write_text("replaced meanwhile")
    (top / "new").replace(top / "a.sh")  # as an editor saves: the name is no longer ours
    writer.abort()
    writer.close()
    assert set(tree(output)) == {"fold", "fold/a.sh", "fold/sub", "fold/sub/note.txt"}
    assert (top / "a.sh").read_text() == "replaced meanwhile"


def test_a_stop_never_follows_a_symlink_to_what_it_made(output: Path, outside: Path) -> None:
    writer = half_folder(output)
    (output / "fold").rename(outside / "moved")  # what we made, moved out of the folder
    (output / "fold").symlink_to(outside / "moved")  # and reachable only through a link
    writer.abort()
    writer.close()
    assert (outside / "moved" / "a.sh").read_bytes() == b"#!"
    assert (outside / "moved" / "sub").is_dir()
    assert (output / "fold").is_symlink()


def test_aborted_file_leaves_nothing(output: Path) -> None:
    offer = Offer(entries=(Entry(("a",), size=1), Entry(("b",), size=10)))
    writer = Writer(output, offer)
    writer.write(b"a")
    assert writer.finish_file() == "a"
    writer.write(b"half")
    assert len(parts(output)) == 1
    writer.abort()
    writer.abort()  # idempotent
    writer.close()
    assert os.listdir(output) == []  # not even the file that arrived whole: this run's


def test_a_malformed_file_end_leaves_no_file(output: Path) -> None:
    raw = RawSender()
    offer = offered(
        raw.receiver, raw.offer({"v": 1, "entries": [[["ok"], "f", 2], [["bad"], "f", 4]]})
    )
    writer = Writer(output, offer)
    wire = raw.accept() + raw.file(b"ok") + raw.seal(Kind.DATA, b"evil")
    wire += raw.seal(Kind.FILE_END, hashlib.sha256(b"good").digest())
    with pytest.raises(RemoteProtocolError, match="FILE_END is not empty"):
        drive(raw.receiver, writer, wire)
    writer.close()
    assert os.listdir(output) == []  # "ok" too: it came from the same lying sender


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_write_error_leaves_no_part(output: Path) -> None:
    offer = Offer(entries=(Entry(("d",), is_dir=True), Entry(("d", "f"), size=4)))
    writer = Writer(output, offer)
    writer.make_folders()
    writer.write(b"half")
    (output / "d").chmod(0o500)  # the folder turns read-only: link() fails
    try:
        with pytest.raises(WriteError, match="cannot save"):
            writer.finish_file()
    finally:
        (output / "d").chmod(0o700)
        writer.close()
    assert os.listdir(output / "d") == []


def quota_at_close(monkeypatch: pytest.MonkeyPatch, fd: int) -> None:
    """Closing `fd` frees it, then says the quota is exceeded, as NFS does once: the
    writes went to the cache, and the server refused them as the file was closed."""
    close = os.close

    def closing(number: int) -> None:
        close(number)
        if number == fd:
            monkeypatch.setattr(os, "close", close)
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(os, "close", closing)


def test_a_quota_said_as_a_file_closes_keeps_it_and_closes_nothing_twice(
    output: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The part's number was closed again by the stop that keeps it: EBADF, said as
    'OSError ... (a bug in bob)' in place of the full disk, or another file's number."""
    offer = Offer(entries=(Entry(("a.bin",), size=4),))
    writer = Writer(output, offer)
    writer.make_folders()
    writer.write(b"four")
    assert writer._fd is not None
    quota_at_close(monkeypatch, writer._fd)
    with pytest.raises(WriteError) as raised:
        writer.finish_file()
    assert (
        str(raised.value)
        == f"cannot save a.bin: the disk of {output} is full (Disk quota exceeded)"
    )
    assert raised.value.full and raised.value.public == "the receiver's disk is full"
    writer.abort(keep=True)  # aio.receive: a full disk keeps what arrived
    writer.close()
    assert parts(output) == [".bob-" + writer.record.key[:16] + "-0.part"]


def test_a_quota_said_at_a_stop_still_keeps_the_part(
    output: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offer = Offer(entries=(Entry(("a.bin",), size=8),))
    writer = Writer(output, offer)
    writer.make_folders()
    writer.write(b"four")
    assert writer._fd is not None
    quota_at_close(monkeypatch, writer._fd)
    writer.abort(keep=True)
    writer.close()
    assert len(parts(output)) == 1


def test_data_beyond_the_last_file_is_refused(output: Path) -> None:
    writer = Writer(output, Offer(entries=(Entry(("a",), size=1),)))
    writer.write(b"a")
    writer.finish_file()
    with pytest.raises(WriteError, match="beyond"):
        writer.write(b"more")
    writer.close()
    assert os.listdir(output) == ["a"]


def test_unknown_output_folder(tmp_path: Path) -> None:
    with pytest.raises(WriteError, match="cannot open output folder"):
        Writer(
            tmp_path / "missing",
            Offer(
                entries=(
                    Entry(
                        ("a",),
                    ),
                )
            ),
        )


def test_check_space(output: Path) -> None:
    huge = Offer(entries=(Entry(("a",), size=1 << 50),))
    with pytest.raises(WriteError) as refused:
        Writer(output, huge).check_space()
    assert re.fullmatch(
        rf"not enough space in {re.escape(str(output))}: 1126 TB offered, [\d.]+ [kMGT]?B free",
        str(refused.value),
    )
    assert refused.value.public == "the receiver has not enough free space"
    Writer(output, Offer(entries=(Entry(("a",), size=None),))).check_space()
