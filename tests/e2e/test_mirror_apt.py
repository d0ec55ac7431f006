"""Real apt-get through a real mirror from a real (local, signed) archive, then with the
archive stopped: as a `deb` line and as `Acquire::http::Proxy`.

apt-get runs on an attendee's machine (a network namespace that reaches the mirror at a
non-loopback address of this machine) with every folder of its own: the host's apt
state, sources and configuration are never read or written. In the proxy form the
sources line names the archive as `localhost`, which the attendee's machine cannot reach
itself: every byte comes through the mirror.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from retreatkit.mirror.testing import Netns, start_mirror, start_upstream
from retreatkit.mirror.testrepos import AptClient, Signer, make_deb, write_apt
from tests.e2e.mirror_attendee import attendee, fetched

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("apt-get", "dpkg-scanpackages", "gpg")),
        reason="apt-get, dpkg-dev and gpg are needed (.ci/run installs them)",
    ),
]


lan = attendee("a")


def test_apt_get_updates_and_downloads_through_the_mirror_online_then_offline(
    tmp_path: Path, lan: Netns, signer: Signer
) -> None:
    deb = make_deb(tmp_path / "build", "hello-rk", "1.0", pad=20_000)
    root = tmp_path / "upstream"
    write_apt(root / "debian", "stable", {"hello-rk_1.0_all.deb": deb}, signer)
    upstream = start_upstream(root)
    origin = upstream.url.replace("127.0.0.1", "localhost") + "debian"
    mirror, _admin = start_mirror(
        tmp_path / "store", apt={"debian": origin}, ttl=0, listen=f"{lan.host}:0"
    )
    try:
        assert mirror.url.startswith(f"http://{lan.host}:")
        key = signer.keyring
        forms = {
            "deb line": (f"deb [signed-by={key}] {mirror.url}debian stable main", []),
            "proxy": (
                f"deb [signed-by={key}] {origin} stable main",
                ["-o", f"Acquire::http::Proxy={mirror.url}"],
            ),
        }
        for round_ in ("online", "offline"):
            for form, (line, options) in forms.items():
                apt = AptClient(tmp_path / f"apt-{form.replace(' ', '-')}-{round_}")
                apt.sources(line)
                for command in (["update"], ["download", "hello-rk"]):
                    done = apt.run(*options, *command, argv=lan.argv([]))
                    assert done.returncode == 0, (round_, form, done.stdout, done.stderr)
                    assert "W:" not in done.stderr and "E:" not in done.stderr, done.stderr
                got = apt.state / "download" / "hello-rk_1.0_all.deb"
                assert got.read_bytes() == deb, (round_, form)
            if round_ == "online":
                counts = fetched(upstream.url)
                assert counts["/debian/pool/main/h/hello-rk/hello-rk_1.0_all.deb"] == 1
                assert not any(path.endswith("/Packages.xz") for path in counts)  # by hash
                upstream.stop()
    finally:
        mirror.stop()
        upstream.stop()
