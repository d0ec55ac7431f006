"""What a sender offers: paths on disk (files, folders) or stdin, turned into an Offer."""

from __future__ import annotations

import functools
import os
import select
import shlex
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from retreatkit.transfer.errors import TransferError, UnsafeOffer
from retreatkit.transfer.machine import Session
from retreatkit.transfer.offer import (
    MAX_ENTRIES,
    Entry,
    Offer,
    check_component,
    display_path,
    escape,
    name_problem,
    show_name,
)
from retreatkit.transfer.records import RECORD_SIZE
from retreatkit.transfer.resume import NOTHING, Claim, Hasher, prefix

STDIN = "-"
READ_SIZE = 16 * RECORD_SIZE
STDIN_NAME = "stdin"


class SourceError(TransferError):
    """A path the user asked to send cannot be sent."""


class _TooMany(Exception):
    """The paths hold more entries than an offer may list: the walk stops there."""


@dataclass
class Sources:
    offer: Offer
    paths: list[str | None]  # one per offered file, in order; None is stdin
    skipped: list[str] = field(default_factory=list)  # symlinks and special files


def collect(args: list[str], stdin_name: str = STDIN_NAME) -> Sources:
    """Everything the user named, checked before a passphrase is shown: a name the
    receiver would refuse, or a file or folder we cannot read, is found here."""
    entries: list[Entry] = []
    paths: list[str | None] = []
    skipped: list[str] = []
    tops: set[str] = set()
    try:
        for arg in args:
            if arg == STDIN:
                _add_top(tops, stdin_name)
                entries.append(Entry((stdin_name,), size=None))
                paths.append(None)
                continue
            path = Path(arg)
            try:
                st = path.stat()  # a symlink named here is followed, as cp and wormhole do
            except OSError as exc:
                raise SourceError(f"cannot send {escape(arg)}: {exc.strerror}") from None
            name = path.resolve().name if path.name in ("", ".", "..") else path.name
            _check_local(name, arg)
            _add_top(tops, name)
            if stat.S_ISDIR(st.st_mode):
                entries.append(Entry((name,), is_dir=True, size=0))
                _walk(path, (name,), entries, paths, skipped)
            elif stat.S_ISREG(st.st_mode):
                _check_readable(path, arg)
                entries.append(_file_entry((name,), st))
                paths.append(str(path.resolve()))  # opened with O_NOFOLLOW: the link's target
            else:
                raise SourceError(f"cannot send {escape(arg)}: not a file or folder")
        if len(entries) > MAX_ENTRIES:
            raise _TooMany
    except _TooMany:
        raise SourceError(too_many(args)) from None
    try:
        offer = Offer(entries=tuple(entries))
    except UnsafeOffer as exc:
        raise SourceError(f"cannot send: {exc}") from None
    return Sources(offer, paths, skipped)


def too_many(args: list[str]) -> str:
    """What to do with more than an offer may list: one stream, which tar makes."""
    shown = "PATH..."
    name = "files"
    if all(arg != STDIN and escape(arg) == arg for arg in args):
        shown = " ".join(shlex.quote(arg) for arg in args)
        if len(args) == 1:
            path = Path(args[0])
            top = path.resolve().name if path.name in ("", ".", "..") else path.name
            name = top if escape(top) == top else name
    return (
        f"cannot send: over {MAX_ENTRIES} files and folders, more than one offer may list;"
        f" send them as one stream instead: tar c {shown} | bob send --name"
        f" {shlex.quote(name + '.tar')} -"
    )


def _add_top(tops: set[str], name: str) -> None:
    if name in tops:
        raise SourceError(f"two of the paths are named {show_name(name)}; send them separately")
    tops.add(name)


def _check_local(name: str, shown: str) -> None:
    try:
        check_component(name)
    except UnsafeOffer as exc:
        raise SourceError(
            f"cannot send {escape(shown)}: the receiver would refuse it ({exc})"
        ) from None


