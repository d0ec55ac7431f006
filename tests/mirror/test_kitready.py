"""The page offers bob only when its install works with the uplink gone: the kit's wheel
and every distribution it needs held for this machine. It offered the line whenever the
kit's wheel was served, and attendees met `textual-serve was not found in the package
registry`, or once the uplink went, `504 upstream ... is down` for segno's page."""

from __future__ import annotations

import re

from packaging.tags import Tag
from packaging.version import Version

from retreatkit.mirror import pypi
from retreatkit.mirror.kitready import installs_here
from retreatkit.mirror.seedfiles import Want
from retreatkit.mirror.status import section
from tests.mirror.conftest import Env

HOST = {"Host": "mirror.retreat.lan:8000"}
UV_LINE = (
    "UV_PYTHON_DOWNLOADS=never uv tool install --index-url"
    " http://mirror.retreat.lan:8000/pypi/simple/ retreatkit"
)
WAITING = (
    "<h2>bob</h2>\n<p>bob, to send files to each other, cannot be installed from this mirror"
    " yet: it does not hold everything bob needs. The line that installs it appears here once"
    " it does.</p>\n"
)


async def home(env: Env) -> str:
    text: str = await (await env.client.get("/", headers=HOST)).text()
    return text


async def fetch(env: Env, project: str) -> None:
    r = await env.client.get(await env.file_url(project))
    assert r.status == 200
    await r.read()


def kit_lines(env: Env) -> list[str]:
    return [w for w in section(env.mirror, True, 0)["warnings"] if w.startswith("bob")]


async def test_bob_is_offered_once_the_store_holds_all_the_kit_needs(env: Env) -> None:
    kit = env.mirror.kit
    kit.needs = lambda: [Want("pypi", "demo-pkg", "1.0"), Want("pypi", "demo-dep", "2.0")]
    kit.served = True  # as local.publish_own sets it
    text = await home(env)
    assert WAITING in text and "uv tool install" not in text and "pipx" not in text
    assert kit_lines(env) == [
        "bob is not offered on the attendee page: the store lacks 2 of the 2 distributions"
        " installing it needs here (demo-pkg 1.0, demo-dep 2.0); with the uplink up, run"
        " `retreatkit mirror seed --kit --mirror http://localhost`"
    ]

    await fetch(env, "demo-pkg")
    assert WAITING in await home(env)  # a page alone is not the file
    await env.page("demo-dep")
    assert WAITING in await home(env)
    assert "(demo-dep 2.0)" in kit_lines(env)[0]

    await fetch(env, "demo-dep")
    text = await home(env)
    assert UV_LINE in text and WAITING not in text
    assert kit_lines(env) == []

    # a file held no more (rotten, dropped) takes the line off again
    sha, filename = (await env.file_url("demo-dep")).split("/")[-2:]
    obj = env.mirror.store.get(pypi.source_name(sha, filename))
    assert obj is not None
    env.mirror.store.drop(env.mirror.store.blob_path(obj.digest), " (a test)")
    env.mirror.hot.clear()
    assert WAITING in await home(env)
    assert re.search(r"lacks 1 of the 2 .* \(demo-dep 2\.0\)", kit_lines(env)[0])


async def test_a_mirror_that_does_not_serve_the_kit_says_nothing_of_it(env: Env) -> None:
    """A VM guest's mirror has no wheel of the kit to serve: no bob, no line for /status."""
    env.mirror.kit.needs = lambda: [Want("pypi", "demo-pkg", "1.0")]
    text = await home(env)
    assert "<h2>bob</h2>" not in text and "retreatkit" not in text
    assert kit_lines(env) == []


LINUX = frozenset({Tag("cp311", "cp311", "manylinux_2_17_x86_64"), Tag("py3", "none", "any")})


def test_a_file_installs_here_by_its_version_and_tags() -> None:
    v = Version("1.0")
    wheel, sdist = "demo-1.0-cp311-cp311-manylinux_2_17_x86_64.whl", "demo-1.0.tar.gz"
    mac = "demo-1.0-cp311-cp311-macosx_11_0_arm64.whl"
    assert installs_here("demo", v, [(wheel, True)], LINUX)
    assert installs_here("demo", v, [("demo-1.0-py3-none-any.whl", True)], LINUX)
    assert not installs_here("demo", v, [(mac, True)], LINUX)  # another machine's wheel
    assert not installs_here("demo", v, [(wheel, False)], LINUX)  # listed, not held
    assert not installs_here("demo", v, [("demo-2.0-py3-none-any.whl", True)], LINUX)
    # a version with no wheel for this machine installs from its sdist; one with such a
    # wheel needs that wheel (its sdist may need a compiler the attendee lacks)
    assert installs_here("demo", v, [(mac, True), (sdist, True)], LINUX)
    assert not installs_here("demo", v, [(wheel, False), (sdist, True)], LINUX)
    assert installs_here("demo", Version("1.0.0"), [(wheel, True)], LINUX)  # as versions compare
