"""Debian archives: Release and Packages read, request paths sorted, Debian versions (no I/O).

An archive (wiki.debian.org/DebianRepository/Format) has, per suite,
`dists/SUITE/InRelease` (Release, clearsigned) or `Release` plus `Release.gpg`: these
change in place, so they are volatile. Release lists the size and hashes of every index
file under `dists/SUITE/` (`main/binary-amd64/Packages.xz`, ...); with
`Acquire-By-Hash: yes` each is also at `DIR/by-hash/SHA256/<hex>`, a path that never
changes. Each `Packages` file lists every package's `Filename` (under `pool/`), `Size` and
`SHA256`. So the mirror keeps index files and `.deb` files by the hashes the indexes
promise, and serves plain index paths from the Release it currently serves: apt never
sees a Release from one fetch with indexes from another.

The store names an origin's release files `dists/...` and its index files `by-hash/...`
under the origin, and its pool files by their path: a pool file under either is refused,
so no Packages can name its `.deb` after an index that every client of the origin gets.
"""

from __future__ import annotations

import bz2
import calendar
import gzip
import lzma
import re
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import SplitResult, unquote, urlsplit

from retreatkit.mirror.blobs import valid_hex
from retreatkit.mirror.errors import BadUpstreamData
from retreatkit.mirror.records import Source

RELEASE_FILES = ("InRelease", "Release", "Release.gpg")
SIGNED = b"-----BEGIN PGP SIGNED MESSAGE-----"
SIGNATURE = b"-----BEGIN PGP SIGNATURE-----"  # armored; a binary one starts with a tag >= 0x80
MAX_RELEASE = 16 * 1024 * 1024  # Debian's main InRelease is 150 kB
MAX_PACKAGES = 512 * 1024 * 1024  # decompressed; bookworm's main/amd64 is 50 MB
# Release fields -> the store's names for the hashes, strongest last
FIELDS = {"MD5Sum": "md5", "SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}
BY_HASH = {v: k for k, v in FIELDS.items()}  # store name -> by-hash folder name
RESERVED = {"pypi", "opam", "npm", "lists", "-"}  # paths the mirror uses for itself
NOT_POOL = ("dists", "by-hash")  # first segments of the store's names for indexes
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9_.+~%-][A-Za-z0-9_.+~%@:=-]{0,254}$")
_PACKAGES = re.compile(r"(^|/)Packages(\.(xz|gz|bz2))?$")
_SOURCES = re.compile(r"(^|/)Sources(\.(xz|gz|bz2))?$")
_TRANSLATION = re.compile(r"(^|/)Translation-[A-Za-z_@.]+(\.(xz|gz|bz2))?$")
_TEXT = re.compile(r"\D*")
_DIGITS = re.compile(r"\d*")


class AptError(BadUpstreamData):
    """A Release or Packages file we cannot make sense of."""


@dataclass(frozen=True, slots=True)
class IndexFile:
    path: str  # under dists/SUITE/
    size: int
    hashes: dict[str, str]  # store algo -> hex

    @property
    def strongest(self) -> tuple[str, str]:
        algo = max(self.hashes, key=list(BY_HASH).index)
        return algo, self.hashes[algo]


@dataclass(frozen=True, slots=True)
class Release:
    fields: dict[str, str]
    files: dict[str, IndexFile] = field(default_factory=dict)

    @property
    def by_hash(self) -> bool:
        return self.fields.get("Acquire-By-Hash", "").lower() == "yes"

    @property
    def components(self) -> list[str]:
        return self.fields.get("Components", "").split()

    @property
    def architectures(self) -> list[str]:
        return self.fields.get("Architectures", "").split()

    @property
    def valid_until(self) -> float | None:
        return parse_date(self.fields.get("Valid-Until", ""))


# -- names and paths --------------------------------------------------------------------


def valid_origin(name: str) -> bool:
    return _NAME.match(name) is not None and name not in RESERVED


def valid_path(path: str) -> bool:
    """A relative path apt may ask for: plain segments, no `..`, nothing hidden."""
    parts = path.split("/")
    return 0 < len(parts) <= 16 and all(
        _SEGMENT.match(p) and p not in (".", "..") and not p.startswith(".") for p in parts
    )


