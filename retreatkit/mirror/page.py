"""The page attendees open at `/`: the lines to paste, what is cached, what offline means.

Every command on it must work pasted as it is, from an attendee's machine: pip refuses a
plain-HTTP index under any name but localhost unless told to trust the host, so its
lines carry `--trusted-host`; uv takes a plain-HTTP index as it is.
"""

from __future__ import annotations

import html
import ipaddress
import re
from dataclasses import dataclass

from retreatkit import units

_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253})(:\d{1,5})?$")
# a suite or component as a line gives it, in single quotes: a Release names them
_WORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/+~-]*$")


@dataclass(frozen=True, slots=True)
class Summary:
    projects: int  # PyPI projects whose page the mirror holds, the organiser's own too
    files: int  # PyPI files held
    size_bytes: int
    platforms: list[str]
    pythons: list[str]
    sources: int  # source distributions among the files
    opam_archives: int
    bytes_saved: int
    offline: bool  # an upstream is down right now
    npm_tarballs: int = 0
    debs: int = 0
    apt_origins: tuple[str, ...] = ()  # names of the apt archives the mirror keeps
    apt_suites: tuple[tuple[str, str, str], ...] = ()  # (origin, suite, components) held
    # the page offers bob: the kit's wheel and all its install needs here are held (kitready)
    kit: bool = False
    kit_waiting: bool = False  # the kit's wheel is served, not yet all that it needs


def loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def base_url(public_url: str, host_header: str | None, fallback: str) -> str:
    """Where attendees reach the mirror: the organiser's setting; else the name this
    request used, unless that is loopback (the organiser's own browser) or missing or
    malformed; else the address the mirror found for itself on the LAN."""
    if public_url:
        return public_url.rstrip("/")
    match = _HOST.match(host_header or "")
    if match and not loopback(match[1]):
        return f"http://{host_header}"
    return fallback.rstrip("/")


def host_of(base: str) -> str:
    """The host pip must trust: no scheme, no port (pip then trusts it on any port)."""
    netloc = base.split("://", 1)[-1].split("/", 1)[0]
    if netloc.startswith("["):
        return netloc.split("]", 1)[0] + "]"
    return netloc.rsplit(":", 1)[0] if ":" in netloc else netloc


def apt_lines(base: str, suites: tuple[tuple[str, str, str], ...]) -> list[str]:
    """apt through the mirror: as the proxy for the archives it keeps (any suite), or a
    sources line per suite it holds, in place of the machine's own."""
    # apt sends https sources through the http proxy too unless told not to
    proxy = f'Acquire::http::Proxy "{base}"; Acquire::https::Proxy "DIRECT";'
    out = [f"echo '{proxy}' | sudo tee /etc/apt/apt.conf.d/01retreat-mirror"]
    for origin, suite, components in suites:
        # an attendee pastes these into a root shell: a quote from a Release (forged over
        # a plain-http uplink, say: apt checks its signature, the mirror cannot) must not
        # end the line's own
        plain = " ".join(c for c in components.split() if _WORD.match(c)) or "main"
        if not _WORD.match(suite):
            continue
        line = f"deb {base}/{origin} {suite} {plain}"
        out.append(f"echo '{line}' | sudo tee /etc/apt/sources.list.d/retreat-{origin}.list")
    return out


def lines(
    base: str,
    apt_origins: tuple[str, ...] = (),
    apt_suites: tuple[tuple[str, str, str], ...] = (),
    kit: bool = True,
) -> dict[str, list[str]]:
    """The commands, by client; tests run them as they are. bob's only with `kit`: a
    mirror that does not serve the kit's wheel (a VM guest's), or does not hold all that
    installing it needs, cannot install it with the uplink gone."""
    index, host = f"{base}/pypi/simple/", host_of(base)
    found = {
        "pip": [
            f"pip install --index-url {index} --trusted-host {host} PACKAGE",
            f"pip config set global.index-url {index}",
            f"pip config set global.trusted-host {host}",
        ],
        "uv": [
            f"uv pip install --index-url {index} PACKAGE",
            f"export UV_DEFAULT_INDEX={index}",
        ],
        "opam": [
            f"opam repository set-url default {base}/opam",
            f"opam init default {base}/opam",
        ],
        "npm": [
            f"npm install --registry {base}/npm/ PACKAGE",
            f"npm config set registry {base}/npm/",
        ],
        "apt": apt_lines(base, apt_suites) if apt_origins else [],
        "bob": [
            f"UV_PYTHON_DOWNLOADS=never uv tool install --index-url {index} retreatkit",
            f"PIP_INDEX_URL={index} PIP_TRUSTED_HOST={host} pipx install retreatkit",
        ]
        if kit
        else [],
    }
    return {name: found_lines for name, found_lines in found.items() if found_lines}


