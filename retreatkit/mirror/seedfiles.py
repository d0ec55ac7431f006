"""What to warm the mirror with, read from the files an organiser already has (no network).

requirements.txt (pip's format: `-r` followed, `--hash` kept), pylock.toml (PEP 751),
uv.lock, npm's package-lock.json (lockfile versions 1 to 3), an opam switch export
(`opam switch export`) or list (`name` or `name.version` a line), a list of Debian package
names (`name` or `name=version` a line). Each becomes `Want`s; resolving them against the
indexes is seed.py's work. `KIND:FILE` names the kind where the file name does not.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from retreatkit.mirror import opam

KINDS = ("requirements", "pylock", "uv.lock", "npm", "opam", "apt")
MAX_FILE = 64 * 1024 * 1024
MAX_INCLUDES = 32  # `-r` files followed from one requirements file
_HASH = re.compile(r"--hash[= ]sha256:([0-9a-fA-F]{64})")
_OPAM_NAME = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9_+.~-]*$")
_DEB_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


class SeedFileError(ValueError):
    """A file that cannot be read as the kind it is taken for; the message names it."""


@dataclass(frozen=True, slots=True)
class Want:
    ecosystem: str  # pypi, npm, opam, apt
    name: str
    version: str | None = None  # exact, when the file pins it
    spec: str = ""  # pypi: a version specifier, when not pinned
    hashes: frozenset[str] = frozenset()  # pypi: sha256s; npm: the integrity string
    origin: str = ""  # where it was read, for the summary

    @property
    def label(self) -> str:
        sep = {"pypi": "==", "npm": "@", "opam": ".", "apt": "="}[self.ecosystem]
        return f"{self.ecosystem} {self.name}" + (
            f"{sep}{self.version}" if self.version else self.spec
        )


@dataclass
class Read:
    wants: list[Want] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was skipped, and why


def kind_of(path: str) -> tuple[str, Path]:
    """`KIND:FILE` or a file name that says its kind."""
    kind, sep, rest = path.partition(":")
    if sep and kind in KINDS:
        return kind, Path(rest)
    p = Path(path)
    name = p.name.lower()
    if name == "uv.lock":
        return "uv.lock", p
    if re.fullmatch(r"pylock(\.[^.]+)?\.toml", name):
        return "pylock", p
    if name in ("package-lock.json", "npm-shrinkwrap.json"):
        return "npm", p
    if name.endswith((".export", ".opam.locked")):
        return "opam", p
    if name.endswith((".txt", ".in")) and "requirement" in name:
        return "requirements", p
    raise SeedFileError(
        f"{path}: cannot tell what it lists; name its kind, e.g. requirements:{path}"
        f" ({', '.join(KINDS)})"
    )


def _text(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_FILE:
            raise SeedFileError(f"{path}: larger than {MAX_FILE} bytes")
        return path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SeedFileError(f"{path}: cannot read it ({exc})") from None


def read(kind: str, path: Path) -> Read:
    if kind == "requirements":
        return requirements(path, set())
    parsers: dict[str, Callable[[str, str], Read]] = {
        "pylock": pylock, "uv.lock": uv_lock, "npm": package_lock, "opam": opam_list,
        "apt": apt_list,
    }  # fmt: skip
    return parsers[kind](_text(path), str(path))


# -- Python ---------------------------------------------------------------------------------


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """pip's lines: comments dropped, `\\` continuations joined."""
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not buf:
            start = number
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        yield start, (buf + line).strip()
        buf = ""
    if buf.strip():
        yield start, buf.strip()


def requirements(path: Path, seen: set[Path]) -> Read:
    out = Read()
    real = path.resolve()
    if real in seen or len(seen) >= MAX_INCLUDES:
        return out
    seen.add(real)
    for number, line in _logical_lines(_text(path)):
        where = f"{path}:{number}"
        if not line:
            continue
        words = line.split()
        if words[0] in ("-r", "--requirement"):
            if len(words) > 1:
                included = requirements(path.parent / words[1], seen)
                out.wants += included.wants
                out.notes += included.notes
            continue
        if line.startswith("-"):  # -c, -e, --index-url and other options: not packages
            if line.startswith(("-e", "--editable")):
                out.notes.append(f"{where}: editable, skipped")
            continue
        hashes = frozenset(h.lower() for h in _HASH.findall(line))
        try:
            req = Requirement(_HASH.sub("", line).strip())
        except InvalidRequirement:
            out.notes.append(f"{where}: not a requirement pip would read, skipped")
            continue
        if req.url:
            out.notes.append(f"{where}: {req.name} comes from a URL, skipped")
            continue
        pinned = [s.version for s in req.specifier if s.operator in ("==", "===")]
        version = pinned[0] if len(pinned) == 1 and "*" not in pinned[0] else None
        name = canonicalize_name(req.name)
        spec = "" if version else str(req.specifier)
        out.wants.append(Want("pypi", name, version, spec, hashes, where))
    return out


def _toml(text: str, origin: str) -> dict[str, object]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SeedFileError(f"{origin}: not valid TOML ({exc})") from None


def _sha256(entry: object) -> str | None:
    """uv.lock's `hash = "sha256:..."` or PEP 751's `hashes = {sha256 = "..."}`."""
    if not isinstance(entry, dict):
        return None
    hashes = entry.get("hashes")
    if isinstance(hashes, dict) and isinstance(hashes.get("sha256"), str):
        return str(hashes["sha256"]).lower()
    found = entry.get("hash")
    if isinstance(found, str) and found.startswith("sha256:"):
        return found[7:].lower()
    return None


