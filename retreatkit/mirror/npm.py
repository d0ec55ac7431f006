"""npm's registry API: packuments read, rewritten to the mirror, and trimmed offline (no I/O).

A packument (`GET /NAME`, `@scope%2fname` for scoped names) lists every version with
`dist.tarball` (an absolute URL), `dist.integrity` (SRI, RFC-less but W3C's: `sha512-`
and base64) and the older `dist.shasum` (sha1 hex). The mirror keeps `integrity` and
`shasum` exactly as they are (npm checks them, and the registry's signatures cover
`name@version:integrity`, not the URL) and points `dist.tarball` at itself. npm needs an
absolute URL there, and the mirror's own name is the one each client used, so the stored
packument carries `MARKER` where the base URL goes, replaced per response.

The short form (`Accept: application/vnd.npm.install-v1+json`) is kept apart from the full
one: offline, the full one may answer a request for the short form, never the reverse.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from retreatkit.mirror.blobs import valid_hex
from retreatkit.mirror.errors import BadUpstreamData
from retreatkit.mirror.records import Processed, Source, fetchable

ABBREVIATED = "application/vnd.npm.install-v1+json"
FULL = "application/json"
ACCEPT_ABBREVIATED = f"{ABBREVIATED}; q=1.0, {FULL}; q=0.8, */*"
MAX_PACKUMENT = 128 * 1024 * 1024  # npm's own is 21 MB; the biggest few are far larger
MARKER = "@@retreatkit-mirror@@"
MAX_NAMED = 5  # held versions an offline packument names in its message
_NAME = re.compile(r"^(?:@[A-Za-z0-9_~.-][A-Za-z0-9_~.-]*/)?[A-Za-z0-9_~.-][A-Za-z0-9_~.-]*$")
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,200}\.tgz$")
_SEMVER = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")
_SRI = {"sha512", "sha256", "sha1"}  # what the store can check
_BLANK = re.compile(rb"[ \t\r\n]*")  # JSON's whitespace


class PackumentError(BadUpstreamData):
    """An upstream packument we cannot make sense of."""


def valid_name(name: str) -> bool:
    """npm's package names, old ones with capitals included; never `.`, `..` or a path."""
    if len(name) > 214 or not _NAME.match(name):
        return False
    return all(part not in (".", "..") and not part.startswith(".") for part in name.split("/"))


def valid_file(name: str) -> bool:
    return _FILE.match(name) is not None and ".." not in name


def upstream_url(registry: str, name: str) -> str:
    """A packument's URL: a scoped name's slash is encoded (`@scope%2fname`)."""
    return registry.rstrip("/") + "/" + name.replace("/", "%2f")


def packument_key(name: str, abbreviated: bool) -> str:
    return f"npm/{'abbreviated' if abbreviated else 'packument'}/{name}"


def tarball_key(name: str, file: str) -> str:
    return f"npm/{name}/-/{file}"


def tarball_path(name: str, file: str) -> str:
    return f"/npm/{name}/-/{file}"


def wants_abbreviated(accept: str) -> bool:
    return ABBREVIATED in accept


def hashes(integrity: object, shasum: object) -> dict[str, str]:
    """Every hash the store can check, as lowercase hex: SRI strings may list several
    (`sha512-... sha1-...`); `shasum` is sha1 hex."""
    found: dict[str, str] = {}
    for part in integrity.split() if isinstance(integrity, str) else ():
        algo, _, b64 = part.partition("-")
        algo = algo.lower()
        if algo not in _SRI:
            continue
        try:
            digest = base64.b64decode(b64.split("?")[0], validate=True).hex()
        except (binascii.Error, ValueError):
            continue
        if valid_hex(algo, digest):
            found[algo] = digest
    if isinstance(shasum, str) and valid_hex("sha1", shasum.lower()):
        found.setdefault("sha1", shasum.lower())
    return found


