"""opam repositories: read index.tar.gz, find every archive and its checksums (no I/O).

The index the mirror serves names the mirror as every archive's `src`, with no
`mirrors`: opam tries the `archive-mirrors` cache first and, when that fails, the
package's own URLs, which offline hang in opam's curl (it sets no time limit) on an
uplink that drops packets. With the mirror as the only URL, an archive the mirror
cannot give fails as soon as opam's curl has asked the mirror again. The kept index
names the mirror by a placeholder (`BASE`); `for_client` puts in each client's name.
"""

from __future__ import annotations

import io
import re
import tarfile
import zlib
from dataclasses import dataclass

from retreatkit.mirror.blobs import valid_hex
from retreatkit.mirror.errors import BadUpstreamData
from retreatkit.mirror.records import Processed, Source, fetchable

REPO_FILE = b'opam-version: "2.0"\narchive-mirrors: "cache"\n'
MAX_INDEX = 512 * 1024 * 1024
MAX_TAR = 1024 * 1024 * 1024  # the index once inflated: a few MB of gzip hold GBs of zeros
MAX_OPAM_FILE = 1024 * 1024
BASE = "http://retreatkit-mirror.invalid"  # the kept index's name for the mirror
_BASE_BYTES = BASE.encode()
_PREFERRED = ("sha256", "sha512", "md5")  # the cache path a rewritten `src` names
_TOKEN = re.compile(
    r'"""(?P<tstr>.*?)"""|"(?P<str>(?:[^"\\]|\\.)*)"|(?P<comment>#[^\n]*|\(\*.*?\*\))'
    r"|(?P<punct>[{}\[\]():])|(?P<word>[^\s{}\[\]():\"]+)|(?P<space>\s+)",
    re.DOTALL,
)


class BadIndex(BadUpstreamData):
    """index.tar.gz is truncated, corrupt or too large."""


@dataclass(frozen=True, slots=True)
class Archive:
    url: str
    mirrors: tuple[str, ...]
    checksums: dict[str, str]  # algo -> hex, every one the opam file gives
    package: str = ""  # `name.version`, from where the opam file sits


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    value: str
    start: int  # where it sits in the opam file: the rewrite replaces by position
    end: int


def _tokens(text: str) -> list[tuple[str, str]]:
    return [(t.kind, t.value) for t in _spans(text)]


def _spans(text: str) -> list[_Token]:
    out = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind in ("space", "comment") or kind is None:
            continue
        out.append(_Token("str" if kind == "tstr" else kind, match[kind], *match.span()))
    return out


@dataclass(slots=True)
class _Section:
    fields: dict[str, list[str]]  # name -> its string values
    spans: dict[str, tuple[int, int]]  # name -> where the field sits, name to last value
    src: tuple[int, int] | None = None  # where the first `src` string sits


def _section(tokens: list[_Token], start: int) -> tuple[_Section, int]:
    """The fields of a `{ ... }` section starting after its `{`, and where it ends."""
    found = _Section({}, {})
    depth, i, current = 1, start, None
    while i < len(tokens):
        t = tokens[i]
        if t.kind == "punct" and t.value == "{":
            depth += 1
        elif t.kind == "punct" and t.value == "}":
            depth -= 1
            if not depth:
                return found, i + 1
        elif (
            depth == 1
            and t.kind == "word"
            and i + 1 < len(tokens)
            and (tokens[i + 1].kind, tokens[i + 1].value) == ("punct", ":")
        ):
            current = t.value
            found.fields.setdefault(current, [])
            found.spans[current] = (t.start, tokens[i + 1].end)
            i += 2
            continue
        if current is not None:  # part of the current field's value
            found.spans[current] = (found.spans[current][0], t.end)
            if depth == 1 and t.kind == "str":
                found.fields[current].append(t.value)
                if current == "src" and found.src is None:
                    found.src = (t.start, t.end)
        i += 1
    return found, i


def _archive(fields: dict[str, list[str]], package: str) -> Archive | None:
    urls = fields.get("src") or fields.get("archive") or fields.get("http")
    if not urls:
        return None
    checksums: dict[str, str] = {}
    for item in fields.get("checksum", []):
        algo, eq, digest = item.partition("=")
        if eq and valid_hex(algo, digest.lower()):
            checksums[algo] = digest.lower()
        elif valid_hex("md5", item.lower()):  # opam 1.2 style: a bare md5
            checksums["md5"] = item.lower()
    if not checksums:
        return None
    return Archive(urls[0], tuple(fields.get("mirrors", [])), checksums, package)


def _sections(opam_text: str, package: str) -> list[tuple[Archive, _Section]]:
    tokens = _spans(opam_text)
    found = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t.kind == "word" and t.value in ("url", "extra-source"):
            j = i + 1
            if t.value == "extra-source" and j < len(tokens) and tokens[j].kind == "str":
                j += 1
            if j < len(tokens) and (tokens[j].kind, tokens[j].value) == ("punct", "{"):
                section, i = _section(tokens, j + 1)
                archive = _archive(section.fields, package)
                if archive is not None:
                    found.append((archive, section))
                continue
        i += 1
    return found


def archives(opam_text: str, package: str = "") -> list[Archive]:
    """The archives an opam file declares: its `url` section and every `extra-source`."""
    return [archive for archive, _ in _sections(opam_text, package)]


def cache_path(checksums: dict[str, str]) -> str | None:
    """Where the mirror's cache serves an archive of these checksums."""
    algo = next((a for a in _PREFERRED if a in checksums), None)
    if algo is None:
        return None
    digest = checksums[algo]
    return f"/opam/cache/{algo}/{digest[:2]}/{digest}"


