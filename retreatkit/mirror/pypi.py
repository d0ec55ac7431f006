"""PyPI's simple API (PEP 503, 691, 658, 700, 714): typed pages, parsed, rewritten, rendered.

No I/O here. Upstream pages (HTML or JSON) become a `Project` of `File`s; the mirror
keeps the rewritten project, whose files point at itself, as PEP 691 JSON, and renders
HTML, or the offline page listing only what it holds, from it. PEP 700 makes `size`
mandatory under api-version 1.1: a page whose sizes are not all known (an HTML upstream,
files never fetched) says 1.0, the truth, and gives the sizes it knows.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urldefrag, urljoin

from retreatkit.mirror.blobs import valid_hex
from retreatkit.mirror.errors import BadUpstreamData
from retreatkit.mirror.records import Processed, Source, fetchable

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_TYPE = "application/vnd.pypi.simple.v1+html"
ACCEPT_UPSTREAM = f"{JSON_TYPE}, {HTML_TYPE};q=0.2, text/html;q=0.1"
MAX_PAGE = 64 * 1024 * 1024
_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+!-]{0,254}$")
_SDIST = re.compile(r"\.(tar\.gz|tar\.bz2|tar\.xz|tar|zip|tgz)$")


class PageError(BadUpstreamData):
    """An upstream page we cannot make sense of (truncated, wrong type, malformed)."""


@dataclass(frozen=True, slots=True)
class File:
    filename: str
    url: str
    hashes: Mapping[str, str]
    requires_python: str | None = None
    yanked: bool | str = False  # True, or the reason
    size: int | None = None
    upload_time: str | None = None
    core_metadata: Mapping[str, str] | None = None  # hashes of `<url>.metadata`, if offered

    @property
    def key(self) -> str:
        """Where the store keeps this file (see `source_name`)."""
        return source_name(self.hashes.get("sha256", ""), self.filename)


@dataclass(frozen=True, slots=True)
class Project:
    name: str
    files: tuple[File, ...]

    @property
    def versions(self) -> list[str]:
        """PEP 700: the versions its files carry, in the order they first appear."""
        found = (version_of(self.name, f.filename) for f in self.files)
        return list(dict.fromkeys(v for v in found if v))

    def with_sizes(self, sizes: Mapping[str, int]) -> Project:
        """Sizes the store knows, for files the upstream gave none."""
        return Project(
            self.name,
            tuple(
                replace(f, size=sizes[f.key]) if f.size is None and f.key in sizes else f
                for f in self.files
            ),
        )

    def only(self, held: Mapping[str, int], missing: str | None = None) -> Project:
        """The offline page: what the store holds, so clients pick a version they can
        install; metadata is offered only where it is held too. With `missing`, the
        files it does not hold stay listed, yanked for that reason (PEP 592): pip and uv
        pass them by while a held file will do, and one asked for by its version alone
        is taken with the reason shown, then answered with why it cannot be had. Left
        out, pip said `from versions: 1.0` of 2.0, as of a version that does not exist."""
        files = []
        for f in self.files:
            meta = f.core_metadata if f.key + ".metadata" in held else None
            if f.key in held:
                files.append(replace(f, size=held[f.key], core_metadata=meta))
            elif missing is not None:
                why = (
                    f"{f.yanked}; {missing}" if isinstance(f.yanked, str) and f.yanked else missing
                )
                files.append(replace(f, yanked=why, core_metadata=meta))
        return Project(self.name, tuple(files))

    def keys(self) -> list[str]:
        """Every store key the page names: files and their metadata."""
        out = []
        for f in self.files:
            out.append(f.key)
            if f.core_metadata is not None:
                out.append(f.key + ".metadata")
        return out


def normalize(name: str) -> str:
    """PEP 503 normalisation."""
    return re.sub(r"[-_.]+", "-", name).lower()


def valid_project(name: str) -> bool:
    return len(name) <= 200 and _NAME.match(name) is not None


def valid_filename(name: str) -> bool:
    return _FILENAME.match(name) is not None and ".." not in name


def files_url(sha256: str, filename: str) -> str:
    return f"/pypi/files/{sha256}/{filename}"


def source_name(sha256: str, filename: str) -> str:
    return f"pypi/{sha256}/{filename}"


def page_key(name: str) -> str:
    return f"pypi/simple/{name}"


def version_of(project: str, filename: str) -> str | None:
    """A distribution's version from its file name (wheel, sdist or egg)."""
    if filename.endswith((".whl", ".egg")):
        parts = filename.split("-")
        return parts[1] if len(parts) >= 3 else None
    stem = _SDIST.sub("", filename)
    if stem == filename:
        return None
    # an sdist's project part may itself hold dashes (`python-dateutil-2.8.2.tar.gz`)
    cut = len(project)
    if normalize(stem[:cut]) == project and stem[cut : cut + 1] == "-":
        return stem[cut + 1 :] or None
    _, dash, version = stem.rpartition("-")
    return version if dash and version else None


