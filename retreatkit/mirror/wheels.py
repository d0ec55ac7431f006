"""Which platforms and Pythons a set of distribution files serves, from their names (pure).

A wheel's name ends in `-{python tag}-{abi tag}-{platform tag}.whl` (the binary
distribution format spec); tags may be compressed sets joined by dots.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_ARCH = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "i686": "x86",
    "win32": "x86",
    "armv7l": "armv7",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "universal2": "universal",
    "intel": "x86_64",
}
_CPYTHON = re.compile(r"cp(\d)(\d+)$")
_PYPY = re.compile(r"pp(\d)(\d+)$")


def platform_name(tag: str) -> str:
    """`manylinux_2_17_x86_64` -> `Linux x86_64`, `macosx_11_0_arm64` -> `macOS arm64`."""
    if tag == "any":
        return "any platform (pure Python)"
    arch = next((name for key, name in _ARCH.items() if tag.endswith(key)), None)
    if tag.startswith(("manylinux", "musllinux", "linux")):
        return f"Linux {arch or tag.rsplit('_', 1)[-1]}"
    if tag.startswith("macosx"):
        return f"macOS {arch or tag.rsplit('_', 1)[-1]}"
    if tag.startswith("win"):
        return f"Windows {arch or tag.removeprefix('win_')}"
    return tag


def python_name(tag: str) -> str | None:
    match = _CPYTHON.match(tag)
    if match:
        return f"CPython {match[1]}.{match[2]}"
    match = _PYPY.match(tag)
    if match:
        return f"PyPy {match[1]}.{match[2]}"
    return None  # py3, py2.py3: any Python


def summary(filenames: Iterable[str]) -> tuple[list[str], list[str], int]:
    """(platforms, Pythons, source distributions) among these file names, sorted."""
    platforms: set[str] = set()
    pythons: set[str] = set()
    sources = 0
    for name in filenames:
        if not name.endswith(".whl"):
            if name.endswith((".tar.gz", ".zip", ".tar.bz2", ".tar.xz")):
                sources += 1
            continue
        parts = name[:-4].split("-")
        if len(parts) < 5:
            continue
        for tag in parts[-1].split("."):
            platforms.add(platform_name(tag))
        for tag in parts[-3].split("."):
            found = python_name(tag)
            if found:
                pythons.add(found)
    ordered = sorted(platforms, key=lambda p: (p.startswith("any "), p.lower()))
    return ordered, sorted(pythons, key=_version_order), sources


def _version_order(name: str) -> tuple[str, int, int]:
    kind, _, version = name.partition(" ")
    major, _, minor = version.partition(".")
    return kind, int(major), int(minor)
