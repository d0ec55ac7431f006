"""opam repositories: read index.tar.gz, find every archive and its checksums (no I/O)."""

from __future__ import annotations

import gzip
import io
import re
import tarfile
from dataclasses import dataclass

from retreatkit.mirror.blobs import valid_hex
from retreatkit.mirror.errors import BadUpstreamData
from retreatkit.mirror.records import Processed, Source

REPO_FILE = b'opam-version: "2.0"\narchive-mirrors: "cache"\n'
MAX_INDEX = 512 * 1024 * 1024
MAX_OPAM_FILE = 1024 * 1024
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


def _tokens(text: str) -> list[tuple[str, str]]:
    out = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind in ("space", "comment") or kind is None:
            continue
        value = match[kind]
        out.append(("str" if kind == "tstr" else kind, value))
    return out


def _section_fields(tokens: list[tuple[str, str]], start: int) -> tuple[dict[str, list[str]], int]:
    """Fields of a `{ ... }` section starting after its `{`: name -> its string values."""
    fields: dict[str, list[str]] = {}
    depth, i, current = 1, start, None
    while i < len(tokens) and depth:
        kind, value = tokens[i]
        if kind == "punct" and value == "{":
            depth += 1
        elif kind == "punct" and value == "}":
            depth -= 1
        elif (
            depth == 1
            and kind == "word"
            and i + 1 < len(tokens)
            and tokens[i + 1] == ("punct", ":")
        ):
            current = value
            fields.setdefault(current, [])
            i += 1
        elif depth == 1 and kind == "str" and current is not None:
            fields[current].append(value)
        i += 1
    return fields, i


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


def archives(opam_text: str, package: str = "") -> list[Archive]:
    """The archives an opam file declares: its `url` section and every `extra-source`."""
    tokens = _tokens(opam_text)
    found = []
    i = 0
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "word" and value in ("url", "extra-source"):
            j = i + 1
            if value == "extra-source" and j < len(tokens) and tokens[j][0] == "str":
                j += 1
            if j < len(tokens) and tokens[j] == ("punct", "{"):
                fields, i = _section_fields(tokens, j + 1)
                archive = _archive(fields, package)
                if archive is not None:
                    found.append(archive)
                continue
        i += 1
    return found


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
        raw = gzip.decompress(data)
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
                    found.extend(archives(content.decode("utf-8", "replace"), package))
                new.addfile(member, io.BytesIO(content) if member.isfile() else None)
            if not saw_repo:
                info = tarfile.TarInfo("repo")
                info.size = len(REPO_FILE)
                new.addfile(info, io.BytesIO(REPO_FILE))
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise BadIndex(f"index.tar.gz is corrupt or truncated ({exc})") from None
    return out.getvalue(), found


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
    for a in found:
        names = [cache_name(algo, digest) for algo, digest in a.checksums.items()]
        for name in names:
            also = tuple(n for n in names if n != name)
            package = a.package.split(".", 1)[0]
            sources.append(Source(name, a.url, a.checksums, "opam", package, None, also))
    return Processed(index, "application/gzip", tuple(sources))
