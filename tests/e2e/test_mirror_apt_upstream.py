"""Real apt-get through a real mirror process whose upstream misbehaves while attendees
update: a Release that comes slower than apt waits, and a new Release apt would refuse
(its signature does not verify, or a key nobody trusts signed it).

Each attendee is a network namespace that reaches the mirror at a non-loopback address;
apt-get has every folder of its own (AptClient), so the host's apt is never touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.request
from pathlib import Path

import pytest

from retreatkit.mirror.testing import Netns, said
from retreatkit.mirror.testrepos import Signer, make_deb, write_apt
from tests.e2e.mirror_attendee import attendee, attendee_apt, mirrored

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("apt-get", "dpkg-scanpackages", "gpg", "gpgv")),
        reason="apt-get, dpkg-dev, gpg and gpgv are needed (.ci/run installs them)",
    ),
]

lan = attendee("u", prefix="aptwalk")
SUITE = "bookworm"
# apt's own default (Acquire::http::Timeout): AptClient shortens it for the other tests
APT_TIMEOUT = ["-o", "Acquire::http::Timeout=30"]


def publish(root: Path, debs: dict[str, bytes], signer: Signer) -> Path:
    """The archive written again and pushed an hour after the last: its dists folder."""
    dists = root / "debian" / "dists" / SUITE
    before = (dists / "InRelease").stat().st_mtime if (dists / "InRelease").exists() else 0
    write_apt(root / "debian", SUITE, debs, signer)
    for name in ("InRelease", "Release", "Release.gpg"):
        os.utime(dists / name, (before + 3600, before + 3600))
    return dists


def warnings(admin: str) -> list[str]:
    """The mirror's warnings but the one about bob's install line (this store holds no kit)."""
    with urllib.request.urlopen(f"{admin}/status", timeout=30) as r:
        found: list[str] = json.load(r)["mirror"]["warnings"]
    return [w for w in found if not w.startswith("bob is not offered on the attendee page:")]


def test_a_release_slower_than_apt_waits_is_said_before_apt_gives_up(
    tmp_path: Path, lan: Netns, signer: Signer
) -> None:
    """An uplink that brings the InRelease a byte a second, to a mirror that holds none.
    apt gives up on 30 s of silence, asks once more on a new connection, and after 60 s
    said only `Connection failed` (240 s, with its three retries), while the mirror would
    have answered at 60 s (index_timeout): it answers apt in time, in words."""
    root = tmp_path / "upstream"
    debs = {"hello-rk_1.0_all.deb": make_deb(tmp_path / "build", "hello-rk", "1.0")}
    dists = publish(root, debs, signer)
    slow = "/" + str((dists / "InRelease").relative_to(root))
    (root / ".behaviours.json").write_text(json.dumps({slow: "trickle"}))
    with mirrored(tmp_path, root, lan) as (upstream, mirror, _admin):
        apt = attendee_apt(tmp_path / "apt", mirror, signer)
        done = apt.run(*APT_TIMEOUT, "update", argv=lan.argv([]))
        url = f"{upstream.url}debian/dists/{SUITE}/InRelease"
        line = (
            f"Failed to fetch {mirror.url}debian/dists/{SUITE}/InRelease  504  upstream took"
            f" over 20 s sending {url}; the mirror goes on fetching it for the next try"
        )
        assert line in done.stderr, (done.stdout, done.stderr)


@pytest.mark.parametrize("fault", ["bad signature", "unknown key"])
def test_a_new_release_apt_would_refuse_does_not_replace_the_one_held(
    tmp_path: Path, lan: Netns, signer: Signer, fault: str
) -> None:
    """The upstream publishes a Release whose InRelease does not verify (a byte changed
    on the way, a push gone wrong) or is signed by a key nobody trusts. It replaced the
    one held: an attendee updating for the first time got `The repository ... is not
    signed` and could install nothing, online or, once the uplink went, ever."""
    root, build = tmp_path / "upstream", tmp_path / "build"
    debs = {"hello-rk_1.0_all.deb": make_deb(build, "hello-rk", "1.0")}
    publish(root, debs, signer)
    trusted = f'apt_keyrings = ["{signer.keyring}"]'
    with mirrored(tmp_path, root, lan, ttl=0, extra=trusted) as (upstream, mirror, admin):
        first = attendee_apt(tmp_path / "apt-1", mirror, signer)
        for command in (["update"], ["install", "-y", "hello-rk"]):
            assert first.run(*command, argv=lan.argv([])).returncode == 0
        newer = {**debs, "hello-rk_1.1_all.deb": make_deb(build, "hello-rk", "1.1")}
        if fault == "bad signature":
            dists = publish(root, newer, signer)
            text = (dists / "InRelease").read_text()
            (dists / "InRelease").write_text(text.replace("Description: an", "Description: An"))
            keyid = signer.keyid
            words = f"does not verify (BADSIG {keyid})"
        else:
            stranger = Signer.make(tmp_path / "gnupg-stranger")
            try:
                publish(root, newer, stranger)
            finally:
                stranger.close()
            keyid = stranger.keyid
            words = (
                f"is signed by a key the mirror does not trust (NO_PUBKEY {keyid}): a key"
                " attendees trust goes in apt_keyrings"
            )
        second = attendee_apt(tmp_path / "apt-2", mirror, signer)
        for command in (["update"], ["install", "-y", "hello-rk"]):
            done = second.run(*command, argv=lan.argv([]))
            assert done.returncode == 0, (done.stdout, done.stderr)
            assert "W:" not in done.stderr and "E:" not in done.stderr, done.stderr
        assert "Setting up hello-rk (1.0) ..." in done.stdout
        again = first.run("update", argv=lan.argv([]))
        assert again.returncode == 0 and "W:" not in again.stderr, again.stderr
        why = f"the upstream's InRelease {words}"
        said(mirror, re.escape(f"apt debian/{SUITE}: serving its last Release stale: {why}") + "$")
        held = (
            f"apt debian/{SUITE}: still serving its last complete Release; the upstream's"
            f" newer one is held back: {why}"
        )
        assert held in warnings(admin)
        upstream.stop()  # the uplink gone: the Release apt takes is still the one served
        third = attendee_apt(tmp_path / "apt-3", mirror, signer)
        for command in (["update"], ["install", "-y", "hello-rk"]):
            done = third.run(*command, argv=lan.argv([]))
            assert done.returncode == 0, (done.stdout, done.stderr)


def test_a_release_signed_again_as_the_held_one_was_replaces_it(
    tmp_path: Path, lan: Netns, signer: Signer
) -> None:
    """The check holds back only what apt would refuse: the next good push is served."""
    root, build = tmp_path / "upstream", tmp_path / "build"
    debs = {"hello-rk_1.0_all.deb": make_deb(build, "hello-rk", "1.0")}
    publish(root, debs, signer)
    trusted = f'apt_keyrings = ["{signer.keyring}"]'
    with mirrored(tmp_path, root, lan, ttl=0, extra=trusted) as (_upstream, mirror, admin):
        first = attendee_apt(tmp_path / "apt-1", mirror, signer)
        assert first.run("update", argv=lan.argv([])).returncode == 0
        publish(root, {**debs, "hello-rk_1.1_all.deb": make_deb(build, "hello-rk", "1.1")}, signer)
        for command in (["update"], ["install", "-y", "hello-rk"]):
            done = first.run(*command, argv=lan.argv([]))
            assert done.returncode == 0, (done.stdout, done.stderr)
            assert "W:" not in done.stderr and "E:" not in done.stderr, done.stderr
        assert "Setting up hello-rk (1.1) ..." in done.stdout
        assert warnings(admin) == []
