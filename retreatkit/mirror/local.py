"""The local index: the organiser's own wheels and sdists, beside the mirrored ones.

devpi's private indexes are how workshops publish course packages; pip and uv see them
through the one index URL attendees already use. A project with local files is served
from those alone: the upstream's files of the same name never appear beside them, so a
package on the public index cannot outbid a course package (dependency confusion,
pypa/pip#13611: pip's `--extra-index-url` takes the best version from any index). The
organiser may let one through with `allow_upstream`. Local files are pinned: never
evicted. A file name, once published, always names the same bytes.
"""

from __future__ import annotations

import email.parser
import errno
import io
import json
import logging
import os
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)

from retreatkit.mirror import pypi, wheelmaker
from retreatkit.mirror.blobs import hash_file
from retreatkit.mirror.errors import LocalError, MirrorError, StoreFull
from retreatkit.mirror.records import Object
from retreatkit.mirror.store import Store

if TYPE_CHECKING:
    from retreatkit.mirror.service import Mirror

log = logging.getLogger("retreatkit.mirror")
MAX_FILE = 2 * 1024**3  # an upload larger than this is refused
MAX_METADATA = 4 * 1024 * 1024
KIND = "local"


class BadFile(MirrorError):
    """A file the local index cannot take: not a distribution, or in conflict with one."""

    status = 400


class Conflict(BadFile):
    status = 409


@dataclass(frozen=True, slots=True)
class LocalFile:
    filename: str
    sha256: str
    size: int
    requires_python: str | None = None
    metadata_sha256: str | None = None
    upload_time: str | None = None


def record_key(project: str) -> str:
    return f"local/pypi/{project}"


def project_of(filename: str) -> tuple[str, str]:
    """(normalized project, version) from a wheel (PEP 427) or sdist (PEP 625) name."""
    try:
        if filename.endswith(".whl"):
            name, version, _, _ = parse_wheel_filename(filename)
        elif filename.endswith((".tar.gz", ".zip")):
            name, version = parse_sdist_filename(filename)
        else:
            raise BadFile(f"{filename}: not a wheel (.whl) or an sdist (.tar.gz)")
    except (InvalidWheelFilename, InvalidSdistFilename) as exc:
        raise BadFile(f"{filename}: {exc}") from None
    if not pypi.valid_filename(filename):
        raise BadFile(f"{filename}: not a plain file name")
    return canonicalize_name(name), str(version)


def core_metadata(path: Path, filename: str) -> bytes | None:
    """The METADATA (wheel) or PKG-INFO (sdist) inside a distribution, if it has one."""
    try:
        if filename.endswith(".whl"):
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if n.count("/") == 1]
                found = [n for n in names if n.endswith(".dist-info/METADATA")]
                if len(found) == 1 and z.getinfo(found[0]).file_size <= MAX_METADATA:
                    return z.read(found[0])
        elif filename.endswith(".tar.gz"):
            with tarfile.open(path, "r:gz") as tar:
                for member in tar:
                    if member.name.count("/") == 1 and member.name.endswith("/PKG-INFO"):
                        handle = tar.extractfile(member)
                        if handle is not None and member.size <= MAX_METADATA:
                            return handle.read()
                        break
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
        raise BadFile(f"{filename}: unreadable ({exc})") from None
    return None


def _fields(metadata: bytes) -> dict[str, str]:
    parsed = email.parser.BytesParser().parse(io.BytesIO(metadata), headersonly=True)
    return {k: str(v) for k, v in parsed.items()}


def load(store: Store, project: str) -> list[LocalFile]:
    obj = store.get(record_key(project))
    if obj is None:
        return []
    return [LocalFile(**item) for item in json.loads(store.read(obj.digest))]


def projects(store: Store) -> list[str]:
    return store.names("local/pypi/")


