"""What an image was built from, kept beside it (`inputs.json`), so `up` reuses an image
whose inputs have not changed instead of building it again at every start.

The build is reproducible (build.py): the same inputs give the same bytes, so an image
whose recorded inputs are what a build would take now is the image that build would make.
The inputs, each as it would be taken now:

- the kit: its version and every file of the package (code, kernel.config);
- the Python distributions the probe imports from (name, version, and their RECORD, which
  lists each installed file's hash) and the host interpreter, which compresses the
  initramfs;
- the Debian packages the image took (the interpreter, the libraries, the CA
  certificates): apt's candidate version of each, which a build would fetch;
- the kernel (its kind, label and bytes: ours, or Debian's, as `[images] kernel` picks);
- SQLite, where the image ships it: ours (its bytes) when built for apt's version of
  libsqlite3-0, else Debian's (sqlitelib.py);
- the tools whose output lands in the image: strip (extension modules), openssl (the
  CA folder's names), gcc and ld (the relinked interpreter; without them the image takes
  Debian's, so their coming or going changes the image too).

`image build` takes no configuration into the image (a guest's settings come on its
configuration disk at each boot), so none is among them. The record is written last, once
the image is whole, and removed first when a build starts: a build cut short leaves none.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import retreatkit
from retreatkit import version
from retreatkit.image import build, debs, kernel, payload, relink, sqlitelib

INPUTS = "inputs.json"
TOOLS = ("strip", "openssl", *relink.TOOLS)
UNTAKEN = ("__pycache__",)  # a folder of the kit's that no image is built from


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def kit_files() -> str:
    """One hash over every file of the kit's package, by path: what the probe runs and
    what the image carries compiled."""
    top = Path(retreatkit.__file__).resolve().parent
    digest = hashlib.sha256()
    for folder, subfolders, files in os.walk(top):
        subfolders[:] = sorted(d for d in subfolders if d not in UNTAKEN)
        for name in sorted(files):
            path = Path(folder) / name
            digest.update(f"{path.relative_to(top)}\0{_sha256_file(path)}\n".encode())
    return digest.hexdigest()


def distributions() -> str:
    """One hash over the Python distributions where the probe finds modules."""
    roots = [str(r) for r in payload.site_roots()]
    found = []
    for dist in importlib.metadata.distributions(path=roots):
        record = dist.read_text("RECORD") or ""
        name = dist.metadata["Name"] or ""
        found.append(f"{name}\0{dist.version}\0{hashlib.sha256(record.encode()).hexdigest()}")
    return hashlib.sha256("\n".join(sorted(found)).encode()).hexdigest()


def tools() -> dict[str, str]:
    """Each tool's program file, hashed ("" when it is not installed: the build says so)."""
    out = {}
    for tool in TOOLS:
        path = shutil.which(tool)
        out[tool] = _sha256_file(Path(path).resolve()) if path else ""
    return out


def common() -> dict[str, Any]:
    """The inputs every image shares, taken as a build starts: the kit, Python, tools."""
    return {
        "kit": {"version": version.number(), "files": kit_files()},
        "python": {"host": sys.version, "distributions": distributions()},
        "tools": tools(),
    }


def of_build(service: str, shared: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """What the image `manifest` describes was built from, `shared` taken as it started."""
    kern = manifest["kernel"]
    return {
        "service": service,
        **shared,
        "kernel": {"kind": kern["kind"], "label": kern["label"], "sha256": kern["sha256"]},
        "packages": {name: version for name, version, _ in manifest["packages"]},
        "sqlite": manifest.get("sqlite"),
    }


def record(out: Path, inputs: dict[str, Any], seconds: float) -> None:
    """`inputs.json` beside the image `out` whose build took `seconds`, written whole."""
    doc = {
        **inputs,
        "manifest_sha256": _sha256_file(out / build.MANIFEST),
        "built_at": time.time(),
        "seconds": round(seconds, 1),
    }
    partial = out / f"{INPUTS}.partial"
    partial.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    partial.replace(out / INPUTS)


def forget(out: Path) -> None:
    """A build begins: the folder's record goes first, so one cut short leaves none."""
    (out / INPUTS).unlink(missing_ok=True)


@dataclass(frozen=True)
class Prior:
    """What a folder holds of an earlier build of its image."""

    reusable: bool  # whole, and built from the inputs a build would take now
    built_at: float | None  # seconds since the epoch, when it was built
    seconds: float | None  # how long that build took: what the next one may take


NONE = Prior(False, None, None)
READ = (OSError, ValueError, RecursionError, KeyError, TypeError)


def _recorded(folder: Path) -> dict[str, Any] | None:
    with contextlib.suppress(*READ):
        doc = json.loads((folder / INPUTS).read_text())
        if isinstance(doc, dict):
            return doc
    return None


def _whole(folder: Path, doc: dict[str, Any], service: str) -> bool:
    """The image is the one the record was written for, and none of its files changed."""
    try:
        manifest = build.load_manifest(folder)
        if manifest["service"] != service:
            return False
        if _sha256_file(folder / build.MANIFEST) != doc["manifest_sha256"]:
            return False
        return all(
            _sha256_file(folder / part) == manifest[part].get("sha256")
            for part in ("kernel", "initramfs")
        )
    except READ:
        return False


def _now(which_kernel: str, names: list[str]) -> tuple[dict[str, Any], dict[str, str]] | None:
    """The inputs a build would take now, but the service and packages, and apt's version
    of each package named; None when that cannot be known (no kernel, no apt: it builds,
    and the build says why)."""
    try:
        kern = kernel.choose(which_kernel)
        versions = debs.chosen_versions(names)
        taken = {
            **common(),
            "kernel": {"kind": kern.kind, "label": kern.label, "sha256": _sha256_file(kern.image)},
        }
    except (*READ, debs.PackageError, kernel.KernelError):
        return None
    return taken, versions


def priors(images: list[tuple[Path, str]], which_kernel: str) -> dict[Path, Prior]:
    """For each (image folder, service): what an earlier build left there, and whether it
    can be used as it is. One apt query for all (apt-cache takes a second or two)."""
    found = {folder: doc for folder, _ in images if (doc := _recorded(folder)) is not None}
    names = sorted(
        {n for doc in found.values() if isinstance(doc.get("packages"), dict)
         for n in doc["packages"]}
    )  # fmt: skip
    now = _now(which_kernel, names) if found else None
    out = {}
    for folder, service in images:
        doc = found.get(folder)
        if doc is None:
            out[folder] = NONE
            continue
        reusable = False
        if now is not None and isinstance(doc.get("packages"), dict):
            taken, versions = now
            wanted = {
                "service": service,
                **taken,
                "packages": {n: versions.get(n) for n in doc["packages"]},
                "sqlite": (
                    sqlitelib.expected(versions.get(sqlitelib.BINARY))
                    if sqlitelib.BINARY in doc["packages"]
                    else None
                ),
            }
            reusable = all(doc.get(k) == v for k, v in wanted.items())
            reusable = reusable and _whole(folder, doc, service)
        built_at, seconds = doc.get("built_at"), doc.get("seconds")
        out[folder] = Prior(
            reusable,
            float(built_at) if isinstance(built_at, int | float) else None,
            float(seconds) if isinstance(seconds, int | float) else None,
        )
    return out