def _at_mirror(opam_text: str, package: str) -> tuple[str, list[Archive]]:
    """The opam file with every archive it declares fetched from the mirror alone (`src`
    at `BASE`'s cache, `mirrors` gone), and those archives as upstream declared them.
    A section with no checksum (a git URL, say) stays as it is: the mirror cannot hold it."""
    found = _sections(opam_text, package)
    edits: list[tuple[int, int, str]] = []
    for archive, section in found:
        path = cache_path(archive.checksums)
        if path is None or section.src is None or not fetchable(archive.url):
            continue
        edits.append((*section.src, f'"{BASE}{path}"'))
        if "mirrors" in section.spans:
            edits.append((*section.spans["mirrors"], ""))
    for start, end, new in sorted(edits, reverse=True):
        opam_text = opam_text[:start] + new + opam_text[end:]
    return opam_text, [archive for archive, _ in found]


def for_client(index: bytes, base: str) -> bytes:
    """The kept index as one client gets it: the mirror named as that client names it.
    Only opam files change, and only in their `src` URLs."""
    name = base.rstrip("/").encode()
    out = io.BytesIO()
    with (  # read as a stream: the kept index was checked, and its tar is never whole here
        tarfile.open(fileobj=io.BytesIO(index), mode="r|gz") as tar,
        tarfile.open(fileobj=out, mode="w:gz", compresslevel=6) as new,
    ):
        for member in tar:
            handle = tar.extractfile(member) if member.isfile() else None
            content = handle.read() if handle is not None else b""
            if member.name.endswith("/opam") and _BASE_BYTES in content:
                content = content.replace(_BASE_BYTES, name)
                member.size = len(content)
            new.addfile(member, io.BytesIO(content) if member.isfile() else None)
    return out.getvalue()


def read_index(data: bytes) -> tuple[bytes, list[Archive]]:
    """Every archive an index.tar.gz declares, and the index as the mirror serves it.

    opam takes `archive-mirrors` from the `repo` file inside the index, so the
    mirror's copy carries its own `repo` file pointing opam at `cache`.
    Raises BadIndex on a corrupt or truncated tarball.
    """
    if len(data) > MAX_INDEX:
        raise BadIndex("index.tar.gz is too large")
    found: list[Archive] = []
    out = io.BytesIO()
    try:
        # decompress whole first: gzip's CRC and length trailer catch a body cut short
        raw = _gunzip(data)
        with (
            tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar,
            tarfile.open(fileobj=out, mode="w:gz", compresslevel=6) as new,
        ):
            saw_repo = False
            for member in tar:
                handle = tar.extractfile(member) if member.isfile() else None
                content = handle.read() if handle is not None else b""
                if (
                    member.isfile()
                    and member.name.rstrip("/").split("/")[-1] == "repo"
                    and (member.name.count("/") <= 1)
                ):
                    content, saw_repo = _mirror_repo(content), True
                    member.size = len(content)
                if (
                    member.isfile()
                    and member.name.endswith("/opam")
                    and member.size <= MAX_OPAM_FILE
                ):
                    package = member.name.rstrip("/").split("/")[-2]
                    text = content.decode("utf-8", "replace")
                    rewritten, declared = _at_mirror(text, package)
                    found.extend(declared)
                    if rewritten != text:  # else the bytes as they came, invalid UTF-8 too
                        content = rewritten.encode()
                        member.size = len(content)
                new.addfile(member, io.BytesIO(content) if member.isfile() else None)
            if not saw_repo:
                info = tarfile.TarInfo("repo")
                info.size = len(REPO_FILE)
                new.addfile(info, io.BytesIO(REPO_FILE))
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as exc:
        raise BadIndex(f"index.tar.gz is corrupt or truncated ({exc})") from None
    return out.getvalue(), found


def _gunzip(data: bytes) -> bytes:
    """The tar inside index.tar.gz, each gzip member checked by its CRC and length, and at
    most MAX_TAR bytes: a tar of zeros is an empty index, which would replace the one held."""
    parts, size, rest = [], 0, data
    while rest:
        unpack = zlib.decompressobj(wbits=31)
        parts.append(unpack.decompress(rest, MAX_TAR + 1 - size))
        size += len(parts[-1])
        if size > MAX_TAR:
            raise BadIndex("index.tar.gz is too large once decompressed")
        if not unpack.eof:
            raise EOFError("the gzip stream ends early")
        rest = unpack.unused_data.lstrip(b"\0")  # gzip's own padding between members
    return b"".join(parts)


def _mirror_repo(content: bytes) -> bytes:
    kept = [
        line
        for line in content.decode("utf-8", "replace").splitlines()
        if not line.startswith("archive-mirrors")
    ]
    return ("\n".join([*kept, 'archive-mirrors: "cache"']) + "\n").encode()


def cache_name(algo: str, digest: str) -> str:
    return f"opam/{algo}/{digest}"


def process(data: bytes) -> Processed:
    """The index as the mirror serves it, and one source per archive checksum: opam may
    ask for an archive by any hash its opam file gives, and all name the same bytes."""
    index, found = read_index(data)
    sources = []
    for a in (a for a in found if fetchable(a.url)):  # a git URL, say: opam fetches it
        names = [cache_name(algo, digest) for algo, digest in a.checksums.items()]
        for name in names:
            also = tuple(n for n in names if n != name)
            package = a.package.split(".", 1)[0]
            sources.append(Source(name, a.url, a.checksums, "opam", package, None, also))
    return Processed(index, "application/gzip", tuple(sources))
