"""Warming a mirror: what the seed files want, resolved against the mirror's own indexes and
fetched through it, as an attendee's client would (lancache's prefill tools do the same).

Every request goes through the mirror's public paths, so what is fetched is verified and
kept exactly as it is for clients, and a second run fetches nothing: the mirror says
`X-Cache: HIT` for a file it held. Index pages are read for their file lists (and so are
kept too); files are read and thrown away, a few at a time.
"""

from __future__ import annotations

import asyncio
import fnmatch
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import aiohttp
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from retreatkit.mirror import apt, buildreqs, npm, opam, pypi
from retreatkit.mirror.seedfiles import Want

CONCURRENCY = 6  # files at once: the uplink, not the LAN, is the limit
BUILD_ROUNDS = 4  # build requirements, their dependencies, theirs...: deep enough for backends
MAX_KEPT = 64 * 1024 * 1024  # an sdist read for its build requirements; a bigger one is not
CHUNK = 1 << 20


class SeedError(Exception):
    """The mirror could not give something: the message is its reason, one line."""


@dataclass(frozen=True)
class Filters:
    """Which wheels to fetch: platform tags by glob (`manylinux*_x86_64`, `win_amd64`) and
    Pythons (`3.11`); empty means all. Source distributions always pass."""

    platforms: tuple[str, ...] = ()
    pythons: tuple[str, ...] = ()

    def ok(self, filename: str) -> bool:
        if not filename.endswith(".whl"):
            return True
        try:
            tags = parse_wheel_filename(filename)[3]
        except InvalidWheelFilename:
            return False
        return any(self._platform(t.platform) and self._python(t.interpreter, t.abi) for t in tags)

    def _platform(self, tag: str) -> bool:
        return (
            not self.platforms
            or tag == "any"
            or any(fnmatch.fnmatch(tag, g) for g in self.platforms)
        )

    def _python(self, interpreter: str, abi: str) -> bool:
        if not self.pythons or interpreter in ("py3", "py2.py3"):
            return True
        for version in self.pythons:
            major, _, minor = version.partition(".")
            if interpreter in (f"cp{major}{minor}", f"py{major}{minor}", f"py{major}"):
                return True
            if abi == "abi3" and interpreter.startswith(f"cp{major}"):
                own = interpreter[len(f"cp{major}") :]
                if own.isdigit() and minor.isdigit() and int(own) <= int(minor):
                    return True
        return False


@dataclass(frozen=True)
class AptScope:
    dists: tuple[tuple[str, str], ...] = ()  # (origin, suite)
    arch: str = "amd64"
    depends: bool = True


@dataclass(frozen=True)
class Item:
    label: str  # what it is, for a failure line
    path: str  # on the mirror
    keep: bool = False  # its bytes are read after: an sdist, a build requirement's metadata


@dataclass
class Summary:
    fetched: int = 0
    fetched_bytes: int = 0
    already: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (what, why)
    notes: list[str] = field(default_factory=list)