def pool_path(path: str) -> bool:
    """A path a pool file may have: none under `dists/` or `by-hash/`, where the store
    keeps the origin's release and index files."""
    return valid_path(path) and path.split("/", 1)[0] not in NOT_POOL


def release_key(origin: str, suite: str, file: str) -> str:
    return f"apt/{origin}/dists/{suite}/{file}"


def index_key(origin: str, algo: str, digest: str) -> str:
    return f"apt/{origin}/by-hash/{algo}/{digest}"


def pool_key(origin: str, path: str) -> str:
    return f"apt/{origin}/{path}"


def is_listing(path: str) -> bool:
    """A Packages or Sources index: what names the files under `pool/`."""
    return _PACKAGES.search(path) is not None or _SOURCES.search(path) is not None


def is_translation(path: str) -> bool:
    return _TRANSLATION.search(path) is not None


@dataclass(frozen=True, slots=True)
class Asked:
    """What an apt request path names: `kind` is release, index, by-hash or pool."""

    kind: str
    suite: str = ""
    path: str = ""  # under dists/SUITE/ for release and index; under the origin for pool
    algo: str = ""  # by-hash: the store's name for it
    digest: str = ""


def classify(path: str) -> Asked | None:
    """Sort a path under an origin (`dists/bookworm/InRelease`, `pool/main/...`)."""
    if not valid_path(path):
        return None
    parts = path.split("/")
    if parts[0] != "dists":
        return Asked("pool", path=path) if pool_path(path) else None
    if len(parts) < 3 or "%" in path:
        # a suite is part of an upstream URL, where `%2e%2e` is `..`: it would reach out
        # of the archive; only pool file names carry escapes (`%3a`), never a suite
        return None
    suite, rest = parts[1], "/".join(parts[2:])
    if rest in RELEASE_FILES:
        return Asked("release", suite, rest)
    if len(parts) >= 6 and parts[-3] == "by-hash":
        algo = FIELDS.get(parts[-2], "")
        if not valid_hex(algo, parts[-1]):
            return None
        return Asked("by-hash", suite, rest, algo, parts[-1])
    return Asked("index", suite, rest)


def unpacked_size(release: Release, f: IndexFile) -> int:
    """An index file's size once decompressed, as its Release says (it lists `Packages`
    beside `Packages.xz`), or else its own."""
    plain = release.files.get(re.sub(r"\.(xz|gz|bz2)$", "", f.path))
    return max(f.size, plain.size if plain is not None else 0)


def by_hash_url(base: str, suite: str, f: IndexFile) -> str:
    folder = f.path.rsplit("/", 1)[0] if "/" in f.path else ""
    algo, digest = f.strongest
    where = f"{folder}/by-hash" if folder else "by-hash"
    return f"{base.rstrip('/')}/dists/{suite}/{where}/{BY_HASH[algo]}/{digest}"


def index_source(origin: str, base: str, suite: str, release: Release, f: IndexFile) -> Source:
    """Where upstream keeps an index file: by hash when the archive offers it (a file
    that never changes, so a push mid-update cannot hand over the wrong one)."""
    if release.by_hash:
        url = by_hash_url(base, suite, f)
    else:
        url = f"{base.rstrip('/')}/dists/{suite}/{f.path}"
    names = [index_key(origin, a, d) for a, d in f.hashes.items() if a in ("sha256", "sha512")]
    algo, digest = f.strongest
    name = index_key(origin, algo, digest)
    also = tuple(n for n in names if n != name)
    shown = f"{suite}/{f.path}"  # by-hash names it by its digest: say which index it is
    return Source(name, url, dict(f.hashes), "apt", f"{origin}/{suite}", f.size, also, shown)


# -- deb822 ---------------------------------------------------------------------------------


def paragraphs(text: str) -> Iterator[dict[str, str]]:
    """deb822 paragraphs: `Field: value`, continued by lines that start with a blank."""
    current: dict[str, str] = {}
    name = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                yield current
            current, name = {}, ""
        elif line[0] in " \t":
            if name:
                current[name] += "\n" + line.strip()
        elif ":" in line and not line.startswith("#"):
            name, _, value = line.partition(":")
            current[name] = value.strip()
    if current:
        yield current


