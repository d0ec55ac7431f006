"""Test tools for the mirror: upstreams, the mirror in process or as a process, namespaces.

Wheels, PyPI and opam upstreams on disk; the mirror behind aiohttp's test client or as a
real `retreatkit mirror`; network namespaces for clients off loopback.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.metadata
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from retreatkit.mirror import resolver, wheelmaker
from retreatkit.mirror.app import make_app
from retreatkit.mirror.service import Mirror, Settings
from retreatkit.mirror.testrepos import source_tarball
from retreatkit.mirror.uplink import Limits
from retreatkit.testing import Process


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def flip_a_byte(path: Path) -> None:
    """One byte changed in place, as a faulty disk or a stray write would. The kernel's
    file clock ticks coarsely, so a write in the tick of the store's own leaves the same
    mtime: it is moved on, as any later write's is."""
    before = path.stat()
    with path.open("r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    after = path.stat()
    if after.st_mtime_ns == before.st_mtime_ns:
        os.utime(path, ns=(after.st_atime_ns, after.st_mtime_ns + 1_000_000))


def pip_download(
    index: str, package: str, dest: Path, home: Path, lan: Netns | None = None
) -> subprocess.CompletedProcess[str]:
    """Real pip fetching `package` alone from the simple index at `index`, with none of the
    caller's PIP_* settings and its own HOME (no cache, no config); with `lan`, from inside
    the attendees' namespace, trusting the mirror's address there as attendees are told."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    argv = [sys.executable, "-m", "pip", "--disable-pip-version-check", "download", "--no-deps",
            "--no-cache-dir", "--index-url", index, "-d", str(dest), package]  # fmt: skip
    if lan is not None:
        argv = lan.argv([*argv, "--trusted-host", lan.host])
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env={**env, "HOME": str(home)}
    )


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


BACKEND = """\
\"\"\"A PEP 517 build backend for tests: a wheel of the sdist's one package.\"\"\"
import base64, email, hashlib, os, zipfile


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    with open("PKG-INFO") as f:
        text = f.read()
    info = email.message_from_string(text)
    module = info["Name"].replace("-", "_")
    dist = module + "-" + info["Version"] + ".dist-info"
    wheel = b"Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    with open(module + "/__init__.py", "rb") as f:
        files = {module + "/__init__.py": f.read(), dist + "/METADATA": text.encode(),
                 dist + "/WHEEL": wheel}
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(path + ",sha256=" + digest + "," + str(len(data)))
    files[dist + "/RECORD"] = ("\\n".join(record + [dist + "/RECORD,,"]) + "\\n").encode()
    name = module + "-" + info["Version"] + "-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return name
"""


def make_backend(name: str = "demo-backend", version: str = "1.0",
                 requires: tuple[str, ...] = ()) -> tuple[str, bytes, bytes]:  # fmt: skip
    """A wheel of a PEP 517 build backend (module `demo_backend`) that builds the sdists
    `make_sdist` makes: (filename, wheel bytes, METADATA bytes)."""
    metadata = "\n".join(
        ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
        + [f"Requires-Dist: {r}" for r in requires]
    ).encode() + b"\n"  # fmt: skip
    filename, data = wheelmaker.build(
        name, version, [("demo_backend.py", BACKEND.encode())], {"METADATA": metadata}
    )
    return filename, data, metadata


def make_sdist(
    name: str, version: str, build_requires: tuple[str, ...] | None = ("demo-backend",)
) -> tuple[str, bytes, bytes]:
    """An sdist built by `build_requires` through `make_backend`'s backend, or with no
    pyproject.toml at all (None: setuptools' legacy build, as pip and uv take it):
    (filename, bytes, PKG-INFO)."""
    module = name.replace("-", "_")
    pkg_info = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    files = {"PKG-INFO": pkg_info, f"{module}/__init__.py": f"VERSION = {version!r}\n".encode()}
    if build_requires is not None:
        listed = ", ".join(json.dumps(r) for r in build_requires)
        files["pyproject.toml"] = (
            f'[build-system]\nrequires = [{listed}]\nbuild-backend = "demo_backend"\n'
        ).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(f"{module}-{version}/{path}")
            info.size, info.mtime = len(data), 1577836800
            tar.addfile(info, io.BytesIO(data))
    return f"{module}-{version}.tar.gz", buf.getvalue(), pkg_info


def write_pypi(
    root: Path, wheels: dict[str, list[tuple[str, bytes, bytes]]], as_json: bool = False
) -> None:
    """`root/simple/<name>/index.html` (PEP 503 with PEP 658 metadata) and `root/files/...`;
    with `as_json`, an `index.json` (PEP 691 and 700: sizes) beside each page too."""
    (root / "files").mkdir(parents=True, exist_ok=True)
    names = []
    for name, items in wheels.items():
        names.append(name)
        links = []
        entries = []
        for filename, data, metadata in items:
            entries.append(
                {
                    "filename": filename,
                    "url": f"../../files/{filename}",
                    "hashes": {"sha256": sha256(data)},
                    "requires-python": ">=3.8",
                    "size": len(data),
                    "core-metadata": {"sha256": sha256(metadata)},
                }
            )
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
        if as_json:
            doc = {"meta": {"api-version": "1.1"}, "name": name, "files": entries}
            (page / "index.json").write_text(json.dumps(doc))
    (root / "simple" / "index.html").write_text(
        "<!DOCTYPE html><html><body>"
        + "".join(f'<a href="{n}/">{n}</a>' for n in names)
        + "</body></html>\n"
    )


def make_source_tarball(name: str, version: str) -> bytes:
    files = {"README": f"{name} {version}\n", "dune-project": "(lang dune 2.0)\n"}
    return source_tarball(f"{name}-{version}", files, "w:gz", 1577836800)


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


def start_upstream(
    root: Path,
    port: int | None = None,
    host: str = "127.0.0.1",
    wrap: Callable[[list[str]], list[str]] = lambda argv: argv,
) -> Server:
    """The test's upstream serving `root`, on `port` (one a stopped upstream had) or any,
    at `host`; `wrap` puts a command in front of it (a network namespace's)."""
    argv = [sys.executable, "-m", "retreatkit.mirror.fakeupstream", str(root), "--host", host]
    proc = Process.start(wrap(argv if port is None else [*argv, "--port", str(port)]))
    try:
        url = proc.wait_for(r"^Upstream listening on (\S+)$")[1]
    except BaseException:
        proc.stop()
        raise
    return Server(proc, url)


def start_mirror(
    store: Path,
    pypi: str | None = None,
    opam: str | None = None,
    ttl: float = 600.0,
    listen: str = "127.0.0.1:0",
    extra: str = "",
    wrap: Callable[[list[str]], list[str]] = lambda argv: argv,
    npm: str | None = None,
    apt: dict[str, str] | None = None,
    flags: tuple[str, ...] = (),
    keep_free: int = 0,
    read_timeout: float = 2.0,
) -> tuple[Server, str]:
    """A real `retreatkit mirror` process; returns it (url = the mirror) and its admin URL.
    `extra` adds lines to its [mirror] section; `wrap` puts a command in front of it."""
    config = store.parent / f"{store.name}.toml"
    config.write_text(
        f"[mirror]\nindex_ttl = {ttl}\nread_timeout = {read_timeout}\n"
        f"keep_free_bytes = {keep_free}\n{extra}\n"
        '[admin]\nlisten = "127.0.0.1:0"\n'
    )
    argv = [
        sys.executable, "-m", "retreatkit.cli.main", "--config", str(config),
        "mirror", "--listen", listen, "--store", str(store),
        "--pypi", pypi or "http://127.0.0.1:9/none/", "--opam", opam or "http://127.0.0.1:9/none/",
        "--npm", npm or "http://127.0.0.1:9/none/", *flags,
    ]  # fmt: skip
    for name, url in (apt or {}).items():
        argv += ["--apt", f"{name}={url}"]
    home = store.parent / f"{store.name}-home"
    env = {"HOME": str(home), "XDG_STATE_HOME": str(home / "state")}
    proc = Process.start(wrap(argv), env=env)
    try:
        url = proc.wait_for(r"^Mirror listening on (\S+) ")[1]
        admin = proc.wait_for(r"^Admin on (http://\S+)/status$")[1]
    except BaseException:
        proc.stop()
        raise
    return Server(proc, url), admin


def said(server: Server, pattern: str) -> re.Match[str]:
    """A line the process printed, or prints next: lines read while waiting for another
    (the store check can end before the admin endpoint is up) count too."""
    for line in server.process.seen:
        match = re.search(pattern, line)
        if match:
            return match
    return server.process.wait_for(pattern)


# -- the mirror in process ------------------------------------------------------------------


def settings(store: Path, pypi: str | None = None, **changes: Any) -> Settings:
    """Settings for a test: no disk reserve, short timeouts (a test upstream answers at once
    or never)."""
    limits = changes.pop("limits", Limits(connect_timeout=2.0, headers_timeout=2.0))
    changes.setdefault("keep_free", 0)
    return Settings(store=store, pypi=pypi, opam=None, limits=limits, **changes)


@contextlib.asynccontextmanager
async def mirror_client(
    config: Settings, **mirror_kw: Any
) -> AsyncIterator[tuple[TestClient[Any, Any], Mirror]]:
    """The mirror's app behind aiohttp's test client, on 127.0.0.1 port 0, in this loop."""
    async with resolver.session() as session:
        mirror = Mirror(config, session, **mirror_kw)
        mirror.start()
        try:
            async with TestClient(TestServer(make_app(mirror))) as client:
                yield client, mirror
        finally:
            await mirror.close()


class Clock:
    """A monotonic clock a test moves by hand: `mirror.fetcher.clock = Clock()`, then
    `clock.now += 300` (what the mirror remembers for a while: bad files, down upstreams)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- network namespaces: an attendee's machine, off loopback ---------------------------------


@dataclass
class Netns:
    """A network namespace joined to this machine by a veth pair on a random /30 of
    100.64.0.0/10 (RFC 6598), so `host` is an address of this machine that is not
    loopback, and programs run with `argv` live on the other end, at `address`."""

    name: str
    host: str
    address: str
    link: str

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def netns(tag: str, prefix: str = "rkmir") -> Iterator[Netns]:
    """Made for one test, removed after it, whatever happens (needs root and iproute2)."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        raise RuntimeError("network namespaces need root and iproute2")
    name = f"{prefix}-{os.getpid()}-{tag}"
    digits = 13 - len(prefix)  # interface names: at most 15 characters, with tag and side
    link = f"{prefix}{os.getpid() % 10**digits}{tag[:1]}"
    pick = secrets.randbelow  # not for secrecy: only so two runs rarely pick the same subnet
    a, b, c = 64 + pick(64), pick(256), 4 * pick(64)
    host, address = f"100.{a}.{b}.{c + 1}", f"100.{a}.{b}.{c + 2}"
    made = Netns(name, host, address, link)
    try:
        _ip("netns", "add", name)
        _ip("link", "add", link + "h", "type", "veth", "peer", "name", link + "n")
        _ip("link", "set", link + "n", "netns", name)
        _ip("addr", "add", f"{host}/30", "dev", link + "h")
        _ip("link", "set", link + "h", "up")
        _ip("-n", name, "addr", "add", f"{address}/30", "dev", link + "n")
        _ip("-n", name, "link", "set", link + "n", "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield made
    finally:
        subprocess.run(["ip", "link", "del", link + "h"], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def wheel_from_installed(name: str) -> tuple[str, bytes, bytes]:
    """An installed distribution packed back into a wheel with its own tags (from its
    WHEEL file), stored uncompressed (quick): (file name, bytes, METADATA). For an index
    of the kit's dependencies with no network at all."""
    dist = importlib.metadata.distribution(name)
    info = dist.read_text("WHEEL") or ""
    tags = tuple(
        line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("Tag:")
    )
    files = []
    for f in dist.files or []:
        path = str(f)
        if path.startswith("..") or "__pycache__" in path or ".dist-info/" in path:
            continue
        files.append((path, Path(str(dist.locate_file(f))).read_bytes()))
    metadata = (dist.read_text("METADATA") or "").encode()
    extra = {"METADATA": metadata}
    for kept in ("entry_points.txt", "top_level.txt"):
        text = dist.read_text(kept)
        if text:
            extra[kept] = text.encode()
    filename, data = wheelmaker.build(
        dist.metadata["Name"], dist.version, files, extra, tags or ("py3-none-any",),
        compression=zipfile.ZIP_STORED,
    )  # fmt: skip
    return filename, data, metadata
