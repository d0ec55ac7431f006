"""Upstream defaults, taken from the clients' own configuration on this machine."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
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
