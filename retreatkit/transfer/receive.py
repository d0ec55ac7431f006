"""Safe writes of an accepted offer under the output folder.

Every path is opened component by component relative to a folder descriptor with
O_NOFOLLOW, so neither a sender-chosen name nor a symlink swapped in mid-transfer
can lead outside the output folder. Data goes to a private `.part` file and is
linked to its final name once the whole file arrived; link() refuses to replace an
existing name, so nothing is ever overwritten. A top-level name that already
exists, or is taken while the file arrives, gets a free one instead: `photo.jpg`
arrives as `photo (1).jpg`, unless an earlier, interrupted receive of the same offer
put it there (partial.py): then the receive resumes into the same names. A stop on
purpose removes what this receive made, and only that (made.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Container, Iterator
from pathlib import Path

from retreatkit import units
from retreatkit.transfer import made, partial, resume
from retreatkit.transfer.errors import TransferError
from retreatkit.transfer.offer import Entry, Offer, display_path, escape

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_RENAMES = 1000
# An offer may not take the last of the disk: 5% of it stays free, at most this much.
RESERVE = 64 * 1024 * 1024
RESERVE_SHARE = 0.05
FULL = (errno.ENOSPC, errno.EDQUOT)
FULL_PUBLIC = "the receiver's disk is full"


class WriteError(TransferError):
    """We could not write what was offered (disk full, name taken, no permission).

    The message names paths and sizes for our user; `public` is what the sender may be
    told: what failed, never where, nor how much room is left. `full`: the disk filled
    up, which says nothing against what arrived (it stays, to resume once there is room).
    """

    def __init__(
        self,
        message: str,
        public: str = "the receiver could not save the files",
        full: bool = False,
    ):
        super().__init__(message)
        self.public = public
        self.full = full


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def free_name(root_fd: int, name: str, taken: Container[str] = ()) -> str:
    """`name`, or `name (N)` before its extension, whichever does not exist yet.

    A renamed name also avoids `taken`: the other names of the same offer, which may
    not exist yet (`a.txt` and `a (1).txt` offered together, `a.txt` already there).
    """
    stem, dot, ext = name.rpartition(".") if "." in name.strip(".") else (name, "", "")
    for n in range(_MAX_RENAMES):
        candidate = name if n == 0 else _numbered(stem, f"{dot}{ext}", n)
        if n and candidate in taken:
            continue
        try:
            os.lstat(candidate, dir_fd=root_fd)
        except FileNotFoundError:
            return candidate
    raise WriteError(
        f"no free name for {escape(name)} in the output folder",
        "the receiver has no free name for a file",
    )


def _numbered(stem: str, ext: str, n: int) -> str:
    """`stem (n)ext` in at most 255 bytes (NAME_MAX): a long name gives up the end of
    its stem, whole characters only, so a clash on a name of 255 bytes still finds a
    free one; an extension too long to keep is cut with the stem."""
    mark = f" ({n})"
    room = 255 - len(f"{mark}{ext}".encode())
    kept = stem.encode()[: max(room, 0)].decode("utf-8", "ignore")
    if not kept:
        kept, ext = f"{stem}{ext}".encode()[: 255 - len(mark)].decode("utf-8", "ignore"), ""
    return f"{kept}{mark}{ext}"


class Writer:
    """Writes one offer's folders and files; `abort()` removes what this run made,
    unless asked to keep it for a later resume."""

    def __init__(
        self, output: Path, offer: Offer, umask: int | None = None, resume_from: bool = True
    ) -> None:
        self.offer = offer
        self._umask = current_umask() if umask is None else umask
        self._output = escape(str(output.absolute()))
        try:
            self._root = os.open(output, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise WriteError(
                f"cannot open output folder {output}: {exc.strerror}",
                "the receiver cannot write into its folder",
            ) from None
        self._files = offer.files
        self._index = 0
        self._offset: int | None = None  # where the current file's part resumes
        self._in_part = 0  # bytes the current file's part holds, from an earlier run too
        self._fd: int | None = None
        self._part: str | None = None
        self._part_ours = False  # this run started the part (not one it resumed)
        self._parent: int | None = None
        self._made = made.Made()  # what this run made, to remove on a stop on purpose
        self.record = partial.Record(self._root, partial.offer_key(offer))
        if resume_from and offer.files:
            self.record = partial.Record.open(self._root, offer)
        self.resuming = bool(self.record.tops)
        self.top_names: dict[str, str] = dict(self.record.tops)
        if not self.resuming:
            self._fresh_names()
        self.claim = self._claim() if self.resuming else resume.NOTHING
        self.written: list[str] = []
        self.renamed: list[tuple[str, str]] = []  # top names taken after the question

    def _fresh_names(self) -> None:
        self.top_names = {}
        taken = set(self.offer.top_level)
        for top in self.offer.top_level:
            self.top_names[top] = name = free_name(self._root, top, taken)
            taken.add(name)

    def final_path(self, entry: Entry) -> tuple[str, ...]:
        return (self.top_names[entry.path[0]], *entry.path[1:])

    # -- resume -----------------------------------------------------------------------

    def _claim(self) -> resume.Claim:
        """What an earlier receive of this offer left here: whole files in order, then
        the part of the next one."""
        for index, entry in enumerate(self._files):
            path = self.final_path(entry)
            try:
                parent = self._open_parent(path)
            except WriteError:
                return resume.Claim(index, 0)
            try:
                if entry.size is None:
                    return resume.Claim(index, 0)
                try:
                    st = os.lstat(path[-1], dir_fd=parent)
                    done = stat.S_ISREG(st.st_mode) and st.st_size == entry.size
                except OSError:
                    done = False
                if not done:
                    name = partial.part_name(self.record.tag, index)
                    return resume.Claim(index, partial.held(parent, name, entry.size))
            finally:
                os.close(parent)
        return resume.Claim(len(self._files), 0)

    def held_bytes(self) -> int:
        return resume.prefix(self._files, self.claim)

    def prefix_hashes(self) -> list[bytes]:
        """Block hashes of what this folder holds of the claim (read from disk: a thread)."""
        hasher = resume.Hasher(self.held_bytes())
        try:
            for chunk in self._held_chunks():
                hasher.update(chunk)
        except OSError as exc:
            raise WriteError(
                f"cannot read back what an earlier receive left: {exc.strerror or exc}",
                "the receiver could not read its partial files",
            ) from None
        return hasher.digests()

    def _held_chunks(self) -> Iterator[bytes]:
        claim = self.claim
        for index, entry in enumerate(self._files[: claim.index + 1]):
            length = claim.length if index == claim.index else entry.size or 0
            if index == len(self._files) or not length:
                continue
            path = self.final_path(entry)
            name = path[-1] if index < claim.index else partial.part_name(self.record.tag, index)
            parent = self._open_parent(path)
            try:
                yield from partial.read_file(parent, name, length)
            finally:
                os.close(parent)

    def start_at(self, start: resume.Claim) -> None:
        """Where the data starts (FROM): files before it stay, the part is cut back to it;
        (0, 0) after whole files that differ means starting over under fresh names."""
        if start == resume.NOTHING and self.claim.index > 0:
            self._drop_part(self.claim.index)
            self._fresh_names()
            self.resuming = False
            self.record.tops = {}
        self._index = start.index
        held = self.claim.length if start.index == self.claim.index else 0
        self._offset = start.length if held and start.index < len(self._files) else None
        self._in_part = self._offset or 0
        self.claim = start

    def _drop_part(self, index: int) -> None:
        if index >= len(self._files):
            return
        path = self.final_path(self._files[index])
        with contextlib.suppress(WriteError, OSError):
            parent = self._open_parent(path)
            try:
                os.unlink(partial.part_name(self.record.tag, index), dir_fd=parent)
            finally:
                os.close(parent)

    # -- space and folders ------------------------------------------------------------

    def room(self) -> int:
        """Bytes this offer may take: the free space, less what always stays free."""
        st = os.statvfs(self._root)
        reserve = min(RESERVE, int(st.f_blocks * st.f_frsize * RESERVE_SHARE))
        return max(0, st.f_bavail * st.f_frsize - reserve)

    def needed(self) -> int:
        """What the files still to come take on this disk: each in whole blocks, so that
        thousands of small files cannot fill it halfway through a folder (a file of 100
        bytes takes 4 KiB of ext4 or tmpfs)."""
        block = os.statvfs(self._root).f_frsize or 1
        claim = self.claim
        need = 0
        for index, entry in enumerate(self._files[claim.index :], claim.index):
            if entry.size is not None:
                held = claim.length if index == claim.index else 0
                need += -(-entry.size // block) * block - held // block * block
        return need

    def check_space(self) -> int | None:
        """Refuse an offer whose sizes do not fit; returns the most a stream of unknown
        length may bring (None if there is no such stream)."""
        room = self.room()
        known = self.needed()
        if known > room:
            offered = sum(e.size for e in self._files if e.size is not None) - self.held_bytes()
            blocks = f" ({units.size(known)} on that disk)" if known > offered * 1.01 else ""
            raise WriteError(
                f"not enough space in {self._output}: {units.size(offered)} offered{blocks},"
                f" {units.size(room)} free",
                "the receiver has not enough free space",
            )
        if self.offer.total_size is None:
            return room - known
        return None

    def make_folders(self) -> None:
        """The offer's folders (those a resumed receive made already stay), and the
        record a later run resumes from."""
        for entry in self.offer.entries:
            if entry.is_dir:
                self._make_folder(entry)
        if self._files:
            self._save_record()

    def _make_folder(self, entry: Entry) -> None:
        while True:
            path = self.final_path(entry)
            parent = self._open_parent(path)
            try:
                os.mkdir(path[-1], 0o777, dir_fd=parent)
                self._made.add(path, os.lstat(path[-1], dir_fd=parent), folder=True)
                return
            except FileExistsError:
                if self.resuming and path[0] in self.record.folders:
                    return
                if len(path) > 1:  # inside a folder we made: someone else's name there
                    raise self._error(
                        "cannot create folder", path, FileExistsError(errno.EEXIST, "")
                    ) from None
                self._rename_top(entry.path[0])
            except OSError as exc:
                raise self._error("cannot create folder", path, exc) from None
            finally:
                os.close(parent)

    def _save_record(self) -> None:
        """Where the top-level names went, and which of them are folders."""
        entries = self.offer.entries
        folders = [self.top_names[e.path[0]] for e in entries if e.is_dir and len(e.path) == 1]
        try:
            self.record.save(self.top_names, folders)
        except OSError as exc:
            if not self.resuming:  # a record it could not write would lead a resume nowhere
                self.record.remove()
            raise self._error("cannot write", (self.record.name,), exc) from None

    def _rename_top(self, top: str) -> None:
        """A top-level name free at the question was taken since (another receive into
        this folder, a user): the next free one, as if it had been taken then."""
        taken = set(self.top_names.values()) | set(self.offer.top_level)
        self.top_names[top] = name = free_name(self._root, top, taken)
        self.renamed.append((top, name))

    # -- data -------------------------------------------------------------------------

    def write(self, data: bytes | memoryview) -> None:
        if self._fd is None:
            self._open_part()
        assert self._fd is not None
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except OSError as exc:
                raise self._error("cannot write", self._current_path(), exc) from None
            view = view[written:]
            self._in_part += written

    def finish_file(self) -> str:
        """The current file arrived whole: give it its final name. Returns that name."""
        if self._fd is None:
            self._open_part()
        assert self._fd is not None and self._parent is not None and self._part is not None
        entry = self._files[self._index]
        path = self.final_path(entry)
        mode = (0o777 if entry.executable else 0o666) & ~self._umask & 0o777
        try:
            os.fchmod(self._fd, mode)  # never setuid, setgid or sticky
            fd, self._fd = self._fd, None
            os.close(fd)  # the number is free even when this fails (NFS says a quota here)
            path = self._link(entry)
        except OSError as exc:
            if exc.errno not in FULL:  # a full disk: the caller keeps what arrived
                self.abort()
            raise self._error("cannot save", path, exc) from None
        os.unlink(self._part, dir_fd=self._parent)
        self._made.add(path, os.lstat(path[-1], dir_fd=self._parent))
        os.close(self._parent)
        self._part = self._parent = None
        self._index += 1
        self._in_part = 0
        shown = display_path(path)
        self.written.append(shown)
        return shown

    def _link(self, entry: Entry) -> tuple[str, ...]:
        """The part under its final name. link() fails with EEXIST where rename() would
        silently replace; a top-level name taken since the question moves on."""
        assert self._part is not None and self._parent is not None
        while True:
            path = self.final_path(entry)
            try:
                os.link(self._part, path[-1], src_dir_fd=self._parent, dst_dir_fd=self._parent)
                return path
            except FileExistsError:
                if len(path) > 1:
                    raise
                self._rename_top(entry.path[0])
                if self.record.fd is not None:  # a resume finds it under its new name
                    self._save_record()

    @property
    def all_named(self) -> bool:
        """Every offered file arrived whole (each record authenticated, its size checked)
        and has its name: only what follows the last FILE_END may be missing."""
        return self._index >= len(self._files)

    @property
    def holds_anything(self) -> bool:
        """Anything of the offer is here: a file that arrived whole, or a byte of the part
        of the next, from this run or an earlier one (the claim). A receive cut before
        its first byte holds nothing."""
        return self._index > 0 or self._in_part > 0 or self.claim != resume.NOTHING

    @property
    def worth_keeping(self) -> bool:
        """What a stop keeps is worth keeping: a file that arrived whole, or the part of
        one of known size. A stream's part is not (it is never resumed: stdin is read
        once), so an offer cut in its first file, a stream, leaves nothing to resume."""
        if self._index > 0:
            return True
        return self.holds_anything and self._files[0].size is not None

    def complete(self) -> None:
        """Everything arrived: nothing is left to resume, nor to remove on a stop."""
        self.record.remove()
        self._made.forget()

    def abort(self, keep: bool = False) -> None:
        """With `keep` (the connection broke or went quiet, or our user stopped it with
        Ctrl-C) everything stays, with the part of a file of known size, to resume.
        Without it (an ABORT, a refusal, a sender that lied) the folder is left as this
        run found it, so no half folder stays beside the next try's `fold (1)`: what it
        made goes (made.py); what an earlier, interrupted run of the offer left stays,
        with its record."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):  # what it held is checked at a resume
                os.close(fd)
        current = self._files[self._index] if self._index < len(self._files) else None
        known = current is not None and current.size is not None
        resumable = keep and known and self.record.fd is not None
        ours = self._part_ours or not self.resuming
        if self._part is not None and self._parent is not None and ours and not resumable:
            with contextlib.suppress(OSError):
                os.unlink(self._part, dir_fd=self._parent)
        if self._parent is not None:
            os.close(self._parent)
        self._part = self._parent = None
        if not keep:
            self._made.undo(self._open_parent)
            if not self.resuming:
                self.record.remove()

    def close(self) -> None:
        self.abort(keep=True)
        self.record.close()
        os.close(self._root)

    # -- internals ----------------------------------------------------------------------

    def _current_path(self) -> tuple[str, ...]:
        return self.final_path(self._files[self._index])

    def _open_part(self) -> None:
        if self._index >= len(self._files):
            raise WriteError("data beyond the last offered file")
        path = self._current_path()
        self._parent = self._open_parent(path)
        self._part = partial.part_name(self.record.tag, self._index)
        offset, self._offset = self._offset, None
        self._part_ours = offset is None
        try:
            self._fd = partial.open_part(self._parent, self._part, offset)
        except OSError as exc:
            if offset is None:
                self._part = None  # not ours to remove
            if exc.errno not in FULL:  # a full disk: the caller keeps what arrived
                self.abort()
            raise self._error("cannot create", path, exc) from None

    def _open_parent(self, path: tuple[str, ...]) -> int:
        fd = os.dup(self._root)
        try:
            for part in path[:-1]:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nxt
        except OSError as exc:
            os.close(fd)
            raise self._error("cannot enter folder of", path, exc) from None
        return fd

    def _error(self, what: str, path: tuple[str, ...], exc: OSError) -> WriteError:
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # O_NOFOLLOW | O_DIRECTORY: either
            reason = "a symlink or file stands in the way"
        if exc.errno == errno.EEXIST:
            reason = "it already exists"
        shown = f"{what} {display_path(path)}"
        if exc.errno in FULL:
            return WriteError(
                f"{shown}: the disk of {self._output} is full ({reason})", FULL_PUBLIC, full=True
            )
        thing = "a folder" if "folder" in what else "a file"
        return WriteError(f"{shown}: {reason}", f"the receiver could not save {thing}: {reason}")
