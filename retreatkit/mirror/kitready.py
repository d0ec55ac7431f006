"""Whether attendees can install the kit (bob) from this mirror, judged by what the store holds.

The page offers `uv tool install retreatkit` only when that install works with the uplink
gone: the kit's own wheel is in the local index, and for every distribution its install
needs (the versions running here, every level down: `seedfiles.running_kit`) the store
holds the project's page and a file of that version that installs on this machine (a
wheel whose tags this Python takes, or the sdist of a version with no such wheel).

An uplink that is up is not enough. It is what goes at an event, between the moment an
attendee reads the page and the moment they paste; and whether the upstream serves every
dependency is known only by asking it for each page over the metered link, where an
upstream that lacks one answers 404, which uv prints as `textual-serve was not found in
the package registry`. Until the store holds it all, /status (so the dashboard) tells
the organiser the command that fetches it: `retreatkit mirror seed --kit`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from packaging.tags import Tag, sys_tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from retreatkit.mirror import local, pypi
from retreatkit.mirror.errors import MirrorError
from retreatkit.mirror.store import Store

if TYPE_CHECKING:
    from retreatkit.mirror.seedfiles import Want
    from retreatkit.mirror.service import Mirror

log = logging.getLogger("retreatkit.mirror")
SHOWN = 3  # missing distributions named in the organiser's line (more: only counted)
Token = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Verdict:
    served: bool  # the kit's own wheel is in the local index
    needed: int  # distributions its install needs
    missing: tuple[str, ...]  # `name version` of those the store lacks for this machine

    @property
    def offered(self) -> bool:
        """The page gives the lines that install bob."""
        return self.served and not self.missing


def _version(text: str | None) -> Version | None:
    try:
        return Version(text or "")
    except InvalidVersion:
        return None


def _wheel_tags(filename: str) -> frozenset[Tag] | None:
    try:
        return parse_wheel_filename(filename)[3]
    except InvalidWheelFilename:
        return None


def installs_here(
    name: str, version: Version, files: list[tuple[str, bool]], here: frozenset[Tag]
) -> bool:
    """Of a project's files (name, held), is one of `version` held that installs here?
    A wheel for this machine; else, if that version has no wheel for it, its sdist."""
    wheels, sdists = [], []
    for filename, held in files:
        if _version(pypi.version_of(name, filename)) != version:
            continue
        if filename.endswith(".whl"):
            tags = _wheel_tags(filename)
            if tags is not None and not tags.isdisjoint(here):
                wheels.append(held)
        else:
            sdists.append(held)
    return any(wheels) or (not wheels and any(sdists))


def _files(store: Store, name: str) -> list[tuple[str, bool]] | None:
    """The files the mirror's page for `name` lists, each with whether it is held; None
    when it holds no page: offline, that page is a 504 (`upstream ... is down`)."""
    if store.get(local.record_key(name)) is not None:  # the organiser's own: listed alone
        return [(f.filename, True) for f in local.load(store, name)]
    obj = store.get(pypi.page_key(name))
    if obj is None:
        return None
    project = pypi.load(store.read(obj.digest))
    held = store.held(f.key for f in project.files)
    return [(f.filename, f.key in held) for f in project.files]


def missing(store: Store, wants: list[Want], here: frozenset[Tag]) -> list[str]:
    """`name version` of each wanted distribution the store cannot install here (blocking)."""
    out = []
    for want in wants:
        version = _version(want.version)
        try:
            files = _files(store, want.name)
        except (OSError, ValueError, KeyError, TypeError, sqlite3.Error, MirrorError) as exc:
            log.warning("cannot read what the mirror holds of %s: %s", want.name, exc)
            files = None
        if files is None or version is None or not installs_here(want.name, version, files, here):
            out.append(f"{want.name} {want.version}")
    return out


def here() -> frozenset[Tag]:
    """The wheel tags this Python installs."""
    return frozenset(sys_tags())


def _running_kit() -> list[Want]:
    # imported at the first check: reading requirements takes packaging's markers and
    # specifiers, importlib.metadata and tomllib, 1.3 MB of a process's memory, which a
    # guest's mirror (it serves no wheel of the kit, so never checks) cannot spare in 64 MB
    from retreatkit.mirror.seedfiles import running_kit

    return running_kit().wants


class Kit:
    """The verdict for the page and the organiser's line for /status, checked again off
    the loop when the store changes in a way that could change it."""

    def __init__(
        self,
        mirror: Mirror,
        needs: Callable[[], list[Want]] | None = None,
        tags: Callable[[], frozenset[Tag]] = here,
    ) -> None:
        self.mirror = mirror
        self.served = False  # set once the kit's own wheel is published (local.publish_own)
        self.needs, self.tags = needs or _running_kit, tags  # read once, at the first check
        self._needs: tuple[list[Want], frozenset[Tag]] | None = None  # read once, off the loop
        self._known: tuple[Token, Verdict] | None = None
        self._task: asyncio.Task[Verdict] | None = None
        self._task_token: Token | None = None

    def _token(self) -> Token:
        """What the verdict depends on; the last item, files held, counts only while
        something is missing (any new file may be it): once all is held, files coming
        and going change nothing unless one is evicted, found rotten or rebuilt upstream."""
        m, store = self.mirror, self.mirror.store
        check = store.check
        return (int(self.served), check.dropped, m.stats.evicted, store.sources_changed,
                check.files)  # fmt: skip

    def _fresh(self, token: Token) -> bool:
        if self._known is None:
            return False
        known, verdict = self._known
        return known == token if verdict.missing else known[:-1] == token[:-1]

    async def verdict(self) -> Verdict:
        """The verdict as the store is now (checked again if it may have changed)."""
        token = self._token()
        if self._known is not None and self._fresh(token):
            return self._known[1]
        # a check under way is awaited whatever changed since it began: a new one each
        # time a file landed, started by each view of the page, piled up off the loop
        if self._task is None or (self._task.done() and self._task_token != token):
            self._start(token)
        assert self._task is not None
        return await asyncio.shield(self._task)

    def _start(self, token: Token) -> None:
        self._task_token = token
        self._task = self.mirror.spawn(self._check(token))

    async def _check(self, token: Token) -> Verdict:
        if not self.served:
            verdict = Verdict(False, 0, ())
        else:
            verdict = await self.mirror.offload(self._missing)
        if self._task_token == token:  # an older check ending late is not the verdict
            self._known = (token, verdict)
        return verdict

    def _missing(self) -> Verdict:
        if self._needs is None:
            try:
                wanted = self.needs()
            except (ValueError, OSError) as exc:  # metadata a broken install left: unread,
                # the page judges by the kit's own wheel alone, as it did before this check
                log.warning("cannot read what installing this retreatkit needs: %s", exc)
                wanted = []
            self._needs = (wanted, self.tags())
        wants, tags = self._needs
        return Verdict(True, len(wants), tuple(missing(self.mirror.store, wants, tags)))

    def warnings(self) -> list[str]:
        """/status's line while the page cannot offer bob for want of its dependencies (the
        last verdict: a new check is started if the store changed, for the next look)."""
        token = self._token()
        if not self._fresh(token) and (self._task is None or self._task.done()):
            self._start(token)
        if self._known is None:
            return []
        verdict = self._known[1]
        return [self.line(verdict)] if verdict.served and verdict.missing else []

    def line(self, verdict: Verdict) -> str:
        gone = verdict.missing
        # a few are named (a seed that failed for one); all of them would fill the alarm
        named = f" ({', '.join(gone)})" if len(gone) <= SHOWN else ""
        return (
            f"bob is not offered on the attendee page: the store lacks {len(gone)} of the"
            f" {verdict.needed} distributions installing it needs here{named}; with the"
            f" uplink up, run `{self.seed_command()}`"
        )

    def seed_command(self) -> str:
        """The command that fetches them all into this mirror, run on this machine (its
        retreatkit is the one whose dependencies are wanted)."""
        return f"retreatkit mirror seed --kit --mirror {self.mirror.local_url}"
