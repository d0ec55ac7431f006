"""apt-get and npm through a real mirror process as attendees meet it at an event whose
uplink misbehaves: a login portal in the upstream's place, a lying or slow upstream, the
uplink gone with its nameserver; `apt-get source`; a store smaller than a package.

Each attendee is a network namespace that reaches the mirror at a non-loopback address;
apt-get has every folder of its own (AptClient), npm an empty configuration and a cache
of its own, so the host's apt and npm are never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from retreatkit.mirror import apt
from retreatkit.mirror.testing import Netns, said, start_mirror, start_upstream
from retreatkit.mirror.testrepos import (
    AptClient,
    Signer,
    arch,
    make_deb,
    make_dsc,
    make_npm_tarball,
    write_apt,
    write_npm,
)
from tests.e2e.mirror_attendee import (
    attendee,
    attendee_apt,
    fetched,
    mirrored,
    npm_env,
    page_block,
)

pytestmark = pytest.mark.e2e
APT = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("apt-get", "dpkg-scanpackages", "gpg")),
    reason="apt-get, dpkg-dev and gpg are needed (.ci/run installs them)",
)
NPM = pytest.mark.skipif(shutil.which("npm") is None, reason="npm is needed (node and npm)")

lan = attendee("e", prefix="rkan")


# a portal's login page: its CSS has a `name: value` line, as a Release's fields are
LOGIN = (
    "<!DOCTYPE html>\n<html><head><title>Wi-Fi</title>\n<style>\nbody { margin: 0; }\n"
    "</style></head>\n<body><form>Log in</form></body></html>\n"
)


@APT
def test_a_login_portal_in_the_uplinks_place_leaves_apt_the_release_it_had(
    tmp_path: Path, lan: Netns, signer: Signer
) -> None:
    """The uplink cut, the venue's portal answering with its login page: attendees still
    update and install what the mirror holds, and the organiser's log says why the
    Release is stale (it said nothing). The page was kept as the suite's InRelease,
    and every apt-get update then failed (`Clearsigned file isn't valid, got 'NOSPLIT'`),
    the uplink's return too. A suite never fetched says why it cannot be had."""
    made = {"hello-rk_1.0_all.deb": make_deb(tmp_path / "build", "hello-rk", "1.0")}
    root = tmp_path / "upstream"
    write_apt(root / "debian", "bookworm", made, signer)
    with mirrored(tmp_path, root, lan, ttl=0) as (upstream, mirror, _admin):
        first = attendee_apt(tmp_path / "apt-first", mirror, signer)
        for command in (["update"], ["install", "-y", "hello-rk"]):
            assert first.run(*command, argv=lan.argv([])).returncode == 0
        upstream.stop()
        portal = tmp_path / "portal"
        for suite in ("bookworm", "trixie"):
            for name in apt.RELEASE_FILES:
                page = portal / "debian" / "dists" / suite / name
                page.parent.mkdir(parents=True, exist_ok=True)
                page.write_text(LOGIN)
        stand_in = start_upstream(portal, urlsplit(upstream.url).port)
        try:
            later = attendee_apt(tmp_path / "apt-later", mirror, signer)
            for command in (["update"], ["install", "-y", "hello-rk"]):
                done = later.run(*command, argv=lan.argv([]))
                assert done.returncode == 0, (done.stdout, done.stderr)
                assert "E:" not in done.stderr and "W:" not in done.stderr, done.stderr
            assert "Setting up hello-rk (1.0) ..." in done.stdout
            said(
                mirror,
                "apt debian/bookworm: serving its last Release stale: upstream sent a"
                " page that is not debian/bookworm's InRelease \\(a login portal's\\?\\)$",
            )
            never = attendee_apt(tmp_path / "apt-never", mirror, signer, suite="trixie")
            done = never.run("update", argv=lan.argv([]))
            err = (
                f"Err:1 {mirror.url}debian trixie InRelease\n  502  upstream sent a page that"
                " is not debian/trixie's InRelease (a login portal's?)"
            )
            assert err in done.stdout, done.stdout
        finally:
            stand_in.stop()