def unsign(body: bytes) -> str:
    """The Release text inside an InRelease (RFC 4880 7: cleartext signature framework)."""
    text = body.decode("utf-8", "replace")
    if not text.startswith("-----BEGIN PGP SIGNED MESSAGE-----"):
        return text
    _, sep, rest = text.partition("\n\n")
    signed, sep2, _ = rest.partition("\n-----BEGIN PGP SIGNATURE-----")
    if not sep or not sep2:
        raise AptError("InRelease is not a complete signed message")
    return "\n".join(line[2:] if line.startswith("- ") else line for line in signed.split("\n"))


def parse_release(body: bytes) -> Release:
    """A Release or InRelease: its fields and every index file it lists. A Release names
    its suite (Suite or Codename) or lists index files (`apt-ftparchive release` writes
    neither name unless told to, and apt takes it): a page with a `name: value` line (a
    portal's CSS) does neither, and is no Release."""
    found = list(paragraphs(unsign(body)))
    if not found:
        raise AptError("empty Release file")
    fields = found[0]
    sizes: dict[str, int] = {}
    hashes: dict[str, dict[str, str]] = {}
    for field_name, algo in FIELDS.items():
        for line in fields.get(field_name, "").splitlines():
            parts = line.split()
            if len(parts) != 3 or not parts[1].isdigit() or not valid_path(parts[2]):
                continue
            digest = parts[0].lower()
            if valid_hex(algo, digest):
                sizes.setdefault(parts[2], int(parts[1]))
                hashes.setdefault(parts[2], {})[algo] = digest
    # md5 and sha1 alone are not worth verifying against: such files are not offered
    listed = {
        path: IndexFile(path, sizes[path], found_hashes)
        for path, found_hashes in hashes.items()
        if set(found_hashes) & {"sha256", "sha512"}
    }
    if not fields.get("Suite") and not fields.get("Codename") and not listed:
        raise AptError("not a Release: it names no Suite or Codename and lists no index")
    return Release(fields, listed)


def looks_like(name: str, body: bytes) -> bool:
    """Whether `body` can be the release file `name`: an InRelease is a clearsigned
    message, a Release.gpg a signature (armored, or binary: a packet tag >= 0x80). A
    login portal answers every path with its page; kept, it would be every client's
    next InRelease (apt: `Clearsigned file isn't valid, got 'NOSPLIT'`)."""
    if name == "InRelease":
        return body.startswith(SIGNED)
    if name == "Release.gpg":
        return body.startswith(SIGNATURE) or body[:1] >= b"\x80"
    return True


def parse_date(text: str) -> float | None:
    """A Release date (RFC 2822 style, `Sat, 01 Jun 2024 08:00:00 UTC`) as a Unix time."""
    try:
        parsed = time.strptime(text.replace("UTC", "+0000").strip(), "%a, %d %b %Y %H:%M:%S %z")
    except ValueError:
        return None
    return float(calendar.timegm(parsed)) - (parsed.tm_gmtoff or 0)


def decompress(path: str, data: bytes, limit: int = MAX_PACKAGES) -> bytes:
    """An index file's text, by its name's suffix; refused beyond `limit` (a bomb)."""
    try:
        if path.endswith(".xz"):
            out = lzma.LZMADecompressor().decompress(data, max_length=limit + 1)
        elif path.endswith(".gz"):
            out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, limit + 1)
        elif path.endswith(".bz2"):
            out = bz2.BZ2Decompressor().decompress(data, max_length=limit + 1)
        else:
            out = data
    except (lzma.LZMAError, zlib.error, OSError, EOFError, gzip.BadGzipFile) as exc:
        raise AptError(f"{path} does not decompress ({exc})") from None
    if len(out) > limit:
        raise AptError(f"{path} is larger than the mirror's limit once decompressed")
    return out


def listed(origin: str, base: str, path: str, text: str) -> list[Source]:
    """Every pool file the index at `path` (a Packages or Sources file's text) lists."""
    if _SOURCES.search(path):
        return source_files(origin, base, text)
    return pool_sources(origin, base, text)