def wants_json(accept: str) -> bool:
    """PEP 691 content negotiation, simplified: JSON if the client ranks it above HTML."""
    best, best_q = "html", -1.0
    for part in accept.split(","):
        kind, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        kind = kind.strip()
        if kind == JSON_TYPE and q > best_q:
            best, best_q = "json", q
        elif kind in (HTML_TYPE, "text/html", "*/*") and q > best_q:
            best, best_q = "html", q
    return best == "json"


# -- upstream pages ---------------------------------------------------------------------


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self._current: dict[str, str | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._current, self._text = dict(attrs), []

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._current is not None:
            self.anchors.append((self._current, "".join(self._text).strip()))
            self._current = None


def _hashes(pairs: Iterable[tuple[Any, Any]]) -> dict[str, str]:
    return {str(a): str(h).lower() for a, h in pairs if valid_hex(str(a), str(h).lower())}


def _metadata_attr(value: str | None) -> dict[str, str] | None:
    """`sha256=abc` -> {"sha256": "abc"}; `true` (no hash) or absent -> None: the mirror
    offers no file it cannot verify."""
    if value is None:
        return None
    algo, _, digest = value.partition("=")
    return _hashes([(algo, digest)]) or None


def parse_html(body: bytes, page_url: str) -> list[File]:
    parser = _Anchors()
    try:
        parser.feed(body.decode("utf-8"))
        parser.close()
    except (UnicodeDecodeError, AssertionError) as exc:
        raise PageError(f"unreadable project page ({exc})") from None
    files = []
    for attrs, text in parser.anchors:
        href = attrs.get("href")
        if not href:
            continue
        try:
            url, fragment = urldefrag(urljoin(page_url, href))
        except ValueError:  # no URL at all (`http://[x`): left out, as `rewrite` would
            continue
        algo, _, digest = fragment.partition("=")
        yanked: bool | str = False
        if "data-yanked" in attrs:
            yanked = attrs["data-yanked"] or True
        meta = attrs.get("data-core-metadata", attrs.get("data-dist-info-metadata"))
        files.append(
            File(
                filename=text or url.rsplit("/", 1)[-1],
                url=url,
                hashes=_hashes([(algo, digest)]),
                requires_python=attrs.get("data-requires-python") or None,
                yanked=yanked,
                core_metadata=_metadata_attr(meta),
            )
        )
    return files


def parse_json(body: bytes, page_url: str) -> list[File]:
    try:
        doc = json.loads(body)
        raw = doc["files"]
        if not isinstance(raw, list):
            raise TypeError("files is not a list")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise PageError(f"unreadable project page ({type(exc).__name__})") from None
    files = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            continue
        try:
            url = urljoin(page_url, item["url"])
        except ValueError:
            continue
        hashes = item.get("hashes")
        meta = item.get("core-metadata", item.get("dist-info-metadata"))
        size, yanked = item.get("size"), item.get("yanked", False)
        requires, uploaded = item.get("requires-python"), item.get("upload-time")
        files.append(
            File(
                filename=str(item.get("filename") or item["url"].rsplit("/", 1)[-1]),
                url=url,
                hashes=_hashes(hashes.items()) if isinstance(hashes, dict) else {},
                requires_python=requires if isinstance(requires, str) and requires else None,
                yanked=yanked if isinstance(yanked, bool | str) else bool(yanked),
                size=size if type(size) is int and size >= 0 else None,
                upload_time=uploaded if isinstance(uploaded, str) else None,
                core_metadata=(_hashes(meta.items()) or None) if isinstance(meta, dict) else None,
            )
        )
    return files


def parse(body: bytes, content_type: str, page_url: str) -> list[File]:
    if JSON_TYPE in content_type or content_type.startswith("application/json"):
        return parse_json(body, page_url)
    return parse_html(body, page_url)


def rewrite(name: str, files: Iterable[File]) -> tuple[Project, list[Source]]:
    """The project as the mirror serves it, and where upstream keeps each file.

    Files without a sha256 are left out: the mirror stores nothing it cannot verify.
    Metadata is offered only where upstream gave its sha256, for the same reason. So are
    files at a URL the mirror cannot fetch.
    """
    out: list[File] = []
    sources: list[Source] = []
    for f in files:
        sha = f.hashes.get("sha256")
        if not sha or not valid_filename(f.filename) or not fetchable(f.url):
            continue
        key = source_name(sha, f.filename)
        sources.append(Source(key, f.url, dict(f.hashes), "pypi", name, f.size))
        meta = f.core_metadata if f.core_metadata and "sha256" in f.core_metadata else None
        if meta is not None:
            sources.append(Source(key + ".metadata", f.url + ".metadata", meta, "pypi", name))
        out.append(replace(f, url=files_url(sha, f.filename), core_metadata=meta))
    return Project(name, tuple(out)), sources


def _names(body: bytes, project: str) -> bool:
    """Does the page name the project, spelled any way PEP 503 allows?"""
    spelled = "[-_.]+".join(re.escape(part) for part in project.split("-"))
    return re.search(spelled.encode(), body, re.IGNORECASE) is not None


def process(name: str, body: bytes, content_type: str, page_url: str) -> Processed:
    """An upstream page as the mirror keeps it (CPU-heavy for big projects: run off the loop).

    An HTML page with no file that does not even name the project is not its page: with
    the uplink cut, a venue's login portal answers every URL with its own. Taken as the
    project's, it would replace the page held with an empty one; refused, the page held
    is served stale."""
    files = parse(body, content_type, page_url)
    if not files and not _names(body, name):
        raise PageError(f"upstream sent a page that is not {name}'s (a login portal's?)")
    project, sources = rewrite(name, files)
    return Processed(render_json(project), JSON_TYPE, tuple(sources))


def load(body: bytes) -> Project:
    """A page the mirror stored (its own PEP 691 JSON) back into records."""
    doc = json.loads(body)
    return Project(str(doc["name"]), tuple(parse_json(body, "")))


# -- what clients get -------------------------------------------------------------------


def api_version(project: Project) -> str:
    return "1.1" if all(f.size is not None for f in project.files) else "1.0"


def _json_file(f: File) -> dict[str, Any]:
    item: dict[str, Any] = {"filename": f.filename, "url": f.url, "hashes": dict(f.hashes)}
    if f.requires_python:
        item["requires-python"] = f.requires_python
    if f.yanked:
        item["yanked"] = f.yanked
    if f.size is not None:
        item["size"] = f.size
    if f.upload_time:
        item["upload-time"] = f.upload_time
    if f.core_metadata is not None:
        item["core-metadata"] = dict(f.core_metadata)  # PEP 714: only the new name in JSON
    return item


def render_json(project: Project) -> bytes:
    doc = {
        "meta": {"api-version": api_version(project)},
        "name": project.name,
        "versions": project.versions,
        "files": [_json_file(f) for f in project.files],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def render_html(project: Project) -> bytes:
    name = html.escape(project.name)
    lines = [
        "<!DOCTYPE html>",
        '<html><head><meta name="pypi:repository-version" content="1.1">',
        f"<title>Links for {name}</title></head><body><h1>Links for {name}</h1>",
    ]
    for f in project.files:
        attrs = [f'href="{html.escape(f.url)}#sha256={f.hashes["sha256"]}"']
        if f.requires_python:
            attrs.append(f'data-requires-python="{html.escape(f.requires_python)}"')
        if f.yanked:
            reason = f.yanked if isinstance(f.yanked, str) else ""
            attrs.append(f'data-yanked="{html.escape(reason)}"')
        if f.core_metadata is not None:
            value = f"sha256={f.core_metadata['sha256']}"
            # PEP 714: the new name and, for older clients, the old one
            attrs.append(f'data-core-metadata="{value}" data-dist-info-metadata="{value}"')
        lines.append(f"<a {' '.join(attrs)}>{html.escape(f.filename)}</a><br/>")
    lines.append("</body></html>")
    return ("\n".join(lines) + "\n").encode()


def render_root(names: list[str], as_json: bool) -> bytes:
    if as_json:
        doc = {"meta": {"api-version": "1.1"}, "projects": [{"name": n} for n in names]}
        return json.dumps(doc, separators=(",", ":")).encode()
    links = "\n".join(f'<a href="{html.escape(n)}/">{html.escape(n)}</a><br/>' for n in names)
    return (
        '<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" content="1.1">'
        f"<title>Simple index</title></head><body>\n{links}\n</body></html>\n"
    ).encode()
