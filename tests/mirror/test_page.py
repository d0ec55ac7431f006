"""The page attendees open (item 11): the name it gives, what it says is cached, pinned."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from retreatkit import units
from retreatkit.mirror import local, page, wheels
from retreatkit.mirror.testing import make_wheel
from tests.mirror.conftest import Env

SUMMARY = page.Summary(
    projects=12,
    files=118,
    size_bytes=412_300_000,
    platforms=["Linux x86_64", "any platform (pure Python)"],
    pythons=["CPython 3.11", "CPython 3.12"],
    sources=1,
    opam_archives=0,
    bytes_saved=2_345_678_901,
    offline=False,
    npm_tarballs=40,
    debs=3,
    apt_origins=("debian", "debian-security"),
    apt_suites=(("debian", "bookworm", "main contrib"),),
    kit=True,
)

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Package mirror</title></head><body>
<h1>Package mirror</h1>
<p>Packages are fetched from the internet once, for everyone, and kept here.
Holding 118 Python files (412 MB) of 12 projects; wheels for Linux x86_64, any platform (pure \
Python); built for CPython 3.11, CPython 3.12; 1 source distribution. 40 npm tarballs. 3 \
Debian packages. So far it saved 2.3 GB of downloads over the internet link.</p>
<p>When the internet link is down, the mirror lists only the files it holds, so pip,
uv and npm install the newest version it has, and apt gets the last complete set of
indexes; a package nobody fetched before cannot be installed until the link is back.</p>
<h2>pip</h2>
<p>One install, then every install from this machine on (a requirements file's own \
<code>--index-url</code> line wins over both: remove it):</p>
<pre>pip install --index-url http://mirror.retreat.lan:8000/pypi/simple/ --trusted-host \
mirror.retreat.lan PACKAGE
pip config set global.index-url http://mirror.retreat.lan:8000/pypi/simple/
pip config set global.trusted-host mirror.retreat.lan</pre>
<h2>uv</h2>
<p>One install, then <code>uv add</code>, <code>uv sync</code> and <code>uv run</code> (a \
<code>uv.lock</code> made against another index: <code>uv sync</code>, not <code>--frozen</code>, \
moves it here, keeping its versions):</p>
<pre>uv pip install --index-url http://mirror.retreat.lan:8000/pypi/simple/ PACKAGE
export UV_DEFAULT_INDEX=http://mirror.retreat.lan:8000/pypi/simple/</pre>
<h2>opam</h2>
<p>An opam already set up, or a new one:</p>
<pre>opam repository set-url default http://mirror.retreat.lan:8000/opam
opam init default http://mirror.retreat.lan:8000/opam</pre>
<h2>npm</h2>
<p>One install, then every install from this machine on (with the internet link down, npm \
tries a package the mirror cannot get for a minute before it says why; <code>npm config set \
fetch-retry-mintimeout=1000 fetch-retry-maxtimeout=2000</code> makes that 3 s):</p>
<pre>npm install --registry http://mirror.retreat.lan:8000/npm/ PACKAGE
npm config set registry http://mirror.retreat.lan:8000/npm/</pre>
<h2>apt</h2>
<p>As the proxy for the archives it keeps (debian, debian-security; https sources go direct), \
or in place of your sources line; remove the file after the event:</p>
<pre>echo 'Acquire::http::Proxy "http://mirror.retreat.lan:8000"; Acquire::https::Proxy \
"DIRECT";' | sudo tee /etc/apt/apt.conf.d/01retreat-mirror
echo 'deb http://mirror.retreat.lan:8000/debian bookworm main contrib' | sudo tee \
/etc/apt/sources.list.d/retreat-debian.list</pre>
<h2>bob</h2>
<p>bob, to send files to each other (<code>bob send FILE</code>), from this mirror:</p>
<pre>UV_PYTHON_DOWNLOADS=never uv tool install --index-url \
http://mirror.retreat.lan:8000/pypi/simple/ retreatkit
PIP_INDEX_URL=http://mirror.retreat.lan:8000/pypi/simple/ PIP_TRUSTED_HOST=mirror.retreat.lan \
pipx install retreatkit</pre>
</body></html>
"""