def _locked(packages: object, origin: str, uv: bool) -> Read:
    """Packages with their files' sha256s: uv.lock's `[[package]]` (those whose source is
    a registry) or PEP 751's `[[packages]]` (those with an sdist or wheels)."""
    out = Read()
    for pkg in packages if isinstance(packages, list) else []:
        if not isinstance(pkg, dict) or not isinstance(pkg.get("name"), str):
            continue
        name, version = canonicalize_name(pkg["name"]), pkg.get("version")
        source = pkg.get("source")
        if uv and not (isinstance(source, dict) and "registry" in source):
            continue  # editable, virtual, git, path: not on an index
        if not uv and not (pkg.get("sdist") or pkg.get("wheels")):
            continue  # vcs, directory, archive: not on an index
        files = [pkg.get("sdist"), *(pkg.get("wheels") or [])]
        hashes = frozenset(h for h in (_sha256(f) for f in files) if h)
        if not hashes:
            out.notes.append(f"{origin}: {name} has no file with a sha256, skipped")
            continue
        out.wants.append(Want("pypi", name, str(version or "") or None, "", hashes, origin))
    return out


def uv_lock(text: str, origin: str) -> Read:
    return _locked(_toml(text, origin).get("package"), origin, uv=True)


def pylock(text: str, origin: str) -> Read:
    doc = _toml(text, origin)
    if not str(doc.get("lock-version", "")).startswith("1"):
        raise SeedFileError(f"{origin}: not a PEP 751 lock (lock-version 1.x)")
    return _locked(doc.get("packages"), origin, uv=False)


def running_kit() -> Read:
    """retreatkit's own dependencies at the versions running here, every level down and
    with the extras asked for (`markdown-it-py[linkify]`), so the kit's wheel (which the
    mirror serves) installs with no uplink."""
    out = Read()
    todo: list[tuple[str, frozenset[str]]] = [("retreatkit", frozenset())]
    done: set[tuple[str, frozenset[str]]] = set()
    pinned: set[str] = {"retreatkit"}
    while todo:
        name, extras = todo.pop()
        if (name, extras) in done:
            continue
        done.add((name, extras))
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            wanted = [{"extra": e} for e in ("", *extras)]
            if req.marker is not None and not any(req.marker.evaluate(w) for w in wanted):
                continue  # another extra's, or not for this Python and platform
            dep = canonicalize_name(req.name)
            todo.append((dep, frozenset(req.extras)))
            if dep in pinned:
                continue
            pinned.add(dep)
            try:
                version = importlib.metadata.version(dep)
            except importlib.metadata.PackageNotFoundError:
                out.notes.append(f"the kit needs {dep}, not installed here: skipped")
                continue
            out.wants.append(Want("pypi", dep, version, origin="the running retreatkit"))
    return out


# -- npm, opam, Debian ----------------------------------------------------------------------


def package_lock(text: str, origin: str) -> Read:
    try:
        doc = json.loads(text)
    except ValueError:
        raise SeedFileError(f"{origin}: not JSON") from None
    out = Read()
    packages = doc.get("packages") if isinstance(doc, dict) else None
    entries: list[tuple[str, dict[str, object]]] = []
    if isinstance(packages, dict):  # lockfile versions 2 and 3
        for path, entry in packages.items():
            if path and isinstance(entry, dict) and "node_modules/" in path:
                entries.append((path.rsplit("node_modules/", 1)[1], entry))
    elif isinstance(doc, dict):  # version 1: nested `dependencies`

        def walk(deps: object) -> None:
            for name, entry in (deps or {}).items() if isinstance(deps, dict) else ():
                if isinstance(entry, dict):
                    entries.append((name, entry))
                    walk(entry.get("dependencies"))

        walk(doc.get("dependencies"))
    for name, entry in entries:
        if entry.get("link") or entry.get("inBundle") or entry.get("bundled"):
            continue
        version, resolved = entry.get("version"), entry.get("resolved")
        if not isinstance(version, str) or not (
            isinstance(resolved, str) and resolved.startswith(("http://", "https://"))
        ):
            out.notes.append(f"{origin}: {name} is not from a registry, skipped")
            continue
        integrity = entry.get("integrity")
        hashes = frozenset([integrity]) if isinstance(integrity, str) else frozenset()
        out.wants.append(Want("npm", name, version, "", hashes, origin))
    return out


def opam_list(text: str, origin: str) -> Read:
    """`opam switch export` (its `installed:` list) or one `name[.version]` a line."""
    out = Read()
    if re.search(r"^installed\s*:", text, re.M):
        tokens = opam._tokens(text)
        names: list[str] = []
        for i, (kind, value) in enumerate(tokens):
            if (
                kind == "word"
                and value == "installed"
                and tokens[i + 1 : i + 3]
                == [
                    ("punct", ":"),
                    ("punct", "["),
                ]
            ):
                for kind2, value2 in tokens[i + 3 :]:
                    if kind2 != "str":
                        break
                    names.append(value2)
    else:
        names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    for full in filter(None, names):
        name, _, version = full.partition(".")
        if not _OPAM_NAME.match(full):
            out.notes.append(f"{origin}: {full!r} is not an opam package, skipped")
            continue
        if version == "base" or name.startswith(("base-", "ocaml-system")):
            continue  # virtual packages and the system compiler: nothing to download
        out.wants.append(Want("opam", name, version or None, origin=origin))
    return out


def apt_list(text: str, origin: str) -> Read:
    out = Read()
    for line in text.splitlines():
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        name, _, version = item.partition("=")
        if not _DEB_NAME.match(name):
            out.notes.append(f"{origin}: {item!r} is not a Debian package name, skipped")
            continue
        out.wants.append(Want("apt", name, version or None, origin=origin))
    return out
