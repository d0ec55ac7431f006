"""Which of an upstream's redirects the mirror follows (redirects.py); followed end to end
against an upstream in another network namespace in tests/e2e/test_mirror_upstream.py."""

from __future__ import annotations

import pytest

from retreatkit.mirror import redirects
from retreatkit.mirror.errors import UpstreamError

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