def _check_readable(path: Path | str, shown: str) -> None:
    if not os.access(path, os.R_OK):
        raise SourceError(f"cannot send {escape(shown)}: Permission denied")


def _file_entry(path: tuple[str, ...], st: os.stat_result) -> Entry:
    return Entry(path, size=st.st_size, executable=bool(st.st_mode & stat.S_IXUSR))


def _walk(
    folder: str | Path,
    prefix: tuple[str, ...],
    entries: list[Entry],
    paths: list[str | None],
    skipped: list[str],
) -> None:
    # symlinks inside a folder are skipped, never followed: a folder may point anywhere
    shown_folder = display_path(prefix)
    try:
        with os.scandir(folder) as it:
            children = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise SourceError(f"cannot send {shown_folder}: {exc.strerror}") from None
    for child in children:
        shown = f"{shown_folder}/{show_name(child.name)}"
        if child.is_symlink():
            skipped.append(f"{shown} (symlink)")
            continue
        try:
            st = child.stat(follow_symlinks=False)
        except OSError as exc:
            raise SourceError(f"cannot send {shown}: {exc.strerror}") from None
        is_dir, is_file = stat.S_ISDIR(st.st_mode), stat.S_ISREG(st.st_mode)
        if not (is_dir or is_file):
            skipped.append(f"{shown} (not a regular file)")
            continue
        rel = (*prefix, child.name)
        # one odd name does not stop a whole folder: it is left out, and said so
        why = name_problem(child.name)
        if why is not None:
            skipped.append(f"{shown} (the receiver would refuse the name: {why})")
            continue
        try:
            entry = Entry(rel, is_dir=True, size=0) if is_dir else _file_entry(rel, st)
        except UnsafeOffer as exc:
            skipped.append(f"{shown} (the receiver would refuse it: {exc})")
            continue
        if len(entries) >= MAX_ENTRIES:
            raise _TooMany  # before a walk of millions: the offer would be refused anyway
        if is_dir:
            entries.append(entry)
            _walk(child.path, rel, entries, paths, skipped)
        else:
            _check_readable(child.path, shown)
            entries.append(entry)
            paths.append(child.path)


Seal = Callable[[memoryview], int]


def records(
    session: Session, sources: Sources, compress: bool, start: Claim = NOTHING
) -> Iterator[Seal]:
    """Every record the sender sends after PATH, in order, from where the receiver asked
    (`start`), each as the call that seals it into a buffer: reading happens here, into
    one reused buffer, and sealing where the Producer says."""
    files, paths = sources.offer.files, sources.paths
    chunk = bytearray(READ_SIZE)  # one read fills several records: fewer system calls
    view = memoryview(chunk)
    for index in range(start.index, len(files)):
        entry, path = files[index], paths[index]
        fd = sys.stdin.buffer.fileno() if path is None else _open(path)
        try:
            offset = start.length if index == start.index else 0
            if offset:
                os.lseek(fd, offset, os.SEEK_SET)
            remaining = None if entry.size is None else entry.size - offset
            # a stream is read a record at a time: stdin may trickle, and what it gave
            # must go out without waiting for a whole megabyte
            size = RECORD_SIZE if remaining is None else READ_SIZE
            grace: float | None = None  # records sealed and not flushed: see below
            while remaining is None or remaining > 0:
                # before a read that would wait (stdin paused: someone typing, `tail -f`),
                # what stdin gave goes out, however much it was. Asked after sealing, and
                # after a full read with a moment's grace: the read emptied the pipe, and
                # a writer that keeps up (`cat file |`) refills it at once, so this flushes
                # no batch early. After a short read (a trickle) it is asked without one.
                if grace is not None and _quiet(fd, grace):
                    yield FLUSH
                    grace = None
                want = size if remaining is None else min(size, remaining)
                got = os.readv(fd, [view[:want]])
                if not got:
                    if remaining is None:
                        break
                    raise SourceError(
                        f"{display_path(entry.path)} shrank while being sent; send it again"
                    )
                if remaining is not None:
                    remaining -= got
                for at in range(0, got, RECORD_SIZE):
                    piece = view[at : min(got, at + RECORD_SIZE)]
                    yield functools.partial(session.send_data_into, piece, compress=compress)
                if remaining is None:
                    grace = REFILL if got == want else 0.0
        finally:
            if path is not None:
                os.close(fd)
        yield functools.partial(_copy, session.end_file)
    yield functools.partial(_copy, session.end)


