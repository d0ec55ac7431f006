"""Whether a Release is signed as apt would take it: gpgv's status read as apt reads it,
keyrings armored or not, the keys this machine's apt trusts, and real gpgv verdicts."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from retreatkit.mirror import upstreams
from retreatkit.mirror.apt_keys import Keys, Verdict, dearmored, judge, signed_files
from retreatkit.mirror.testrepos import Signer

needs_gpg = pytest.mark.skipif(
    not (shutil.which("gpg") and shutil.which("gpgv")), reason="gpg and gpgv are needed"
)
KEYID = "87B3A5F1B756CF7D"


def status(*lines: str) -> str:
    return "".join(f"[GNUPG:] {line}\n" for line in lines)


def test_gpgv_status_is_read_as_apt_reads_it() -> None:
    good = f"GOODSIG {KEYID} retreatkit tests <nobody@example.invalid>"
    assert judge(status("NEWSIG", good, f"VALIDSIG {'A' * 40} 2024-06-01")) == Verdict(True)
    # one of Debian's keys missing beside a good signature by another is still good
    assert judge(status("ERRSIG 1111222233334444 22 10 01 0 9", "NO_PUBKEY 1111222233334444",
                        good)) == Verdict(True)  # fmt: skip
    assert judge(status(f"BADSIG {KEYID} someone", good)) == Verdict(
        False, f"does not verify (BADSIG {KEYID})"
    )
    assert judge(status(f"NO_PUBKEY {KEYID}")) == Verdict(
        False,
        f"is signed by a key the mirror does not trust (NO_PUBKEY {KEYID}): a key attendees"
        " trust goes in apt_keyrings",
    )
    assert judge(status(f"EXPKEYSIG {KEYID} x")) == Verdict(
        False, f"is signed by an expired key (EXPKEYSIG {KEYID})"
    )
    assert judge(status(f"REVKEYSIG {KEYID} x")) == Verdict(
        False, f"is signed by a revoked key (REVKEYSIG {KEYID})"
    )
    # nothing usable (no signature, words of gpgv's own, a key ID an upstream made up)
    for text in ("", "gpgv: no signature found\n", status("BADSIG \x1b[2J x")):
        assert judge(text) == Verdict(False, "carries no signature gpgv can check")


def test_what_apt_checks_of_a_suite() -> None:
    assert signed_files({"InRelease": b"i", "Release": b"r", "Release.gpg": b"g"}) == {
        "InRelease": b"i"
    }
    assert signed_files({"Release": b"r", "Release.gpg": b"g"}) == {
        "Release.gpg": b"g", "Release": b"r"
    }  # fmt: skip
    assert signed_files({"Release": b"r"}) == {}


@needs_gpg
def test_an_armored_keyring_is_the_binary_one(signer: Signer) -> None:
    env = {**os.environ, "GNUPGHOME": str(signer.home)}
    armored = subprocess.run(
        ["gpg", "--batch", "--armor", "--export"], check=True, capture_output=True, env=env
    ).stdout
    assert armored.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert dearmored(armored) == signer.keyring.read_bytes()
    assert dearmored(signer.keyring.read_bytes()) == signer.keyring.read_bytes()
    assert dearmored(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!!\n") == b""


@needs_gpg
def test_real_gpgv_verdicts(tmp_path: Path, signer: Signer) -> None:
    release = tmp_path / "Release"
    release.write_text("Origin: t\nSuite: stable\nDescription: an archive\n")
    signer.sign(release)
    files = {n: (tmp_path / n).read_bytes() for n in ("InRelease", "Release", "Release.gpg")}
    keys = Keys([signer.keyring])
    assert keys.verdict(files) == Verdict(True)
    detached = {n: files[n] for n in ("Release", "Release.gpg")}
    assert keys.verdict(detached) == Verdict(True)
    changed = files["InRelease"].replace(b"an archive", b"An archive")
    assert keys.verdict({"InRelease": changed}) == Verdict(
        False, f"does not verify (BADSIG {signer.keyid})"
    )
    assert Keys([tmp_path / "none.gpg"]).verdict(files) is None  # no key: nothing judged
    assert Keys([signer.keyring], gpgv="").verdict(files) is None  # no gpgv on this machine
    assert keys.verdict({"Release": files["Release"]}) is None  # an unsigned archive


def test_the_keyrings_this_machines_apt_trusts(tmp_path: Path) -> None:
    root, shared = tmp_path / "etc-apt", tmp_path / "keyrings"
    for folder in (root / "trusted.gpg.d", root / "sources.list.d", shared):
        folder.mkdir(parents=True)
    made = [root / "trusted.gpg.d" / "debian.asc", root / "trusted.gpg.d" / "local.gpg"]
    made += [shared / n for n in ("debian.gpg", "docker.gpg", "a.gpg", "b.gpg")]
    for path in made:
        path.write_bytes(b"key")
    (root / "sources.list").write_text(
        f"deb [arch=amd64 signed-by={shared / 'docker.gpg'}] http://d.example/ stable main\n"
        f"# deb [signed-by={shared / 'commented.gpg'}] http://x.example/ s main\n"
        f"deb [signed-by={shared / 'a.gpg'},{shared / 'b.gpg'}] http://e.example/ s main\n"
    )
    (root / "sources.list.d" / "debian.sources").write_text(
        f"Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n"
        f"Signed-By: {shared / 'debian.gpg'}\n\nTypes: deb\nURIs: http://f.example/\n"
        "Signed-By: 0123456789ABCDEF0123456789ABCDEF01234567\n"
        f"\nSigned-By: {shared / 'missing.gpg'}\n"
    )
    assert upstreams.apt_keyrings(root) == [
        root / "trusted.gpg.d" / "local.gpg", root / "trusted.gpg.d" / "debian.asc",
        shared / "docker.gpg", shared / "a.gpg", shared / "b.gpg", shared / "debian.gpg",
    ]  # fmt: skip
    assert upstreams.apt_keyrings(tmp_path / "nothing") == []