def test_the_page_is_pinned() -> None:
    assert page.render("http://mirror.retreat.lan:8000", SUMMARY) == PAGE


def test_a_mirror_without_the_kits_wheel_offers_no_bob() -> None:
    """A VM guest's mirror never serves the kit (nothing to make a wheel of): its page
    told attendees to `uv tool install retreatkit` from it, which found nothing."""
    shown = page.render("http://mirror.retreat.lan:8000", replace(SUMMARY, kit=False))
    assert "<h2>bob</h2>" not in shown and "retreatkit" not in shown
    assert shown.replace("<h2>npm</h2>", "") != shown  # the rest is all there


@pytest.mark.parametrize(
    ("public", "host", "expected"),
    [
        ("http://mirror.retreat.lan:8000/", "localhost:8000", "http://mirror.retreat.lan:8000"),
        ("", "10.0.0.5:8000", "http://10.0.0.5:8000"),
        ("", "mirror.retreat.lan:8000", "http://mirror.retreat.lan:8000"),
        ("", "localhost:8000", "http://192.0.2.7:8000"),  # the organiser's own browser
        ("", "127.0.0.1:8000", "http://192.0.2.7:8000"),
        ("", "[::1]:8000", "http://192.0.2.7:8000"),
        ("", None, "http://192.0.2.7:8000"),  # HTTP/1.0 without Host
        ("", "evil<script>", "http://192.0.2.7:8000"),
    ],
)
def test_the_name_attendees_are_given(public: str, host: str | None, expected: str) -> None:
    assert page.base_url(public, host, "http://192.0.2.7:8000") == expected


def test_pip_trusts_the_host_on_any_port() -> None:
    assert page.host_of("http://10.0.0.5:8000") == "10.0.0.5"
    assert page.host_of("http://[fd00::5]:8000") == "[fd00::5]"
    assert page.host_of("http://mirror.retreat.lan") == "mirror.retreat.lan"


def test_platforms_from_wheel_names() -> None:
    found = wheels.summary(
        [
            "numpy-2.1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "numpy-2.1.0-cp312-cp312-macosx_14_0_arm64.whl",
            "numpy-2.1.0-cp310-cp310-win_amd64.whl",
            "rich-13.7.0-py3-none-any.whl",
            "numpy-2.1.0.tar.gz",
        ]
    )
    assert found == (
        ["Linux x86_64", "macOS arm64", "Windows x86_64", "any platform (pure Python)"],
        ["CPython 3.10", "CPython 3.11", "CPython 3.12"],
        1,
    )


async def test_the_page_without_a_host_header_still_names_a_port(env: Env) -> None:
    env.mirror.lan_url = "http://192.0.2.7:8000"
    assert env.client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", env.client.port)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    body = await reader.read()
    writer.close()
    assert b"pip install --index-url http://192.0.2.7:8000/pypi/simple/" in body


async def test_the_page_says_what_is_cached(env: Env) -> None:
    r = await env.client.get("/", headers={"Host": "mirror.retreat.lan:8000"})
    assert "Nothing is cached yet" in await r.text()
    _, data, _ = env.wheels["demo-dep"]
    await (await env.client.get(await env.file_url("demo-dep"))).read()
    await (await env.client.get(await env.file_url("demo-dep"))).read()
    text = await (await env.client.get("/", headers={"Host": "mirror.retreat.lan:8000"})).text()
    size = units.size(len(data))
    assert f"Holding 1 Python file ({size}) of 1 project; wheels for any platform" in text
    assert f"So far it saved {size} of downloads" in text
    assert "--trusted-host mirror.retreat.lan PACKAGE" in text


async def test_the_organisers_own_wheel_counts_as_a_project(env: Env, tmp_path: Path) -> None:
    course = make_wheel("course-tools", "1.0")
    (tmp_path / course[0]).write_bytes(course[1])
    await env.mirror.store.run(lambda: local.add(env.mirror.store, tmp_path / course[0]))
    text = await (await env.client.get("/", headers={"Host": "mirror.retreat.lan:8000"})).text()
    size = units.size(len(course[1]))
    assert f"Holding 1 Python file ({size}) of 1 project; wheels for any platform" in text
