"""Test tools for the mirror: build wheels, a PEP 503 index and an opam repository on disk."""

from __future__ import annotations

import base64
import hashlib
import io
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from retreatkit.testing import Process


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(
    name: str, version: str, requires: tuple[str, ...] = (), pad: int = 0
) -> tuple[str, bytes, bytes]:
    """A small pure-Python wheel: (filename, wheel bytes, METADATA bytes)."""
    module = name.replace("-", "_")
    dist = f"{module}-{version}.dist-info"
    metadata = (
        "\n".join(
            ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
            + [f"Requires-Dist: {r}" for r in requires]
        ).encode()
        + b"\n"
    )
    files = {
        f"{module}/__init__.py": f"VERSION = {version!r}\nPAD = {'x' * pad!r}\n".encode(),
        f"{dist}/METADATA": metadata,
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: retreatkit-tests\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in files.items():
            z.writestr(zipfile.ZipInfo(path, (2020, 1, 1, 0, 0, 0)), data)
    return f"{module}-{version}-py3-none-any.whl", buf.getvalue(), metadata


def write_pypi(root: Path, wheels: dict[str, list[tuple[str, bytes, bytes]]]) -> None:
    """`root/simple/<name>/index.html` (PEP 503 with PEP 658 metadata) and `root/files/...`."""
    (root / "files").mkdir(parents=True, exist_ok=True)
    names = []
    for name, items in wheels.items():
        names.append(name)
        links = []
        for filename, data, metadata in items:
            (root / "files" / filename).write_bytes(data)
            (root / "files" / (filename + ".metadata")).write_bytes(metadata)
            links.append(
                f'<a href="../../files/{filename}#sha256={sha256(data)}" '
                f'data-requires-python="&gt;=3.8" '
                f'data-dist-info-metadata="sha256={sha256(metadata)}">{filename}</a><br/>'
            )
        page = root / "simple" / name
        page.mkdir(parents=True, exist_ok=True)
        (page / "index.html").write_text(
            f"<!DOCTYPE html><html><body><h1>{name}</h1>\n"
            + "\n".join(links)
            + "\n</body></html>\n"
        )
    (root / "simple" / "index.html").write_text(
        "<!DOCTYPE html><html><body>"
        + "".join(f'<a href="{n}/">{n}</a>' for n in names)
        + "</body></html>\n"
    )


def make_source_tarball(name: str, version: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, text in (
            ("README", f"{name} {version}\n"),
            ("dune-project", "(lang dune 2.0)\n"),
        ):
            data = text.encode()
            info = tarfile.TarInfo(f"{name}-{version}/{path}")
            info.size = len(data)
            info.mtime = 1577836800
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_opam(root: Path, base_url: str, packages: dict[str, bytes]) -> None:
    """An opam repository in `root` (repo, packages/, index.tar.gz) whose archives sit
    in `root/archives/` and are named by `base_url`."""
    (root / "archives").mkdir(parents=True, exist_ok=True)
    (root / "repo").write_text('opam-version: "2.0"\n')
    for full, archive in packages.items():
        name, _, version = full.partition(".")
        filename = f"{name}-{version}.tar.gz"
        (root / "archives" / filename).write_bytes(archive)
        folder = root / "packages" / name / full
        folder.mkdir(parents=True, exist_ok=True)
        md5 = hashlib.md5(archive).hexdigest()  # noqa: S324 - opam checksums include md5
        (folder / "opam").write_text(
            'opam-version: "2.0"\n'
            f'synopsis: "test package {name}"\n'
            'maintainer: "nobody@example.invalid"\n'
            "url {\n"
            f'  src: "{base_url}archives/{filename}"\n'
            f'  checksum: [\n    "md5={md5}"\n    "sha256={sha256(archive)}"\n  ]\n'
            "}\n"
        )
    subprocess.run(
        ["opam", "admin", "index", "--minimal-urls-txt"],
        cwd=root,
        check=True,
        capture_output=True,
        env={"HOME": str(root), "PATH": "/usr/bin:/bin", "OPAMYES": "1"},
    )


@dataclass
class Server:
    process: Process
    url: str

    def stop(self) -> int:
        return self.process.stop()


def start_upstream(root: Path) -> Server:
    proc = Process.start([sys.executable, "-m", "retreatkit.mirror.fakeupstream", str(root)])
    url = proc.wait_for(r"^Upstream listening on (\S+)$")[1]
    return Server(proc, url)


def start_mirror(
    store: Path, pypi: str | None = None, opam: str | None = None, ttl: float = 600.0
) -> tuple[Server, str]:
    """A real `retreatkit mirror` process; returns it (url = the mirror) and its admin URL."""
    config = store.parent / f"{store.name}.toml"
    config.write_text(
        f'[mirror]\nindex_ttl = {ttl}\nread_timeout = 2.0\n[admin]\nlisten = "127.0.0.1:0"\n'
    )
    argv = [
        sys.executable, "-m", "retreatkit.cli.main", "--config", str(config),
        "mirror", "--listen", "127.0.0.1:0", "--store", str(store),
        "--pypi", pypi or "http://127.0.0.1:9/none/", "--opam", opam or "http://127.0.0.1:9/none/",
    ]  # fmt: skip
    proc = Process.start(argv)
    url = proc.wait_for(r"^Mirror listening on (\S+) ")[1]
    admin = proc.wait_for(r"^Admin on (http://\S+)/status$")[1]
    return Server(proc, url), admin
