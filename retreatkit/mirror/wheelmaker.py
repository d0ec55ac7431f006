"""Wheels made from what is installed: the running kit's own, for attendees to install bob.

A wheel (the binary distribution format spec) is a zip of the package's files plus a
`.dist-info` folder with METADATA, WHEEL and RECORD (every file's sha256). The kit's own
is made from the package folder that is running (an editable install included) and the
metadata it was installed with, so attendees get exactly this version. The same bytes
come out for the same files: fixed times, sorted names, so a restart republishes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

import retreatkit

_TIME = (1980, 1, 1, 0, 0, 0)  # zip's earliest: a wheel made twice is the same bytes


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build(
    name: str, version: str, files: Iterable[tuple[str, bytes]], dist_info: dict[str, bytes],
    tags: tuple[str, ...] = ("py3-none-any",), compression: int = zipfile.ZIP_DEFLATED,
) -> tuple[str, bytes]:  # fmt: skip
    """A wheel of these files and `.dist-info` entries: (file name, bytes)."""
    stem = f"{re.sub(r'[-_.]+', '_', name)}-{version}"  # the escaping the wheel spec asks
    folder = f"{stem}.dist-info"
    wheel = "Wheel-Version: 1.0\nGenerator: retreatkit\nRoot-Is-Purelib: "
    wheel += ("true" if tags == ("py3-none-any",) else "false") + "\n"
    wheel += "".join(f"Tag: {tag}\n" for tag in tags)
    entries = sorted(files) + sorted(
        (f"{folder}/{k}", v) for k, v in {**dist_info, "WHEEL": wheel.encode()}.items()
    )
    record = [f"{path},{_record_hash(data)},{len(data)}" for path, data in entries]
    record.append(f"{folder}/RECORD,,")
    entries.append((f"{folder}/RECORD", ("\n".join(record) + "\n").encode()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for path, data in entries:
            info = zipfile.ZipInfo(path, _TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = compression
            z.writestr(info, data)
    platform = ".".join(sorted({t.split("-", 2)[2] for t in tags}))
    pythons = ".".join(sorted({t.split("-", 2)[0] for t in tags}))
    abis = ".".join(sorted({t.split("-", 2)[1] for t in tags}))
    return f"{stem}-{pythons}-{abis}-{platform}.whl", buf.getvalue()


def own_wheel() -> tuple[str, bytes, bytes]:
    """The running kit as a wheel: (file name, wheel bytes, METADATA bytes)."""
    root = Path(retreatkit.__file__).parent
    import importlib.metadata  # when the wheel is asked for, not while the mirror starts

    dist = importlib.metadata.distribution("retreatkit")
    metadata = (dist.read_text("METADATA") or "").encode()
    entry_points = (dist.read_text("entry_points.txt") or "").encode()
    files = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files.append((f"retreatkit/{path.relative_to(root).as_posix()}", path.read_bytes()))
    info = {"METADATA": metadata}
    if entry_points:
        info["entry_points.txt"] = entry_points
    filename, data = build("retreatkit", dist.version, files, info)
    return filename, data, metadata
