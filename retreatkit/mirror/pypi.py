"""PyPI's simple API (PEP 503, 691, 658, 714): parse upstream pages, rewrite, render (no I/O)."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urldefrag, urljoin

from retreatkit.mirror.store import valid_hex

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_TYPE = "application/vnd.pypi.simple.v1+html"
ACCEPT_UPSTREAM = f"{JSON_TYPE}, {HTML_TYPE};q=0.2, text/html;q=0.1"
MAX_PAGE = 64 * 1024 * 1024
_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+!-]{0,254}$")


class PageError(ValueError):
    """An upstream page we cannot make sense of (truncated, wrong type, malformed)."""


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


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self._current: dict[str, str | None] | None = None
        self._text: list[str] = []
        self.closed_html = False

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
        if tag == "html":
            self.closed_html = True


def _hash_attr(value: str | None) -> dict[str, str] | bool:
    """`sha256=abc` -> {"sha256": "abc"}; `true` -> True; absent -> False."""
    if value is None:
        return False
    algo, eq, digest = value.partition("=")
    if eq and valid_hex(algo, digest.lower()):
        return {algo: digest.lower()}
    return value.strip().lower() == "true"


def parse_html(body: bytes, page_url: str) -> list[dict[str, Any]]:
    parser = _Anchors()
    try:
        parser.feed(body.decode("utf-8"))
        parser.close()
    except (UnicodeDecodeError, AssertionError) as exc:
        raise PageError(f"unreadable project page ({exc})") from None
    if not parser.closed_html:
        # a page cut short without Content-Length still parses: demand its end tag
        raise PageError("project page is truncated (no </html>)")
    files = []
    for attrs, text in parser.anchors:
        href = attrs.get("href")
        if not href:
            continue
        url, fragment = urldefrag(urljoin(page_url, href))
        entry: dict[str, Any] = {"filename": text or url.rsplit("/", 1)[-1], "url": url}
        algo, _, digest = fragment.partition("=")
        entry["hashes"] = {algo: digest.lower()} if valid_hex(algo, digest.lower()) else {}
        if attrs.get("data-requires-python"):
            entry["requires-python"] = attrs["data-requires-python"]
        if "data-yanked" in attrs:
            entry["yanked"] = attrs["data-yanked"] or True
        meta = _hash_attr(attrs.get("data-core-metadata", attrs.get("data-dist-info-metadata")))
        if meta:
            entry["core-metadata"] = meta
        files.append(entry)
    return files


def parse_json(body: bytes, page_url: str) -> list[dict[str, Any]]:
    try:
        doc = json.loads(body)
        raw = doc["files"]
        if not isinstance(raw, list):
            raise TypeError("files is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        raise PageError(f"unreadable project page ({type(exc).__name__})") from None
    files = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            continue
        entry = {
            k: item[k]
            for k in ("filename", "requires-python", "yanked", "size", "upload-time")
            if k in item
        }
        entry["url"] = urljoin(page_url, item["url"])
        hashes = item.get("hashes")
        entry["hashes"] = {
            a: str(h).lower()
            for a, h in (hashes.items() if isinstance(hashes, dict) else [])
            if valid_hex(a, str(h).lower())
        }
        meta = item.get("core-metadata", item.get("dist-info-metadata", False))
        if isinstance(meta, dict):
            meta = {a: str(h).lower() for a, h in meta.items() if valid_hex(a, str(h).lower())}
        if meta:
            entry["core-metadata"] = meta
        files.append(entry)
    return files


def parse(body: bytes, content_type: str, page_url: str) -> list[dict[str, Any]]:
    if JSON_TYPE in content_type or content_type.startswith("application/json"):
        return parse_json(body, page_url)
    return parse_html(body, page_url)


Source = tuple[str, str, dict[str, str]]


def rewrite(name: str, files: list[dict[str, Any]]) -> tuple[dict[str, Any], list[Source]]:
    """The page as the mirror serves it, and where upstream keeps each file.

    Files without a sha256 are left out: the mirror stores nothing it cannot verify.
    Metadata is offered only where upstream gave its hash, for the same reason.
    """
    out: list[dict[str, Any]] = []
    sources: list[Source] = []
    for entry in files:
        sha = entry["hashes"].get("sha256")
        filename = str(entry.get("filename", ""))
        if not sha or not valid_filename(filename):
            continue
        sources.append((source_name(sha, filename), entry["url"], dict(entry["hashes"])))
        item = {k: v for k, v in entry.items() if k not in ("url", "core-metadata")}
        item["filename"] = filename
        item["url"] = files_url(sha, filename)
        meta = entry.get("core-metadata")
        if isinstance(meta, dict) and "sha256" in meta:
            item["core-metadata"] = meta
            sources.append(
                (source_name(sha, filename + ".metadata"), entry["url"] + ".metadata", meta)
            )
        out.append(item)
    page = {"meta": {"api-version": "1.1"}, "name": name, "files": out}
    return page, sources


def render_json(page: dict[str, Any]) -> bytes:
    return json.dumps(page, separators=(",", ":")).encode()


def render_html(page: dict[str, Any]) -> bytes:
    name = html.escape(page["name"])
    lines = [
        "<!DOCTYPE html>",
        '<html><head><meta name="pypi:repository-version" content="1.1">',
        f"<title>Links for {name}</title></head><body><h1>Links for {name}</h1>",
    ]
    for item in page["files"]:
        attrs = [f'href="{html.escape(item["url"])}#sha256={item["hashes"]["sha256"]}"']
        if item.get("requires-python"):
            attrs.append(f'data-requires-python="{html.escape(item["requires-python"])}"')
        yanked = item.get("yanked")
        if yanked:
            reason = yanked if isinstance(yanked, str) else ""
            attrs.append(f'data-yanked="{html.escape(reason)}"')
        meta = item.get("core-metadata")
        if isinstance(meta, dict):
            value = f"sha256={meta['sha256']}"
            # PEP 714: the new name and, for older clients, the old one
            attrs.append(f'data-core-metadata="{value}" data-dist-info-metadata="{value}"')
        lines.append(f"<a {' '.join(attrs)}>{html.escape(item['filename'])}</a><br/>")
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