def _flush(out: memoryview) -> int:
    return 0


FLUSH: Seal = _flush  # seals nothing: what is sealed goes out now, not when a batch is full


# seconds a writer that filled our read has to write again before what it gave goes out:
# too short for a person to see, and ample for `cat file |` to refill the pipe we emptied
REFILL = 0.005


def _quiet(fd: int, wait: float = 0.0) -> bool:
    """Nothing more to read from `fd` within `wait` seconds (a pipe whose writer paused)."""
    try:
        return not select.select([fd], [], [], wait)[0]
    except (OSError, ValueError):  # not a descriptor select takes: never hold back
        return True


def _copy(seal: Callable[[], bytes], out: memoryview) -> int:
    record = seal()
    out[: len(record)] = record
    return len(record)


def prefix_hashes(sources: Sources, claim: Claim) -> list[bytes]:
    """Block hashes of the part of our files the receiver claims to hold (a thread)."""
    files = sources.offer.files
    hasher = Hasher(prefix(files, claim))
    for index in range(min(claim.index + 1, len(files))):
        length = claim.length if index == claim.index else files[index].size or 0
        path = sources.paths[index]
        if not length or path is None:
            continue
        fd = _open(path)
        try:
            while length:
                block = os.read(fd, min(1 << 20, length))
                if not block:
                    raise SourceError(
                        f"{display_path(files[index].path)} shrank while being sent; send it again"
                    )
                hasher.update(block)
                length -= len(block)
        finally:
            os.close(fd)
    return hasher.digests()


def _open(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise SourceError(f"cannot read {escape(str(path))}: {exc.strerror}") from None


class Stopped(Exception):
    """The transfer ended while a batch was being made."""


BATCH = 1 << 20


class Producer:
    """Reads and seals the sender's records a batch ahead of the socket, in a thread.

    Each record's nonce is the count of records sealed before it, so a record sealed
    and never sent would make every later one (the ABORT saying why we stop) fail to
    authenticate. Records are sealed under a lock, straight into the batch that goes
    out; `stop()` ends the sealing and hands back what was sealed and not yet taken,
    to go out before the ABORT.
    """

    def __init__(
        self, session: Session, sources: Sources, compress: bool, start: Claim = NOTHING
    ) -> None:
        self._records = records(session, sources, compress, start)
        self._lock = threading.Lock()
        self._batch = bytearray(BATCH + 2 * (RECORD_SIZE + 1024))
        self._used = 0
        self._stopped = False

    def fill(self, limit: int = BATCH) -> bool:
        """Seal up to `limit` bytes of records (in a worker thread); False once done."""
        for seal in self._records:  # may block: reading a file, or a quiet stdin
            with self._lock:
                if self._stopped:
                    raise Stopped
                self._used += seal(memoryview(self._batch)[self._used :])
                if self._used >= limit or (seal is FLUSH and self._used):
                    return True
        return False

    def take(self) -> list[memoryview]:
        with self._lock:
            return self._swap()

    def stop(self) -> list[memoryview]:
        """No more sealing; what was sealed and not taken yet."""
        with self._lock:
            self._stopped = True
            return self._swap()

    def _swap(self) -> list[memoryview]:
        if not self._used:
            return []
        out = memoryview(self._batch)[: self._used]
        self._batch = bytearray(len(self._batch))
        self._used = 0
        return [out]
