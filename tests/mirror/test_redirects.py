"""Which of an upstream's redirects the mirror follows (redirects.py), and whose fault a
target that fails is; followed end to end against an upstream in another network
namespace in tests/e2e/test_mirror_upstream.py and test_mirror_upstream_paths.py."""

from __future__ import annotations

import asyncio
import re
import socket

import pytest

from retreatkit.mirror import redirects
from retreatkit.mirror.errors import UpstreamError
from retreatkit.mirror.status import section
from retreatkit.mirror.testing import Clock
from tests.mirror.conftest import Env

PAGE = "http://up.test/simple/x/"


@pytest.mark.parametrize(
    ("location", "url"),
    [
        ("/real/x/", "http://up.test/real/x/"),
        ("../y/", "http://up.test/simple/y/"),
        ("http://cdn.test:8080/x", "http://cdn.test:8080/x"),
    ],
)
def test_a_redirect_that_keeps_the_scheme_is_followed(location: str, url: str) -> None:
    assert redirects.target(PAGE, location, PAGE) == url


@pytest.mark.parametrize(
    ("start", "location", "words"),
    [
        (PAGE, "https://up.test/x", f"upstream redirected {PAGE} from http to https: not followed"),
        (
            "https://up.test/x",
            "http://up.test/x",
            "upstream redirected NAME from https to http: not followed",
        ),
        (PAGE, "file:///etc/passwd", f"upstream redirected {PAGE} from http to another scheme:"
                                     " not followed"),
        (PAGE, "http://up.test:99999/", f"upstream redirected {PAGE} to an address the mirror"
                                        " cannot follow"),
    ],
)  # fmt: skip
def test_a_redirect_the_mirror_will_not_follow_is_said(
    start: str, location: str, words: str
) -> None:
    what = PAGE if start == PAGE else "NAME"
    with pytest.raises(UpstreamError) as refused:
        redirects.target(start, location, what)
    assert str(refused.value) == words


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "127.8.9.10", "::1", "169.254.169.254", "fe80::1%eth0", "::ffff:127.0.0.1",
     "0.0.0.0", "::", "224.0.0.1"],
)  # fmt: skip
def test_this_machine_and_its_link_are_near(address: str) -> None:
    assert redirects.near(address)


@pytest.mark.parametrize("address", ["192.0.2.1", "2001:db8::1", "pypi.org", ""])
def test_other_hosts_are_not(address: str) -> None:
    assert not redirects.near(address)  # a name is resolved first, by the fetcher


async def test_a_redirect_to_a_host_that_refuses_is_charged_to_that_host(env: Env) -> None:
    """A files host (or the mirror an apt redirector picked) the venue cannot reach: the
    upstream that redirected there was marked down, and its every other page and file
    refused as if the uplink were gone. The host that failed is down; the client whose
    file it was is told which, and why."""
    env.mirror.fetcher.clock = Clock()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound and never listening: a connect is refused
    try:
        gone = f"127.0.0.1:{closed.getsockname()[1]}"
        filename = env.wheels["demo-pkg"][0]
        url = await env.file_url("demo-pkg")
        env.upstream.rules[f"/files/{filename}"] = f"redirect http://{gone}/files/{filename}"
        up = env.upstream.url.split("//")[1].rstrip("/")
        async with asyncio.timeout(30):  # a guard against a hang, not a measurement
            r = await env.client.get(url)
            line = f"upstream {up} redirected {filename} to {gone}: connection refused"
            assert (r.status, r.reason, await r.text()) == (504, line, line + "\n")
            r = await env.client.get(url)  # a retry: told at once, the host not asked
            line = (
                f"upstream {up} redirected {filename} to {gone}, which is down"
                " (connection refused); next try in 2 s"
            )
            assert (r.status, r.reason) == (504, line)
            assert env.upstream.counts[f"/files/{filename}"] == 2
            _, data, _ = env.wheels["demo-dep"]  # the upstream's other files: had
            r = await env.client.get(await env.file_url("demo-dep"))
            assert (r.status, await r.read()) == (200, data)
            home = await (await env.client.get("/")).text()
    finally:
        closed.close()
    report = section(env.mirror, True, 0)
    assert report["upstreams"]["pypi"]["state"] == "up"
    assert [re.sub(r"since \S+Z", "since T", w) for w in report["warnings"]] == [
        f"upstream down: http://{gone} since T (connection refused); serving what the store holds"
    ]
    assert "The internet link is down" not in home  # attendees are not told it is