@APT
def test_the_pages_proxy_line_leaves_other_sources_to_apt_with_what_to_do(
    tmp_path: Path, lan: Netns, signer: Signer
) -> None:
    """An attendee's machine has sources the mirror does not keep besides the one it does.
    With the page's proxy line apt sent its https sources through the mirror too (CONNECT:
    `Invalid response from proxy: HTTP/1.1 405 Method Not Allowed ...`); they go direct.
    An http source of another host is refused, and apt shows why and what to do (it
    showed `403  Forbidden`: apt prints the status line, not the body)."""
    made = {"hello-rk_1.0_all.deb": make_deb(tmp_path / "build", "hello-rk", "1.0")}
    root = tmp_path / "upstream"
    write_apt(root / "debian", "bookworm", made, signer)
    with mirrored(tmp_path, root, lan) as (upstream, mirror, _admin):
        line = page_block(mirror.url, "apt")[0]
        client = attendee_apt(tmp_path / "apt", mirror, signer)
        conf = re.fullmatch(r"echo '(.*)' \| sudo tee /etc/apt/apt.conf.d/(\S+)", line)
        assert conf is not None, line
        (client.state / "parts" / conf[2]).write_text(conf[1] + "\n")
        client.sources(
            f"deb {upstream.url}debian bookworm main\n"
            "deb https://192.0.2.1/debian bookworm main\n"  # TEST-NET-1: unreachable here
            "deb http://192.0.2.2/debian bookworm main"
        )
        done = client.run("update", argv=lan.argv([]))
        out = done.stdout
        assert f" {upstream.url}debian bookworm/main {arch()} Packages [" in out, out
        https = re.findall(r"https://192\.0\.2\.1/.*\n.*\n", out)
        assert https and not any("proxy" in lines for lines in https), out
        assert "Cannot initiate the connection to 192.0.2.1:443" in out, out
        refused = (
            "http://192.0.2.2/debian bookworm InRelease\n  403  not an open proxy: this mirror"
            ' serves only its apt origins (debian); set Acquire::http::Proxy::192.0.2.2 "DIRECT"'
        )
        assert refused in out, out


@APT
def test_a_deb_larger_than_the_whole_store_is_refused_before_it_crosses(
    tmp_path: Path, lan: Netns, signer: Signer
) -> None:
    """A store kept under 1 MB (max_size_bytes) and a .deb of 1.5 MB: the mirror fetched
    it, then evicted every other file to make room, then the file itself, and fetched it
    again for the next attendee. It is refused before it crosses, in words apt shows,
    and what the store held stays held."""
    made = {
        "small-rk_1.0_all.deb": make_deb(tmp_path / "build", "small-rk", "1.0", pad=20_000),
        "big-rk_1.0_all.deb": make_deb(tmp_path / "build", "big-rk", "1.0", pad=1_500_000),
    }
    root = tmp_path / "upstream"
    write_apt(root / "debian", "bookworm", made, signer)
    with mirrored(tmp_path, root, lan, extra="max_size_bytes = 1000000") as (
        upstream, mirror, _admin,
    ):  # fmt: skip
        first = attendee_apt(tmp_path / "apt-first", mirror, signer)
        for command in (["update"], ["install", "-y", "small-rk"]):
            assert first.run(*command, argv=lan.argv([])).returncode == 0
        done = first.run("install", "-y", "big-rk", argv=lan.argv([]))
        assert done.returncode == 100
        said = (
            f"E: Failed to fetch {mirror.url}debian/pool/main/b/big-rk/big-rk_1.0_all.deb  507"
            "  big-rk_1.0_all.deb (1.5 MB) is larger than all the mirror keeps: 1.0 MB"
            " (max_size_bytes) [IP: "
        )
        assert said in done.stderr, done.stderr
        asked = fetched(upstream.url)
        assert "/debian/pool/main/b/big-rk/big-rk_1.0_all.deb" not in asked
        upstream.stop()
        later = attendee_apt(tmp_path / "apt-later", mirror, signer)
        for command in (["update"], ["install", "-y", "small-rk"]):
            done = later.run(*command, argv=lan.argv([]))
            assert done.returncode == 0, (done.stdout, done.stderr)


