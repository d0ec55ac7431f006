"""Blocklist sources: files or URLs read in a worker thread, each keeping its last good copy."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from retreatkit.mirror.lists import via_mirror
from retreatkit.nameserver.blocklist import Blocklist, bounded, not_a_list
from retreatkit.nameserver.errors import BadList

log = logging.getLogger("retreatkit.nameserver")
MAX_LIST = 256 * 1024 * 1024
FETCH_TIMEOUT = 120.0


@dataclass
class Source:
    """One list's state, as /status shows it."""

    source: str
    entries: int = 0
    bad_lines: int = 0
    loaded_at: float | None = None  # wall-clock time of the last good load
    last_error: str = ""
    good: Blocklist | None = None  # the last good copy: kept when a reload fails

    @property
    def fallback(self) -> str:
        """What a failed load leaves in force, as the log and /status say it."""
        return "keeping the last good copy" if self.good else "no list from it is in use"


class Sources:
    def __init__(self, sources: list[str], mirror: Callable[[], str | None] = lambda: None) -> None:
        self.sources = {s: Source(s) for s in sources}
        self.mirror = mirror  # where URL lists come from, when there is a mirror
        self._lock = asyncio.Lock()

    async def load(self, wall: Callable[[], float]) -> Blocklist:
        """Read every source (one reload at a time); a source that fails keeps its last
        good copy; the merge happens before anything is swapped in."""
        async with self._lock:
            parts = []
            for state in self.sources.values():
                try:
                    part = await self._read(state.source)
                except BadList as exc:
                    state.last_error = str(exc)
                    log.warning("blocklist %s failed (%s); %s", state.source, exc, state.fallback)
                else:
                    state.good = part
                    state.entries = part.sources.get(state.source, 0)
                    state.bad_lines = part.bad_lines
                    state.loaded_at = wall()
                    state.last_error = ""
                if state.good is not None:
                    parts.append(state.good)
            if len(parts) == 1:
                return parts[0]  # sealed already, and never changed after
            return await asyncio.to_thread(Blocklist.merge, parts)

    async def _read(self, source: str) -> Blocklist:
        try:
            if is_url(source):
                return await self._fetch(source)
            return await asyncio.to_thread(_parse_file, source)
        except (OSError, TimeoutError, UnicodeError) as exc:
            raise BadList(_why(exc)) from None

    async def _fetch(self, source: str) -> Blocklist:
        # aiohttp's client is loaded by the first list given by URL, not before the
        # nameserver answers: files alone (a VM guest's lists) never need it
        import aiohttp

        mirror = self.mirror()
        url = via_mirror(mirror, source) if mirror else source
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url) as response,
            ):
                if response.status != 200:
                    raise BadList(f"HTTP {response.status}")
                content_type = response.headers.get("Content-Type", "")
                body = await response.content.read(MAX_LIST + 1)
        except aiohttp.ClientError as exc:
            raise BadList(_why(exc)) from None
        if len(body) > MAX_LIST:
            raise BadList("list larger than 256 MiB")

        def parse_body() -> Blocklist:
            part = Blocklist()
            # utf-8-sig: a byte order mark is not part of the first line
            part.add_lines(source, body.decode("utf-8-sig", "replace").splitlines())
            return _judged(part.seal(), source, content_type)

        return await asyncio.to_thread(parse_body)


def is_url(source: str) -> bool:
    """A list fetched over HTTP; any other source is a file."""
    return source.startswith(("http://", "https://"))


def file_problem(source: str) -> str | None:
    """Why a list file cannot be read now, in a few words; None when it can."""
    try:
        os.close(_open(source)[0])
    except BadList as exc:
        return str(exc)
    return None


def read_bytes(source: str, limit: int = MAX_LIST) -> bytes:
    """A list file's bytes, read as a reload reads it (a regular file, at most `limit`
    bytes): what a host carries to a guest's nameserver. BadList says why not."""
    fd, size = _open(source)
    with open(fd, "rb") as raw:
        if size > limit:
            raise BadList(f"list larger than {limit >> 20} MiB")
        try:
            data = raw.read(limit + 1)
        except OSError as exc:
            raise BadList(_why(exc)) from None
    if len(data) > limit:  # it grew while read
        raise BadList(f"list larger than {limit >> 20} MiB")
    return data


def _open(source: str) -> tuple[int, int]:
    """(a descriptor, the size) of a list file, opened once and judged by what is open,
    so nothing can change between the check and the read. Without blocking: a FIFO would
    wait for a writer, and a terminal must not become ours."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:
        # what it is says more than why it would not open (a socket cannot be opened)
        try:
            kind = _not_a_file(Path(source).stat().st_mode)
        except (OSError, ValueError):
            kind = None
        raise BadList(kind or _why(exc)) from None
    found = os.fstat(fd)
    kind = _not_a_file(found.st_mode)
    if kind is not None:
        os.close(fd)
        raise BadList(kind)
    return fd, found.st_size


def _not_a_file(mode: int) -> str | None:
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    if not stat.S_ISREG(mode):  # a pipe or a device: reading could block
        return "not a regular file"
    return None


def _parse_file(source: str) -> Blocklist:
    fd, size = _open(source)
    with open(fd, encoding="utf-8-sig", errors="replace") as lines:  # streamed
        if size > MAX_LIST:
            raise BadList("list larger than 256 MiB")
        part = Blocklist()
        part.add_lines(source, bounded(lines))
    return _judged(part.seal(), source)


def _judged(part: Blocklist, source: str, content_type: str = "") -> Blocklist:
    why = not_a_list(part, source, content_type)
    if why is not None:
        raise BadList(why)
    return part


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
