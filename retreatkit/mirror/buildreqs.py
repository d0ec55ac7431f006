"""What building a source distribution needs, read from its bytes (no I/O).

A lock file names an sdist and never what builds it: pip and uv install the sdist's
`[build-system] requires` (PEP 518) into a fresh environment first, from the same
index, so a mirror seeded from the lock alone cannot build it offline. The seed reads
them here, then the `Requires-Dist` of the wheels it picks for them.
"""

from __future__ import annotations

import io
import tarfile
import tomllib
import zipfile
from collections.abc import Iterable
from email.parser import BytesParser

from packaging.requirements import InvalidRequirement, Requirement

# what pip and uv build an sdist with when it names nothing (no pyproject.toml, or one
# with no [build-system]): PEP 517's fallback to setuptools' legacy backend
DEFAULT = ("setuptools>=40.8.0",)
MAX_PYPROJECT = 1024 * 1024


def _pyproject(data: bytes, filename: str) -> bytes | None:
    """The sdist's top-level pyproject.toml, if it has one."""
    if filename.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for info in z.infolist():
                parts = info.filename.split("/")
                if len(parts) == 2 and parts[1] == "pyproject.toml":
                    return z.read(info) if info.file_size <= MAX_PYPROJECT else None
        return None
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for member in tar:
            parts = member.name.removeprefix("./").split("/")
            if len(parts) == 2 and parts[1] == "pyproject.toml" and member.isfile():
                handle = tar.extractfile(member)
                if handle is None or member.size > MAX_PYPROJECT:
                    return None
                return handle.read()
    return None


def of_sdist(data: bytes, filename: str) -> list[Requirement]:
    """The sdist's build requirements, as pip and uv read them. An sdist that cannot be
    read (or names requirements that do not parse) gives none: its build fails anyway."""
    try:
        raw = _pyproject(data, filename)
        doc = tomllib.loads(raw.decode()) if raw is not None else {}
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, ValueError):
        return []
    system = doc.get("build-system")
    requires = system.get("requires") if isinstance(system, dict) else list(DEFAULT)
    if not isinstance(requires, list):
        return []
    return _parsed(r for r in requires if isinstance(r, str))


def of_metadata(metadata: bytes) -> list[Requirement]:
    """A wheel's dependencies from its core metadata, extras left out: markers are kept
    whatever they say, since the Python that builds is the attendee's."""
    message = BytesParser().parsebytes(metadata, headersonly=True)
    found = _parsed(message.get_all("Requires-Dist") or [])
    return [r for r in found if r.marker is None or "extra" not in str(r.marker)]


def _parsed(texts: Iterable[str]) -> list[Requirement]:
    out = []
    for text in texts:
        try:
            out.append(Requirement(text))
        except InvalidRequirement:
            continue
    return out