def _count(n: int, thing: str) -> str:
    return f"{n:,} {thing}" + ("" if n == 1 else "s")


def _holding(s: Summary) -> str:
    if not s.files and not s.opam_archives and not s.npm_tarballs and not s.debs:
        return "Nothing is cached yet: the first install of each package fetches it for everyone."
    parts = [
        f"Holding {_count(s.files, 'Python file')} ({units.size(s.size_bytes)})"
        f" of {_count(s.projects, 'project')}"
    ]
    if s.platforms:
        parts.append(f"wheels for {', '.join(s.platforms)}")
    if s.pythons:
        parts.append(f"built for {', '.join(s.pythons)}")
    if s.sources:
        parts.append(_count(s.sources, "source distribution"))
    text = "; ".join(parts) + "."
    for n, thing in ((s.opam_archives, "opam archive"), (s.npm_tarballs, "npm tarball"),
                     (s.debs, "Debian package")):  # fmt: skip
        if n:
            text += f" {_count(n, thing)}."
    return text


_INTROS = {
    "pip": "One install, then every install from this machine on (a requirements file's own"
    " <code>--index-url</code> line wins over both: remove it):",
    "uv": "One install, then <code>uv add</code>, <code>uv sync</code> and <code>uv run</code>"
    " (a <code>uv.lock</code> made against another index: <code>uv sync</code>, not"
    " <code>--frozen</code>, moves it here, keeping its versions):",
    "opam": "An opam already set up, or a new one:",
    # npm tries any 5xx three times over 70 s (fetch-retries 2, 10 s then 60 s apart), the
    # mirror's 504 for what it cannot get too, and no status both says "cannot get it now"
    # and stops npm: the attendee shortens the waits (1 s, then 2 s) and keeps the retries
    "npm": "One install, then every install from this machine on (with the internet link"
    " down, npm tries a package the mirror cannot get for a minute before it says why;"
    " <code>npm config set fetch-retry-mintimeout=1000 fetch-retry-maxtimeout=2000</code>"
    " makes that 3 s):",
    "apt": "As the proxy for the archives it keeps ({origins}; https sources go direct), or"
    " in place of your sources line; remove the file after the event:",
    "bob": "bob, to send files to each other (<code>bob send FILE</code>), from this mirror:",
}


# no line to paste: it would fail (`... was not found in the package registry`, or a 504
# once the uplink is gone), so the attendee hears why there is none, the organiser how to
# mend it (/status)
_BOB_WAITING = (
    "bob, to send files to each other, cannot be installed from this mirror yet: it does not"
    " hold everything bob needs. The line that installs it appears here once it does."
)


def render(base: str, s: Summary) -> str:
    commands = lines(base, s.apt_origins, s.apt_suites, s.kit)
    origins = html.escape(", ".join(s.apt_origins))
    blocks = "".join(
        f"<h2>{name}</h2>\n<p>{_INTROS[name].format(origins=origins)}</p>\n"
        f"<pre>{html.escape(chr(10).join(found), quote=False)}</pre>\n"
        for name, found in commands.items()
    )
    if s.kit_waiting and not s.kit:
        blocks += f"<h2>bob</h2>\n<p>{_BOB_WAITING}</p>\n"
    now = (
        "<p><strong>The internet link is down right now:</strong> installing from what is"
        " cached.</p>\n"
        if s.offline
        else ""
    )
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Package mirror</title></head><body>
<h1>Package mirror</h1>
<p>Packages are fetched from the internet once, for everyone, and kept here.
{_holding(s)} So far it saved {units.size(s.bytes_saved)} of downloads over the internet link.</p>
{now}<p>When the internet link is down, the mirror lists only the files it holds, so pip,
uv and npm install the newest version it has, and apt gets the last complete set of
indexes; a package nobody fetched before cannot be installed until the link is back.</p>
{blocks}</body></html>
"""