def add(store: Store, path: Path, filename: str | None = None, replace: bool = False) -> str:
    """Publish one file (blocking: the store thread). Returns a line for the organiser.
    `replace` lets a file of the same name change (the kit's own wheel, rebuilt)."""
    filename = filename or path.name
    project, version = project_of(filename)
    size = path.stat().st_size
    if size > MAX_FILE:
        raise BadFile(f"{filename}: larger than {MAX_FILE} bytes")
    metadata = core_metadata(path, filename)
    if metadata is not None:
        fields = _fields(metadata)
        named = canonicalize_name(fields.get("Name", ""))
        if named != project or fields.get("Version", version) != version:
            raise BadFile(
                f"{filename}: its metadata says {fields.get('Name')} {fields.get('Version')}"
            )
    digest = hash_file(path)
    files = [f for f in load(store, project) if f.filename != filename or f.sha256 == digest]
    clash = next((f for f in load(store, project) if f.filename == filename), None)
    if clash is not None and clash.sha256 == digest:
        return f"{filename}: already in the local index"
    if clash is not None and not replace:
        raise Conflict(f"{filename}: the local index has a different file of that name")
    with path.open("rb") as f:
        blob = store.writer()
        try:
            while chunk := f.read(1 << 20):
                blob.write(chunk)
            if blob.commit({"sha256": digest}) != digest:
                raise BadFile(f"{filename}: changed while it was read")
        except BaseException:
            blob.discard()
            raise
    store.published(digest, size)
    now = time.time()
    objs = [Object(pypi.source_name(digest, filename), digest, size, _type(filename), now)]
    meta_digest = None
    if metadata is not None:
        meta_digest = store.put_bytes(metadata)
        key = pypi.source_name(digest, filename) + ".metadata"
        objs.append(Object(key, meta_digest, len(metadata), "text/plain", now))
    requires = _fields(metadata).get("Requires-Python") if metadata is not None else None
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    files.append(LocalFile(filename, digest, size, requires, meta_digest, stamp))
    record = json.dumps([asdict(f) for f in files], sort_keys=True).encode()
    record_digest = store.put_bytes(record)
    objs.append(Object(record_key(project), record_digest, len(record), "application/json", now))
    store.put(*objs, kind=KIND, pinned=True)
    return f"{filename}: published as {project} {version}"


def _type(filename: str) -> str:
    return "application/zip" if filename.endswith((".whl", ".zip")) else "application/gzip"


def as_project(project: str, files: list[LocalFile]) -> pypi.Project:
    """Local files as a page the mirror serves (URLs under /pypi/files/, like the rest)."""
    return pypi.Project(
        project,
        tuple(
            pypi.File(
                filename=f.filename,
                url=pypi.files_url(f.sha256, f.filename),
                hashes={"sha256": f.sha256},
                requires_python=f.requires_python,
                size=f.size,
                upload_time=f.upload_time,
                core_metadata={"sha256": f.metadata_sha256} if f.metadata_sha256 else None,
            )
            for f in files
        ),
    )


def add_bytes(store: Store, filename: str, data: bytes, replace: bool = False) -> str:
    """`add` for bytes in memory (blocking): through a private file in the store's tmp."""
    tmp = store.tmp / f"local-{os.getpid()}-{threading.get_ident()}.part"
    try:
        try:
            tmp.write_bytes(data)
        except OSError as exc:
            raise _disk_error(store, exc) from None
        return add(store, tmp, filename, replace)
    finally:
        tmp.unlink(missing_ok=True)


def _disk_error(store: Store, exc: OSError) -> LocalError:
    """The store's disk refusing a write, as one line naming the store's folder and the
    cause ("[Errno 28] No space left on device" names neither)."""
    why = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(f"the disk of the store {store.root} is full ({why})")
    return LocalError(f"cannot write in the store {store.root}: {why}")


async def publish_own(mirror: Mirror, say: Callable[[str], None]) -> None:
    """The running kit's wheel in the local index, so attendees install bob from the LAN."""
    try:
        filename, data, _ = await mirror.offload(wheelmaker.own_wheel)
        line = await mirror.store.run(lambda: add_bytes(mirror.store, filename, data, replace=True))
    except (MirrorError, OSError) as exc:
        log.warning("cannot serve this retreatkit to attendees: %s", exc)
        return
    mirror.kit.served = True
    say(f"Mirror local index: {line}")
    verdict = await mirror.kit.verdict()
    if verdict.missing:  # the organiser hears it at the start, and on /status until it is done
        say(f"Mirror: {mirror.kit.line(verdict)}")