class Seeder:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base: str,
        filters: Filters = Filters(),
        scope: AptScope = AptScope(),
        on_total: Callable[[int], None] = lambda n: None,
        on_item: Callable[[], None] = lambda: None,
    ) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self.filters = filters
        self.scope = scope
        self.on_total = on_total
        self.on_item = on_item
        self.summary = Summary()
        self._kept: dict[Item, bytes] = {}  # what `keep` items brought
        self._total = 0

    def fail(self, what: str, why: str) -> None:
        self.summary.failed.append((what, why))

    async def get(self, path: str, accept: str | None = None) -> bytes:
        headers = {"Accept": accept} if accept else {}
        try:
            async with self.session.get(self.base + path, headers=headers) as r:
                body = await r.read()
                if r.status != 200:
                    text = body.decode("utf-8", "replace").strip().splitlines()
                    raise SeedError(text[0] if text else f"the mirror answered {r.status}")
                return body
        except aiohttp.ClientConnectorError as exc:
            errno = exc.os_error.errno
            why = os.strerror(errno).lower() if errno else type(exc).__name__
            raise SeedError(f"the mirror did not answer ({why})") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SeedError(f"the mirror did not answer ({type(exc).__name__})") from None

    async def run(self, wants: Iterable[Want]) -> Summary:
        """Resolve and fetch; SeedError if no mirror answers at all."""
        try:
            await self.get("/")
        except SeedError as exc:
            raise SeedError(f"no mirror answers at {self.base}: {exc}") from None
        by: dict[str, list[Want]] = {}
        for want in wants:
            by.setdefault(want.ecosystem, []).append(want)
        items: list[Item] = []
        items += await self._pypi(by.get("pypi", []))
        items += await self._npm(by.get("npm", []))
        items += await self._opam(by.get("opam", []))
        items += await self._apt(by.get("apt", []))
        await self._fetch_all(items)
        await self._build_requirements({pypi.normalize(w.name) for w in by.get("pypi", [])})
        return self.summary

    async def _fetch_all(self, items: list[Item]) -> None:
        unique = list({item.path: item for item in items}.values())
        self._total += len(unique)  # a later round adds to the bar, never restarts it
        self.on_total(self._total)
        slots = asyncio.Semaphore(CONCURRENCY)
        await asyncio.gather(*(self._fetch(item, slots) for item in unique))

    async def _build_requirements(self, wanted: set[str]) -> None:
        """What builds the sdists fetched, which no lock file lists: their build
        requirements, then those requirements' own dependencies, each the newest match,
        so pip and uv can build them with no uplink."""
        for _ in range(BUILD_ROUNDS):
            wants: dict[str, Want] = {}
            by_file = sorted(self._kept.items(), key=lambda kept: kept[0].path.rsplit("/")[-1])
            for item, data in by_file:  # in the order of their names: notes in a known order
                file = item.path.rsplit("/", 1)[-1]
                if item.path.endswith(".metadata"):
                    found = buildreqs.of_metadata(data)
                    why = f"needed by {file.removesuffix('.metadata')}"
                else:
                    found = await asyncio.to_thread(buildreqs.of_sdist, data, file)
                    why = f"to build {file}"
                for req in found:
                    name = pypi.normalize(req.name)
                    if name not in wanted and name not in wants:
                        wants[name] = Want("pypi", name, spec=str(req.specifier), origin=why)
            self._kept.clear()
            if not wants:
                return
            wanted |= set(wants)
            await self._fetch_all(await self._pypi(list(wants.values()), build=True))

    async def _fetch(self, item: Item, slots: asyncio.Semaphore) -> None:
        async with slots:
            try:
                async with self.session.get(self.base + item.path) as r:
                    if r.status != 200:
                        text = (await r.text(errors="replace")).strip().splitlines()
                        self.fail(item.label, text[0] if text else f"HTTP {r.status}")
                        return
                    size, kept = 0, []
                    async for chunk in r.content.iter_chunked(CHUNK):
                        size += len(chunk)
                        if item.keep and size <= MAX_KEPT:
                            kept.append(chunk)
                    if item.keep and size <= MAX_KEPT:
                        self._kept[item] = b"".join(kept)
                    if r.headers.get("X-Cache") == "HIT":
                        self.summary.already += 1
                    else:
                        self.summary.fetched += 1
                        self.summary.fetched_bytes += size
            except (aiohttp.ClientError, TimeoutError) as exc:
                why = "the transfer was cut: the upstream failed mid-way, or the mirror stopped"
                self.fail(item.label, f"{why} ({type(exc).__name__})")
            finally:
                self.on_item()

    # -- Python -------------------------------------------------------------------------------

    async def _pypi(self, wants: list[Want], build: bool = False) -> list[Item]:
        """The files to fetch for these wants; `build`: wants that build an sdist, whose
        metadata is read for their own dependencies."""
        items = []
        for name in dict.fromkeys(w.name for w in wants):
            try:
                doc = json.loads(await self.get(f"/pypi/simple/{name}/", pypi.JSON_TYPE))
                files = [f for f in doc["files"] if isinstance(f, dict)]
            except (SeedError, ValueError, KeyError, TypeError) as exc:
                for w in wants:
                    if w.name == name:
                        self.fail(w.label, str(exc) or "unreadable index page")
                continue
            for w in (w for w in wants if w.name == name):
                chosen = self._pick(w, files, say=not build)
                for f in chosen:
                    file = str(f["filename"])
                    url, label = str(f["url"]), f"{w.label} ({file})"
                    items.append(Item(label, url, keep=not file.endswith(".whl")))
                    if f.get("core-metadata"):  # what pip and uv read first: offline too
                        items.append(Item(label + " metadata", url + ".metadata", keep=build))
                if build and chosen:
                    version = pypi.version_of(w.name, str(chosen[0]["filename"]))
                    self.summary.notes.append(f"{w.name}{w.spec}: took {version} {w.origin}")
        return items

    def _pick(
        self, w: Want, files: list[dict[str, object]], say: bool = True
    ) -> list[dict[str, object]]:
        def sha(f: dict[str, object]) -> str:
            hashes = f.get("hashes")
            return str(hashes.get("sha256", "")) if isinstance(hashes, dict) else ""

        fits = [f for f in files if self.filters.ok(str(f.get("filename", "")))]
        if w.hashes:
            chosen = [f for f in fits if sha(f) in w.hashes]
            if not chosen:
                self.fail(w.label, "none of its files (by sha256) is in the index")
            return chosen
        versions: dict[Version, list[dict[str, object]]] = {}
        for f in fits:
            found = pypi.version_of(w.name, str(f["filename"]))
            try:
                version = Version(found or "")
            except InvalidVersion:
                continue
            if not f.get("yanked"):
                versions.setdefault(version, []).append(f)
        if w.version:
            try:
                chosen = versions.get(Version(w.version), [])
            except InvalidVersion:
                chosen = []
            if not chosen:
                self.fail(
                    w.label, f"no file of {w.name} {w.version} in the index for the platforms asked"
                )
            return chosen
        try:
            spec = SpecifierSet(w.spec)
        except InvalidSpecifier:
            self.fail(w.label, f"not a version specifier: {w.spec}")
            return []
        matching = list(spec.filter(versions))
        if not matching:
            self.fail(w.label, "no version in the index matches")
            return []
        newest = max(matching)
        if say:
            self.summary.notes.append(
                f"{w.name}{w.spec}: not pinned, took {newest} (its dependencies are not resolved)"
            )
        return versions[newest]

    # -- npm, opam ------------------------------------------------------------------------------

    async def _npm(self, wants: list[Want]) -> list[Item]:
        items = []
        for name in dict.fromkeys(w.name for w in wants):
            try:
                doc = json.loads(await self.get("/npm/" + quote(name, safe="@"), npm.FULL))
                versions = doc["versions"]
            except (SeedError, ValueError, KeyError) as exc:
                for w in (w for w in wants if w.name == name):
                    self.fail(w.label, str(exc) or "unreadable packument")
                continue
            for w in (w for w in wants if w.name == name):
                dist = versions.get(w.version, {}).get("dist", {})
                if not dist.get("tarball"):
                    self.fail(w.label, "the registry has no such version")
                elif w.hashes and dist.get("integrity") not in w.hashes:
                    self.fail(w.label, "the registry's integrity differs from the lock's")
                else:
                    items.append(Item(w.label, urlsplit(dist["tarball"]).path))
        return items

    async def _opam(self, wants: list[Want]) -> list[Item]:
        if not wants:
            return []
        try:
            data = await self.get("/opam/index.tar.gz")
            files = await asyncio.to_thread(_opam_files, data, {w.name for w in wants})
        except (SeedError, opam.BadIndex) as exc:
            for w in wants:
                self.fail(w.label, str(exc))
            return []
        items = []
        for w in wants:
            known = [v for (n, v) in files if n == w.name]
            version = w.version or (max(known, key=_opam_order) if known else None)
            text = files.get((w.name, version or ""))
            if text is None:
                self.fail(w.label, "not in the opam repository")
                continue
            for a in opam.archives(text, f"{w.name}.{version}"):
                algo = next((x for x in ("sha256", "sha512", "md5") if x in a.checksums), None)
                if algo is not None:
                    digest = a.checksums[algo]
                    path = f"/opam/cache/{algo}/{digest[:2]}/{digest}"
                    items.append(Item(f"opam {w.name}.{version}", path))
        return items

    # -- Debian -------------------------------------------------------------------------------

    async def _apt(self, wants: list[Want]) -> list[Item]:
        if not wants:
            return []
        if not self.scope.dists:
            for w in wants:
                self.fail(w.label, "say which archive lists it: --apt-dist NAME/SUITE")
            return []
        items: list[Item] = []
        found: set[str] = set()
        for origin, suite in self.scope.dists:
            try:
                index, extra = await self._apt_index(origin, suite)
            except (SeedError, apt.AptError) as exc:
                self.summary.notes.append(f"apt {origin}/{suite}: {exc}")
                continue
            items += extra
            todo = [(w.name, w.version, w.label) for w in wants]
            while todo:
                name, version, label = todo.pop()
                if name in found or name not in index:
                    continue
                paras = index[name]
                if version:
                    paras = [p for p in paras if p.get("Version") == version]
                if not paras:
                    continue
                newest = max(paras, key=_DebVersion)
                found.add(name)
                items.append(Item(label, f"/{origin}/{newest['Filename']}"))
                if self.scope.depends:
                    for dep in _depends(newest):
                        todo.append((dep, None, f"apt {dep} (for {name})"))
        for w in wants:
            if w.name not in found:
                self.fail(
                    w.label,
                    "in no Packages index of " + ", ".join(f"{o}/{s}" for o, s in self.scope.dists),
                )
        return items

    async def _apt_index(
        self, origin: str, suite: str
    ) -> tuple[dict[str, list[dict[str, str]]], list[Item]]:
        try:
            body = await self.get(f"/{origin}/dists/{suite}/InRelease")
        except SeedError:
            body = await self.get(f"/{origin}/dists/{suite}/Release")
        release = await asyncio.to_thread(apt.parse_release, body)
        index: dict[str, list[dict[str, str]]] = {}
        extra = []
        archs = [self.scope.arch] + (["all"] if "all" in release.architectures else [])
        for component in release.components or ["main"]:
            for arch in archs:
                path = _best(release, f"{component}/binary-{arch}/Packages")
                if path is None:
                    continue
                data = await self.get(f"/{origin}/dists/{suite}/{path}")
                text = await asyncio.to_thread(apt.decompress, path, data)
                for p in apt.paragraphs(text.decode("utf-8", "replace")):
                    if "Package" in p and "Filename" in p:
                        index.setdefault(p["Package"], []).append(p)
            translation = _best(release, f"{component}/i18n/Translation-en")
            if translation is not None:  # apt update asks for it too: offline it must be held
                extra.append(Item(f"apt {origin}/{suite} {translation}",
                                  f"/{origin}/dists/{suite}/{translation}"))  # fmt: skip
        return index, extra


