"""DNS rebinding protection as a real nameserver process applies it, asked by dig, in
front of a zone served by the test."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest

from retreatkit.nameserver.fakes import Zone
from retreatkit.nameserver.testing import NameserverProcess, ZoneUpstream, start_nameserver

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (.ci/run does)"),
]
ZONE = """
$TTL 300
@ SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
mapped AAAA ::ffff:192.168.1.1
mapped10 AAAA ::ffff:10.0.0.1
nat64 AAAA 64:ff9b::c0a8:101
sixtofour AAAA 2002:c0a8:101::1
compat AAAA ::c0a8:101
public AAAA ::ffff:198.51.100.7
priv A 192.168.1.1
alias CNAME wiki.retreat.lan.
"""


def short(port: int, *args: str) -> list[str]:
    done = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+time=3", "+tries=1", "+short", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout.split()


def dropped(ns: NameserverProcess) -> object:
    doc = ns.request("GET", "/status")
    assert isinstance(doc, dict)
    return doc["nameserver"]["rebinding_dropped"]


@pytest.fixture(scope="module")
def ns() -> Iterator[NameserverProcess]:
    upstream = ZoneUpstream(Zone(ZONE, "example.test."))
    server = start_nameserver(
        "--upstream", upstream.address, "--record", "out.retreat.lan=cname:priv.example.test",
        "--record", "wiki.retreat.lan=10.0.0.9",
    )  # fmt: skip
    yield server
    server.stop()
    upstream.stop()


def test_private_ipv4_in_ipv6_is_dropped(ns: NameserverProcess) -> None:
    for name in ("mapped", "mapped10", "nat64", "sixtofour", "compat"):
        assert short(ns.port, f"{name}.example.test", "AAAA") == [], name
    assert dropped(ns) == 5
    assert short(ns.port, "mapped.example.test", "AAAA") == []  # and from the cache
    assert short(ns.port, "public.example.test", "AAAA") == ["::ffff:198.51.100.7"]


def test_a_local_cname_to_a_public_name_never_gives_its_private_address(
    ns: NameserverProcess,
) -> None:
    for _ in range(2):  # fresh from the upstream, then from the cache
        assert short(ns.port, "out.retreat.lan") == ["priv.example.test."]


def test_a_public_name_aliased_to_a_lan_name_is_blocked(ns: NameserverProcess) -> None:
    """No address to drop in `alias CNAME wiki.retreat.lan`: a stub that follows CNAMEs
    itself asked for wiki.retreat.lan next and gave the public name the LAN's address."""
    for _ in range(2):  # fresh from the upstream, then from the cache
        assert short(ns.port, "alias.example.test") == ["0.0.0.0"]
    assert short(ns.port, "wiki.retreat.lan") == ["10.0.0.9"]  # asked for itself: answered