@contextlib.contextmanager
def names(lan: Netns, hosts: dict[str, str]) -> Iterator[None]:
    """The namespace's own /etc/hosts (these names) and a resolv.conf whose nameserver
    never answers (nothing listens there): `ip netns exec` mounts both over the system's."""
    folder = Path("/etc/netns") / lan.name
    folder.mkdir(parents=True)
    try:
        listed = "".join(f"{address} {name}\n" for name, address in hosts.items())
        (folder / "hosts").write_text(f"127.0.0.1 localhost\n{listed}")
        (folder / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@APT
def test_with_the_uplink_and_its_nameserver_gone_apt_reads_why_in_words(
    tmp_path: Path, lan: Netns
) -> None:
    """The venue's uplink gone with its DNS: the mirror (in the attendees' namespace, whose
    nameserver answers nothing) cannot look up its upstream. apt read `its name does not
    resolve (unknown error -3)`: the resolver's code taken for an errno."""
    with names(lan, {"mirror.retreat.lan": lan.address}):
        mirror, _admin = start_mirror(
            tmp_path / "store", apt={"debian": "http://deb.debian.org/debian"},
            listen=f"{lan.address}:0", wrap=lan.argv,
        )  # fmt: skip
        try:
            port = urlsplit(mirror.url).port
            client = AptClient(tmp_path / "apt")
            client.sources(f"deb http://mirror.retreat.lan:{port}/debian bookworm main")
            done = client.run("update", argv=lan.argv([]))
            why = "its name does not resolve (temporary failure in name resolution)"
            said_to_apt = f"  504  upstream deb.debian.org: {why} [IP: {lan.address} {port}]"
            assert said_to_apt in done.stdout, done.stdout
            said(mirror, f"upstream http://deb.debian.org:80 is down: {re.escape(why)}$")
        finally:
            mirror.stop()


@APT
def test_an_index_that_does_not_match_its_release_is_named_to_apt(
    tmp_path: Path, lan: Netns, signer: Signer
) -> None:
    """A lying upstream: the Packages.xz its Release names by hash has other bytes. apt is
    told which index failed (it read `upstream sent bad bytes for 3a7bd3e2...`, the by-hash
    name), takes the next form the Release lists, and installs."""
    made = {"hello-rk_1.0_all.deb": make_deb(tmp_path / "build", "hello-rk", "1.0")}
    root = tmp_path / "upstream"
    write_apt(root / "debian", "bookworm", made, signer)
    index = f"main/binary-{arch()}/Packages.xz"
    data = (root / "debian" / "dists" / "bookworm" / index).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    by_hash = f"/debian/dists/bookworm/main/binary-{arch()}/by-hash/SHA256/{digest}"
    (root / ".behaviours.json").write_text(json.dumps({by_hash: "corrupt"}))
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # what "corrupt" sends
    with mirrored(tmp_path, root, lan) as (_upstream, mirror, _admin):
        client = attendee_apt(tmp_path / "apt", mirror, signer)
        done = client.run("update", argv=lan.argv([]))
        assert done.returncode == 0, (done.stdout, done.stderr)
        said_to_apt = (
            f"  504  upstream sent bad bytes for bookworm/{index}: sha256 mismatch: expected"
            f" {digest}, got {hashlib.sha256(flipped).hexdigest()} [IP: "
        )
        assert said_to_apt in done.stdout, done.stdout
        said(mirror, rf"fetch of bookworm/{index} as apt/debian/by-hash/sha256/{digest} failed")
        done = client.run("install", "-y", "hello-rk", argv=lan.argv([]))
        assert "Setting up hello-rk (1.0) ..." in done.stdout, (done.stdout, done.stderr)


@APT
def test_apt_get_source_through_the_mirror_online_then_offline(
    tmp_path: Path, lan: Netns, signer: Signer
) -> None:
    """`apt-get source` with the README's line and its `deb-src` twin: the .dsc and its
    tarball come from the mirror, across the uplink once. The mirror served the Sources
    index and refused every file it names, right after the update: `404
    pool/main/h/hello-rk/hello-rk_1.0.dsc is in no Packages index this mirror holds
    (apt update first)`."""
    made = {"hello-rk_1.0_all.deb": make_deb(tmp_path / "build", "hello-rk", "1.0")}
    source = make_dsc("hello-rk", "1.0")
    root = tmp_path / "upstream"
    write_apt(root / "debian", "bookworm", made, signer, sources=source)
    with mirrored(tmp_path, root, lan) as (upstream, mirror, _admin):
        for round_ in ("online", "offline"):
            client = attendee_apt(tmp_path / f"apt-{round_}", mirror, signer, src=True)
            for command in (["update"], ["source", "--download-only", "hello-rk"]):
                done = client.run(*command, argv=lan.argv([]))
                assert done.returncode == 0, (round_, done.stdout, done.stderr)
                assert "E:" not in done.stderr and "W:" not in done.stderr, done.stderr
            for name, data in source.items():
                assert (client.state / "download" / name).read_bytes() == data, name
            if round_ == "online":
                asked = fetched(upstream.url)
                assert asked["/debian/pool/main/h/hello-rk/hello-rk_1.0.dsc"] == 1
                upstream.stop()


@NPM
def test_a_packument_slower_than_a_client_waits_lands_for_its_retry(
    tmp_path: Path, lan: Netns
) -> None:
    """A packument of 2,000 versions (1.3 MB) over a slow uplink (320 KiB/s), and a mirror
    whose clients wait 1 s for a page (index_timeout): npm's first try is told so, its
    retries get the packument, which crossed once. Cut at index_timeout, it crossed
    again for every retry and never landed: `504 upstream took over 1 s sending URL`
    however long npm tried."""
    root = tmp_path / "upstream"
    upstream = start_upstream(root)
    try:
        doc = write_npm(root, upstream.url, [make_npm_tarball("many-rk", "1.0.0")])["many-rk"]
        latest = doc["versions"]["1.0.0"]
        for i in range(2000):
            version = f"0.{i // 100}.{i % 100}"
            doc["versions"][version] = {**latest, "version": version, "description": "x" * 300}
        (root / "many-rk" / "index.json").write_text(json.dumps(doc))
        (root / ".behaviours.json").write_text(json.dumps({"/many-rk": "slow"}))
        mirror, _admin = start_mirror(
            tmp_path / "store", npm=upstream.url, listen=f"{lan.host}:0",
            extra="index_timeout = 1.0",
        )  # fmt: skip
        try:
            (tmp_path / "app").mkdir()
            (tmp_path / "app" / "package.json").write_text('{"name": "app", "version": "1.0.0"}')
            env = {**npm_env(tmp_path / "home"), "npm_config_cache": str(tmp_path / "cache")}
            install = ["npm", "install", "--registry", f"{mirror.url}npm/", "many-rk"]

            def npm(*options: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    lan.argv([*install, *options]), cwd=tmp_path / "app", env=env,
                    capture_output=True, text=True, timeout=120,
                )  # fmt: skip

            first = npm("--fetch-retries=0")
            then = npm("--fetch-retries=20", "--fetch-retry-mintimeout=500",
                       "--fetch-retry-maxtimeout=1000")  # fmt: skip
            said_to_npm = (
                f"npm error 504 upstream took over 1 s sending {upstream.url}many-rk; the"
                f" mirror goes on fetching it for the next try - GET {mirror.url}npm/many-rk"
            )
            assert said_to_npm in first.stderr, first.stderr
            assert then.returncode == 0, (then.stdout, then.stderr)
            installed = tmp_path / "app" / "node_modules" / "many-rk" / "package.json"
            assert json.loads(installed.read_text())["version"] == "1.0.0"
            assert fetched(upstream.url)["/many-rk"] == 1
        finally:
            mirror.stop()
    finally:
        upstream.stop()


@NPM
def test_npm_behind_a_login_portal_installs_what_is_held_and_says_why_not_the_rest(
    tmp_path: Path, lan: Netns
) -> None:
    """The uplink cut, the venue's portal answering with its login page: a scoped package
    the mirror holds installs, and one it never fetched is refused in words that say
    what answered (npm read `502 unreadable packument (JSONDecodeError)`)."""
    root = tmp_path / "upstream"
    upstream = start_upstream(root)
    try:
        write_npm(root, upstream.url, [make_npm_tarball("@rk/util", "2.0.0")])
        mirror, _admin = start_mirror(tmp_path / "store", npm=upstream.url, listen=f"{lan.host}:0")
        try:
            env = npm_env(tmp_path / "home")

            def npm(project: str, package: str) -> subprocess.CompletedProcess[str]:
                (tmp_path / project).mkdir()
                (tmp_path / project / "package.json").write_text('{"name": "app"}')
                argv = ["npm", "install", "--registry", f"{mirror.url}npm/", package,
                        "--fetch-retries=0", f"--cache={tmp_path / project / 'cache'}"]  # fmt: skip
                return subprocess.run(
                    lan.argv(argv), cwd=tmp_path / project, env=env, capture_output=True,
                    text=True, timeout=120,
                )  # fmt: skip

            assert npm("online", "@rk/util").returncode == 0
            upstream.stop()
            portal = tmp_path / "portal"
            for name in ("@rk/util", "@rk/other"):
                (portal / name).mkdir(parents=True)
                (portal / name / "index.html").write_text(LOGIN)
            stand_in = start_upstream(portal, urlsplit(upstream.url).port)
            try:
                held = npm("held", "@rk/util")
                assert held.returncode == 0, held.stderr
                other = npm("other", "@rk/other")
                said_to_npm = (
                    "npm error 502 upstream sent a page that is not @rk/other's packument"
                    f" (a login portal's?) - GET {mirror.url}npm/@rk%2fother"
                )
                assert said_to_npm in other.stderr, other.stderr
            finally:
                stand_in.stop()
        finally:
            mirror.stop()
    finally:
        upstream.stop()