def _best(release: apt.Release, stem: str) -> str | None:
    """The variant apt itself would take (xz first, as apt orders them)."""
    for suffix in (".xz", ".gz", ".bz2", ""):
        if stem + suffix in release.files:
            return stem + suffix
    return None


def _depends(para: dict[str, str]) -> list[str]:
    """First alternatives of Depends and Pre-Depends, names only."""
    names = []
    for field_name in ("Pre-Depends", "Depends"):
        for clause in para.get(field_name, "").split(","):
            first = clause.split("|")[0].strip().split(" ")[0].split(":")[0]
            if first:
                names.append(first)
    return names


class _DebVersion:
    def __init__(self, para: dict[str, str]) -> None:
        self.version = para.get("Version", "0")

    def __lt__(self, other: _DebVersion) -> bool:
        return apt.compare_versions(self.version, other.version) < 0


def _opam_order(version: str) -> _DebVersion:
    return _DebVersion({"Version": version})


def _opam_files(data: bytes, names: set[str]) -> dict[tuple[str, str], str]:
    """(name, version) -> opam file, for the packages asked, from the mirror's index."""
    out = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                parts = member.name.strip("./").split("/")
                if len(parts) >= 4 and parts[-1] == "opam" and parts[-3] in names:
                    handle = tar.extractfile(member)
                    if handle is not None and member.size <= opam.MAX_OPAM_FILE:
                        name, _, version = parts[-2].partition(".")
                        out[(name, version)] = handle.read().decode("utf-8", "replace")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise opam.BadIndex(f"the mirror's index.tar.gz is unreadable ({exc})") from None
    return out
