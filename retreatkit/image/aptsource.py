"""A Debian source package of one exact version, fetched by apt and unpacked by dpkg-source.

The archives are the ones this system's apt already uses for binary packages: their
`deb` entries, read from apt's own configuration, become `deb-src` entries in a private
apt state (its own sources, lists and cache), so nothing of the system's apt changes and
no archive's address is written into the kit. apt checks the signed Release file and the
hash of every file it fetches against the Sources index that file vouches for; dpkg-source
then checks each file against the .dsc and applies Debian's patches (debian/patches).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

from retreatkit.image.debs import PackageError

# file names apt reads from its parts folder (apt.conf(5): run-parts style names)
PART = re.compile(r"^[A-Za-z0-9_.-]+\.(list|sources)$")


def deb822_to_src(text: str) -> str:
    """deb822 stanzas (sources.list(5)) of binary archives, as stanzas of their sources:
    each enabled stanza whose Types holds `deb` with Types `deb-src`; the rest left out."""
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        lines = [line for line in stanza.splitlines() if not line.lstrip().startswith("#")]
        fields = {
            key.strip().lower(): value.strip()
            for line in lines
            if not line[:1].isspace() and ":" in line
            for key, _, value in [line.partition(":")]
        }
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        kept = [
            "Types: deb-src" if line.lower().startswith("types:") else line
            for line in lines
            if line.strip()
        ]
        out.append("\n".join(kept))
    return "".join(f"{stanza}\n\n" for stanza in out)


def one_line_to_src(text: str) -> str:
    """One-line entries (`deb [options] URI suite components`) as `deb-src` entries; the
    system's own `deb-src` lines are left out, as every archive's comes from its `deb`."""
    out = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(None, 1)
        if len(words) == 2 and words[0] == "deb":
            out.append(f"deb-src {words[1].strip()}")
    return "".join(f"{line}\n" for line in out)


def system_sources() -> list[tuple[str, str]]:
    """(file name, its text) of every sources file apt reads on this system, found through
    apt's configuration (Dir::Etc::sourcelist and sourceparts)."""
    asked = ["LIST", "Dir::Etc::sourcelist/f", "PARTS", "Dir::Etc::sourceparts/d"]
    done = _run(["apt-config", "shell", *asked])
    where = dict(
        (name, shlex.split(value)[0] if value else "")
        for name, _, value in (line.partition("=") for line in done.stdout.splitlines())
    )
    found = []
    listed = Path(where.get("LIST", ""))
    if where.get("LIST") and listed.is_file():
        found.append(("sources.list", listed.read_text("utf-8", "replace")))
    parts = Path(where.get("PARTS", ""))
    if where.get("PARTS") and parts.is_dir():
        for path in sorted(parts.iterdir()):
            if PART.match(path.name) and path.is_file():
                found.append((path.name, path.read_text("utf-8", "replace")))
    return found


def src_sources(found: list[tuple[str, str]]) -> dict[str, str]:
    """The private apt's sources files: the system's binary archives as source archives."""
    out = {}
    for name, text in found:
        src = deb822_to_src(text) if name.endswith(".sources") else one_line_to_src(text)
        if src:
            out[f"src-{name}"] = src
    if not out:
        raise PackageError("apt's sources name no Debian archive (no `deb` entries)")
    return out


def _run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            args, capture_output=True, text=True, timeout=1200, check=False, cwd=cwd
        )
    except FileNotFoundError:
        raise PackageError(f"{args[0]} not found: apt-get install apt dpkg-dev") from None
    except subprocess.TimeoutExpired:
        raise PackageError(f"{args[0]} took over 20 minutes") from None


def _last_line(done: subprocess.CompletedProcess[str], what: str) -> str:
    return (done.stderr.strip().splitlines() or [f"{what} failed"])[-1]


def fetch(name: str, version: str, state: Path, into: Path) -> Path:
    """Source package `name`, exactly `version`, downloaded into `into` with apt's private
    state under `state`; returns its .dsc."""
    shutil.rmtree(state, ignore_errors=True)
    parts = state / "sources.list.d"
    for folder in (parts, state / "lists" / "partial", state / "cache" / "archives" / "partial"):
        folder.mkdir(parents=True)
    for file, text in src_sources(system_sources()).items():
        (parts / file).write_text(text)
    private = [
        "-o", "Dir::Etc::SourceList=/dev/null",
        "-o", f"Dir::Etc::SourceParts={parts}",
        "-o", f"Dir::State::Lists={state / 'lists'}",
        "-o", f"Dir::Cache={state / 'cache'}",
        "-o", "APT::Sandbox::User=root",  # the private folders are this user's own
    ]  # fmt: skip
    # an archive with no sources (a third party's) fails its part of the update; the
    # package is looked for in the rest, and `apt-get source` says if it is in none
    update = _run(["apt-get", "-q", *private, "update"])
    into.mkdir(parents=True, exist_ok=True)
    got = _run(["apt-get", "-q", *private, "source", "--download-only", f"{name}={version}"], into)
    dsc = into / f"{name}_{re.sub(r'^[0-9]+:', '', version)}.dsc"
    if got.returncode != 0 or not dsc.exists():
        why = _last_line(got, "apt-get source")
        if update.returncode != 0:
            why += f" (apt-get update: {_last_line(update, 'apt-get update')})"
        raise PackageError(f"cannot fetch the source of {name} {version}: {why}")
    return dsc


def unpack(dsc: Path, into: Path) -> Path:
    """The source tree of `dsc`, each file checked against it and Debian's patches applied."""
    shutil.rmtree(into, ignore_errors=True)
    into.parent.mkdir(parents=True, exist_ok=True)
    done = _run(["dpkg-source", "--require-strong-checksums", "-x", str(dsc), str(into)])
    if done.returncode != 0 or not into.is_dir():
        raise PackageError(f"dpkg-source could not unpack {dsc.name}: {_last_line(done, 'it')}")
    return into