def _load(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise PackumentError(f"unreadable packument ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise PackumentError("unreadable packument (not an object)")
    return doc


def _dump(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _starts_an_object(body: bytes) -> bool:
    """Whether the first byte past any whitespace opens a JSON object (no copy of the page)."""
    start = _BLANK.match(body)
    return start is not None and body[start.end() : start.end() + 1] == b"{"


def process(name: str, body: bytes, abbreviated: bool) -> Processed:
    """An upstream packument as the mirror keeps it, and where upstream keeps each tarball.
    Versions whose tarball has no hash the store can check, a name that is not a plain
    file or a URL the mirror cannot fetch, are left out: the mirror serves nothing it
    cannot verify. CPU-heavy for big
    packuments: run off the loop."""
    if not _starts_an_object(body):
        # JSON that is cut is caught before (its length); a page that is not a JSON object
        # at all is what a venue's login portal answers for every path
        raise PackumentError(
            f"upstream sent a page that is not {name}'s packument (a login portal's?)"
        )
    doc = _load(body)
    if doc.get("name") != name:
        raise PackumentError(f"upstream sent a packument for {doc.get('name')!r}, not {name!r}")
    versions = doc.get("versions")
    if not isinstance(versions, dict):
        versions = {}
    kept: dict[str, Any] = {}
    sources: list[Source] = []
    for version, meta in versions.items():
        dist = meta.get("dist") if isinstance(meta, dict) else None
        url = dist.get("tarball") if isinstance(dist, dict) else None
        if not isinstance(dist, dict) or not isinstance(url, str) or not fetchable(url):
            continue
        file = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
        found = hashes(dist.get("integrity"), dist.get("shasum"))
        if not found or not valid_file(file):
            continue
        sources.append(Source(tarball_key(name, file), url, found, "npm", name))
        dist["tarball"] = MARKER + tarball_path(name, file)
        kept[version] = meta
    doc["versions"] = kept
    tags = doc.get("dist-tags")
    if isinstance(tags, dict):
        doc["dist-tags"] = {tag: v for tag, v in tags.items() if v in kept}
    return Processed(_dump(doc), ABBREVIATED if abbreviated else FULL, tuple(sources))


def tarball_keys(doc: Mapping[str, Any]) -> dict[str, str]:
    """version -> store key of its tarball, in a packument the mirror stored (parsed)."""
    out = {}
    prefix = MARKER + "/npm/"
    versions = doc.get("versions")
    for version, meta in versions.items() if isinstance(versions, dict) else ():
        url = meta.get("dist", {}).get("tarball", "")
        if isinstance(url, str) and url.startswith(prefix):
            out[version] = "npm/" + url.removeprefix(prefix)
    return out


def version_order(version: str) -> tuple[Any, ...]:
    """Semver precedence (semver.org, item 11), enough to pick the newest: a release
    ranks above its prereleases; what is not semver ranks lowest."""
    match = _SEMVER.match(version)
    if match is None:
        return (-1,)
    pre = match[4]
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in (pre or "").split("."))
    return (int(match[1]), int(match[2]), int(match[3]), pre is None, parts)


def only(
    body: bytes, held: Callable[[Iterable[str]], Mapping[str, int]], why: str
) -> tuple[bytes, bool]:
    """The offline packument, and whether it lists only what is held: only versions
    whose tarball the store holds, dist-tags moved to the newest of those, so npm picks
    a version it can install. Listed alone, they made npm say `No matching version
    found` (ETARGET) for a range none of them meets, as for a version that does not
    exist; so the others go to `policyRestrictions` (npm-pick-manifest's, from npm
    Enterprise) with `why`: npm picks a version not restricted if one meets the range,
    else fails at once with `403 Could not download NAME@RANGE due to policy
    violations:` and the message. A packument with none held is left whole besides:
    clients that know no restrictions (yarn, pnpm) pick a version and are told why by
    its tarball's 504."""
    doc = _load(body)  # once: parsed, a packument takes several times its size
    keys = tarball_keys(doc)
    have = held(keys.values())
    versions, name = doc["versions"], doc.get("name")
    kept = {v: meta for v, meta in versions.items() if keys.get(v) in have}
    if len(kept) < len(versions):
        doc["policyRestrictions"] = {
            "message": f"{why}, and the mirror holds {_held(name, kept)}",
            # npm reads only `version` of a restricted one: it is never installed
            "versions": {v: {"name": name, "version": v} for v in versions if v not in kept},
        }
    if not kept:
        return _dump(doc), False
    doc["versions"] = kept
    newest = max(kept, key=version_order)
    tags = doc.get("dist-tags")
    moved = (
        {t: (v if v in kept else newest) for t, v in (tags or {}).items()}
        if isinstance(tags, dict)
        else {}
    )
    moved.setdefault("latest", newest)
    doc["dist-tags"] = moved
    return _dump(doc), True


def _held(name: object, kept: Mapping[str, Any]) -> str:
    """`only NAME 2.0.0, 1.0.0`, newest first, a few at most; versions that are not
    semver are counted, not named (npm prints them on a terminal)."""
    if not kept:
        return f"no version of {name}"
    named = sorted(
        (v for v in kept if len(v) <= 64 and _SEMVER.match(v)), key=version_order, reverse=True
    )
    if not named:
        return f"only {len(kept)} version{'s' if len(kept) > 1 else ''} of {name}"
    more = len(kept) - min(len(named), MAX_NAMED)
    return f"only {name} {', '.join(named[:MAX_NAMED])}" + (f" and {more} more" if more else "")


def render(body: bytes, base: str) -> bytes:
    """A stored packument as one client gets it: tarball URLs under the name it used."""
    return body.replace(MARKER.encode(), base.rstrip("/").encode())
