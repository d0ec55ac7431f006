"""Whether a suite's release files are signed as apt would take them: gpgv's verdict with
the keys the mirror trusts (this machine's apt's, and `apt_keyrings`).

The mirror cannot vouch for an archive (attendees' apt checks the signature), but it
can tell a Release apt would refuse from one it took. A new one that fails where the one
held verified (a byte changed on the way, a push gone wrong, a key nobody here trusts)
would replace, for every attendee, a Release apt takes with one it refuses (`The
repository ... is not signed`): held back instead, as an index that fails its hash is.
Without gpgv, or with no key that verifies the held one, nothing is judged.

`judge` and `dearmored` are pure; `Keys.verdict` runs gpgv, blocking: call it offloaded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("retreatkit.mirror")

GPGV_TIMEOUT = 30.0  # seconds: a Release of 150 kB takes gpgv milliseconds
MAX_KEYRING = 16 * 1024 * 1024  # bytes of one keyring file (Debian's whole one is 300 kB)
MAX_VERDICTS = 256  # release files judged, remembered by their bytes
_ARMOR = re.compile(
    rb"-----BEGIN PGP PUBLIC KEY BLOCK-----(.*?)-----END PGP PUBLIC KEY BLOCK-----", re.S
)
_KEYID = re.compile(r"^[0-9A-Fa-f]{8,40}$")


@dataclass(frozen=True, slots=True)
class Verdict:
    good: bool
    words: str = ""  # what is wrong, in apt's own terms (`BADSIG 87B3A5F1B756CF7D`)


def judge(status: str) -> Verdict:
    """gpgv's `--status-fd` lines as apt reads them: good with a good signature and no
    bad one (a signature by a key not held beside a good one is fine: Debian signs with
    several keys, and a machine may lack one)."""
    seen: dict[str, str] = {}
    for line in status.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "[GNUPG:]" and _KEYID.match(parts[2]):
            seen.setdefault(parts[1], parts[2].upper())
    if "BADSIG" in seen:
        return Verdict(False, f"does not verify (BADSIG {seen['BADSIG']})")
    if "GOODSIG" in seen:
        return Verdict(True)
    for kind, what in (("EXPKEYSIG", "an expired key"), ("REVKEYSIG", "a revoked key")):
        if kind in seen:
            return Verdict(False, f"is signed by {what} ({kind} {seen[kind]})")
    if "NO_PUBKEY" in seen:
        return Verdict(
            False,
            f"is signed by a key the mirror does not trust (NO_PUBKEY {seen['NO_PUBKEY']}):"
            " a key attendees trust goes in apt_keyrings",
        )
    return Verdict(False, "carries no signature gpgv can check")


def dearmored(data: bytes) -> bytes:
    """A keyring file's keys as gpgv reads them: binary as it is, or the armored blocks of
    an `.asc` (RFC 4880 6.2: headers, a blank line, base64, a checksum line) decoded."""
    if not data.lstrip().startswith(b"-----BEGIN"):
        return data
    out = []
    for block in _ARMOR.findall(data):
        lines = block.decode("ascii", "replace").strip().splitlines()
        if "" in lines:  # the armor headers (Comment:, Version:) end at the blank line
            lines = lines[lines.index("") + 1 :]
        body = "".join(line.strip() for line in lines if not line.startswith("="))
        try:
            out.append(base64.b64decode(body))
        except (binascii.Error, ValueError):
            continue
    return b"".join(out)


def signed_files(files: Mapping[str, bytes]) -> dict[str, bytes]:
    """What apt checks of a suite's release files: InRelease, else Release.gpg over
    Release; none to check when neither is there (an unsigned archive)."""
    if "InRelease" in files:
        return {"InRelease": files["InRelease"]}
    if "Release" in files and "Release.gpg" in files:
        return {"Release.gpg": files["Release.gpg"], "Release": files["Release"]}
    return {}


class Keys:
    """The keys the mirror trusts, read when first wanted, and gpgv's verdicts on release
    files, remembered by their bytes (each Release is judged once however many ask)."""

    def __init__(self, keyrings: list[Path], gpgv: str | None = None) -> None:
        self.keyrings = keyrings
        self.gpgv = gpgv if gpgv is not None else shutil.which("gpgv")
        self._keys: bytes | None = None
        self._verdicts: dict[tuple[str, ...], Verdict] = {}

    def keys(self) -> bytes:
        if self._keys is None:
            found = []
            for path in self.keyrings:
                try:
                    with path.open("rb") as f:
                        data = f.read(MAX_KEYRING + 1)
                except OSError:
                    continue
                if len(data) <= MAX_KEYRING:
                    found.append(dearmored(data))
            self._keys = b"".join(found)
        return self._keys

    def verdict(self, files: Mapping[str, bytes]) -> Verdict | None:
        """gpgv's verdict on a suite's release files (name -> bytes); None when there is
        nothing to judge with or nothing signed, or gpgv failed to run."""
        signed = signed_files(files)
        if self.gpgv is None or not signed or not self.keys():
            return None
        key = tuple(hashlib.sha256(body).hexdigest() for body in signed.values())
        found = self._verdicts.get(key)
        if found is None:
            found = self._run(self.gpgv, signed)
            if found is None:  # gpgv did not run: asked again next time
                return None
            while len(self._verdicts) >= MAX_VERDICTS:
                del self._verdicts[next(iter(self._verdicts))]
            self._verdicts[key] = found
        return found

    def _run(self, gpgv: str, signed: Mapping[str, bytes]) -> Verdict | None:
        with tempfile.TemporaryDirectory(prefix="retreatkit-gpgv-") as tmp:
            folder = Path(tmp)
            (folder / "trusted.gpg").write_bytes(self.keys())
            for name, body in signed.items():
                (folder / name).write_bytes(body)
            argv = [gpgv, "--homedir", tmp, "--status-fd", "1",
                    "--keyring", str(folder / "trusted.gpg"), *signed]  # fmt: skip
            try:
                done = subprocess.run(
                    argv, cwd=tmp, capture_output=True, timeout=GPGV_TIMEOUT, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                log.warning("cannot check an apt Release's signature: gpgv: %s", exc)
                return None
        return judge(done.stdout.decode("utf-8", "replace"))