def source_files(origin: str, base: str, text: str) -> list[Source]:
    """Every file of every source package a Sources file lists (`.dsc`, `.orig.tar.xz`,
    ...: what `apt-get source` fetches), with the sha256 and size it promises."""
    sources = []
    for p in paragraphs(text):
        folder, package = p.get("Directory", ""), p.get("Package", "")
        for line in p.get("Checksums-Sha256", "").splitlines():
            parts = line.split()
            if len(parts) != 3 or not parts[1].isdigit() or "/" in parts[2]:
                continue
            digest, path = parts[0].lower(), f"{folder}/{parts[2]}"
            if not pool_path(path) or not valid_hex("sha256", digest):
                continue
            url = f"{base.rstrip('/')}/{path}"
            key = pool_key(origin, path)
            sources.append(Source(key, url, {"sha256": digest}, "apt", package, int(parts[1])))
    return sources


def pool_sources(origin: str, base: str, text: str) -> list[Source]:
    """Every `.deb` a Packages file lists, with the hashes and size it promises."""
    sources = []
    for p in paragraphs(text):
        path, sha256, size = p.get("Filename", ""), p.get("SHA256", "").lower(), p.get("Size", "")
        if not pool_path(path) or not valid_hex("sha256", sha256) or not size.isdigit():
            continue
        hashes = {"sha256": sha256}
        sha512 = p.get("SHA512", "").lower()
        if valid_hex("sha512", sha512):
            hashes["sha512"] = sha512
        url = f"{base.rstrip('/')}/{path}"
        package = p.get("Package", "")
        sources.append(Source(pool_key(origin, path), url, hashes, "apt", package, int(size)))
    return sources


# -- Debian versions (Debian Policy 5.6.12) -----------------------------------------------


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    """dpkg's comparison: alternately the longest non-digit run (letters before other
    characters, `~` before even the end) and the longest digit run (as a number)."""
    while a or b:
        text_a, text_b = _TEXT.match(a)[0], _TEXT.match(b)[0]  # type: ignore[index]
        a, b = a[len(text_a) :], b[len(text_b) :]
        for i in range(max(len(text_a), len(text_b))):
            ca = _order(text_a[i]) if i < len(text_a) else 0
            cb = _order(text_b[i]) if i < len(text_b) else 0
            if ca != cb:
                return -1 if ca < cb else 1
        num_a, num_b = _DIGITS.match(a)[0], _DIGITS.match(b)[0]  # type: ignore[index]
        a, b = a[len(num_a) :], b[len(num_b) :]
        if int(num_a or 0) != int(num_b or 0):
            return -1 if int(num_a or 0) < int(num_b or 0) else 1
    return 0


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1, as `dpkg --compare-versions` orders `[epoch:]upstream[-revision]`."""

    def split(v: str) -> tuple[int, str, str]:
        epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
        upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "0")
        return int(epoch) if epoch.isdigit() else 0, upstream, revision

    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_part(ua, ub) or _compare_part(ra, rb)


def proxied(origins: dict[str, str], url: str) -> tuple[str, str] | None:
    """A proxy request's URL (`GET http://deb.example.org/debian/pool/...`) as (origin
    name, path under it), if it falls under a configured origin; None otherwise: the
    mirror is not an open proxy. An origin the mirror reaches by https answers apt's
    plain http for the same host (on the default ports): the mirror's side is the
    safer one."""
    asked = urlsplit(url)
    if asked.scheme != "http":
        return None
    for name, base in origins.items():
        b = urlsplit(base)
        prefix = b.path.rstrip("/") + "/"
        same_port = _port(asked) == _port(b) if b.scheme == "http" else _port(asked) == 80
        if (
            (asked.hostname or "") == (b.hostname or "")
            and same_port
            and (b.scheme == "http" or _port(b) == 443)
            and asked.path.startswith(prefix)
        ):
            return name, unquote(asked.path[len(prefix) :])
    return None


def _port(parts: SplitResult) -> int:
    try:
        port = parts.port
    except ValueError:
        return -1
    return port or (443 if parts.scheme == "https" else 80)


def checked_origins(origins: dict[str, object]) -> dict[str, str]:
    """[mirror] apt, checked: names the mirror can serve under, http(s) URLs; ValueError
    naming the one that is not."""
    for name, url in origins.items():
        if not valid_origin(name):
            raise ValueError(
                f"apt origin {name!r}: use lowercase letters, digits, '.', '_' and '-',"
                " and not pypi, opam, npm or lists"
            )
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"apt origin {name}: {url!r} is not an http:// or https:// URL")
    return {name: str(url).rstrip("/") for name, url in origins.items()}
