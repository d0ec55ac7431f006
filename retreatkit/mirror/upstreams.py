"""Upstream defaults, taken from the clients' own configuration on this machine."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

_TIMEOUT = 10


def pip_config_files() -> list[Path]:
    """pip's configuration files, lowest priority first (as pip reads them)."""
    files = [Path("/etc/xdg/pip/pip.conf"), Path("/etc/pip.conf")]
    home = Path.home()
    files += [home / ".pip" / "pip.conf"]
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(home / ".config")
    files += [Path(xdg) / "pip" / "pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    return files


def pypi_from_pip_config() -> str | None:
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"].split()[0]
    found = None
    for path in pip_config_files():
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        for section in ("global", "install"):
            value = parser.get(section, "index-url", fallback=None)
            if value and value.split():
                found = value.split()[0]
    return found


def pypi_from_pip_itself() -> str | None:
    """pip's built-in default, asked of an installed pip rather than written here."""
    code = "from pip._internal.models.index import PyPI; print(PyPI.simple_url)"
    for python in dict.fromkeys([sys.executable, shutil.which("python3") or ""]):
        if not python:
            continue
        try:
            out = subprocess.run(
                [python, "-c", code], capture_output=True, text=True, timeout=_TIMEOUT
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        url = out.stdout.strip()
        if out.returncode == 0 and url.startswith(("http://", "https://")):
            return url
    return None


def default_pypi() -> str | None:
    return pypi_from_pip_config() or pypi_from_pip_itself()


_OPAMRC_REPO = re.compile(r'repositories:\s*"[^"]*"\s*\{\s*"([^"]+)"')


def default_opam() -> str | None:
    """The opam repository opam itself would use: opamrc, else opam's built-in default."""
    for path in (Path.home() / ".opamrc", Path("/etc/opamrc")):
        try:
            match = _OPAMRC_REPO.search(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
        if match:
            return match[1]
    opam = shutil.which("opam")
    if opam is None:
        return None
    try:
        out = subprocess.run(
            [opam, "init", "--show-default-opamrc"],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _OPAMRC_REPO.search(out.stdout)
    return match[1] if match else None


def npm_from_npmrc() -> str | None:
    """`registry=` in the user's or the system's npmrc (npm's own order: user first)."""
    files = [Path.home() / ".npmrc", Path("/etc/npmrc"), Path("/usr/etc/npmrc")]
    if os.environ.get("NPM_CONFIG_USERCONFIG"):
        files.insert(0, Path(os.environ["NPM_CONFIG_USERCONFIG"]))
    for path in files:
        try:
            lines = path.read_text("utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for line in lines:
            key, eq, value = line.partition("=")
            if eq and key.strip() == "registry" and value.strip().startswith("http"):
                return value.strip()
    return None


def default_npm() -> str | None:
    """The registry npm on this machine uses: its configuration, else npm's built-in one."""
    found = os.environ.get("NPM_CONFIG_REGISTRY") or npm_from_npmrc()
    if found:
        return found
    npm = shutil.which("npm")
    if npm is None:
        return None
    try:
        out = subprocess.run(
            [npm, "config", "get", "registry"], capture_output=True, text=True, timeout=_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    url = out.stdout.strip()
    return url if out.returncode == 0 and url.startswith(("http://", "https://")) else None


def _source_lines(root: Path) -> Iterator[tuple[bool, str]]:
    """Each line of this machine's apt sources, in the order apt reads them, without its
    comment: (whether its file is deb822, the line). Files that cannot be read are passed by."""
    files = [root / "sources.list", *sorted((root / "sources.list.d").glob("*.list"))]
    files += sorted((root / "sources.list.d").glob("*.sources"))
    for path in files:
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for line in text.splitlines():
            yield path.suffix == ".sources", line.split("#", 1)[0]


def apt_sources(root: Path = Path("/etc/apt")) -> list[str]:
    """The archive URLs this machine's apt uses: one-line `deb` entries and deb822
    `URIs:` fields, in the order apt reads them."""
    urls: list[str] = []
    for deb822, line in _source_lines(root):
        words = re.sub(r"\[[^]]*\]", " ", line).split()
        if deb822 and words[:1] == ["URIs:"]:
            urls += words[1:]
        elif words[:1] == ["deb"] and len(words) >= 2:
            urls.append(words[1])
    return list(dict.fromkeys(u.rstrip("/") for u in urls if u.startswith(("http://", "https://"))))


_SIGNED_BY = re.compile(r"signed-by=([^\s\]]+)", re.IGNORECASE)


def apt_keyrings(root: Path = Path("/etc/apt")) -> list[Path]:
    """The keyring files this machine's apt trusts: `trusted.gpg`, `trusted.gpg.d/`, and
    those its sources name (`[signed-by=FILE]`, deb822 `Signed-By: FILE`; a fingerprint
    or a key written inline there is passed by)."""
    files = [root / "trusted.gpg", *sorted((root / "trusted.gpg.d").glob("*.gpg"))]
    files += sorted((root / "trusted.gpg.d").glob("*.asc"))
    for deb822, line in _source_lines(root):
        if deb822:
            name, _, value = line.partition(":")
            named = value.split() if name.strip().lower() == "signed-by" else []
        else:
            named = [v for m in _SIGNED_BY.findall(line) for v in m.split(",")]
        files += [Path(v) for v in named if v.startswith("/")]
    return [f for f in dict.fromkeys(files) if f.is_file()]


def default_apt(root: Path = Path("/etc/apt")) -> dict[str, str]:
    """Origins named after their URLs' last path segment (`debian`, `debian-security`,
    `ubuntu`); a second origin with the same segment is told apart by its host."""
    named: dict[str, str] = {}
    for url in apt_sources(root):
        parts = url.split("://", 1)[1].split("/")
        host, last = parts[0].split(":")[0], parts[-1] if len(parts) > 1 else ""
        name = re.sub(r"[^a-z0-9._-]", "-", (last or host.split(".")[0]).lower()).strip("-.")
        if name in named:
            name = f"{host.split('.')[0].lower()}-{name}"
        if name and name not in named and name not in ("pypi", "opam", "npm", "lists"):
            named[name] = url
    return named


def dpkg_arch() -> str:
    """This machine's Debian architecture: what its apt asks for (besides `all`)."""
    try:
        done = subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, timeout=_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired):
        return "amd64"
    return done.stdout.strip() or "amd64"
