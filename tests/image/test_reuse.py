"""`up` uses an image again while nothing it is built from changed, and says which it does.

A fake apt-cache stands in for apt (the packages' versions), a file in a cache of the
test's own for our kernel, and a fake qemu for the guest (it prints what a relay's
console would, then waits to be told to stop). Real images: tests/e2e/test_images.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from retreatkit.image import cpio, inputs, kernel, sqlitelib
from retreatkit.image.testing import manifest, retreatkit_argv
from retreatkit.testing import Process

INITRAMFS = cpio.initramfs({})  # the least initramfs that unpacks (a boot unpacks it)
KERNEL = b"not a kernel: the fake qemu boots none"
# apt-cache show --no-all-versions NAME...: the stanza of each name the versions file beside
# it holds (NAME=VERSION lines); a name it does not hold, apt knows nothing of
FAKE_APT_CACHE = """#!/bin/sh
shift 2
for name in "$@"; do
  version=$(sed -n "s/^$name=//p" "$0.versions")
  [ -n "$version" ] && printf 'Package: %s\\nVersion: %s\\nFilename: pool/%s.deb\\n\\n' \\
    "$name" "$version" "$name"
done
exit 0
"""
FAKE_QEMU = """#!/bin/sh
printf 'Relay listening on 0.0.0.0:9000\\nAdmin on http://0.0.0.0:8080/status\\n'
read line
"""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's home, cache and PATH: our kernel built, apt and qemu faked."""
    for var, sub in (("HOME", ""), ("XDG_STATE_HOME", "state"), ("XDG_DATA_HOME", "data"),
                     ("XDG_CACHE_HOME", "cache")):  # fmt: skip
        monkeypatch.setenv(var, str(tmp_path / sub))
    built = tmp_path / "cache" / "retreatkit" / "kernel" / f"{kernel.config_key()}-6.1.0-1"
    built.mkdir(parents=True)
    (built / "bzImage").write_bytes(KERNEL)
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, text in (("apt-cache", FAKE_APT_CACHE), ("qemu-system-x86_64", FAKE_QEMU)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    (folder / "apt-cache.versions").write_text("libc6=2.36-9\n")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def built_image(
    folder: Path, service: str, built_at: float, sqlite: sqlitelib.Library | None = None
) -> None:
    """An image in `folder` with the record `image build` leaves beside it, built from
    what a build would take here now (libc6 2.36-9, our kernel, this kit; `sqlite` and
    libsqlite3-0 3.40.1-2 where given)."""
    folder.mkdir(parents=True)
    doc = manifest(service, len(KERNEL), len(INITRAMFS))
    doc["kernel"].update(
        label=f"retreatkit 6.1.0-1 (config {kernel.config_key()})", sha256=_sha256(KERNEL)
    )
    doc["initramfs"]["sha256"] = _sha256(INITRAMFS)
    doc["packages"] = [["libc6", "2.36-9", "0" * 64]]
    if sqlite is not None:
        doc["packages"].append([sqlitelib.BINARY, "3.40.1-2", "0" * 64])
        doc["sqlite"] = sqlite.identity()
    (folder / "manifest.json").write_text(json.dumps(doc))
    (folder / "kernel").write_bytes(KERNEL)
    (folder / "initramfs").write_bytes(INITRAMFS)
    inputs.record(folder, inputs.of_build(service, inputs.common(), doc), 29.3)
    record = json.loads((folder / inputs.INPUTS).read_text())
    (folder / inputs.INPUTS).write_text(json.dumps({**record, "built_at": built_at}))


def test_an_image_is_used_again_only_while_what_it_is_built_from_is_unchanged(
    home: Path,
) -> None:
    image = home / "images" / "relay"
    built_image(image, "relay", time.time())

    def reusable() -> bool:
        return inputs.priors([(image, "relay")], "auto")[image].reusable

    assert reusable()
    record = json.loads((image / inputs.INPUTS).read_text())
    assert (record["seconds"], record["packages"]) == (29.3, {"libc6": "2.36-9"})
    # apt has a newer libc6: a build would take it
    versions = home / "bin" / "apt-cache.versions"
    versions.write_text("libc6=2.36-9+deb12u1\n")
    assert not reusable()
    versions.write_text("libc6=2.36-9\n")
    assert reusable()
    for changed in ("kernel", "initramfs"):  # a file changed since: not the image recorded
        original = (image / changed).read_bytes()
        (image / changed).write_bytes(original[:-1] + b"!")
        assert not reusable()
        (image / changed).write_bytes(original)
    assert reusable()
    # another gcc first on the PATH: it would link the guest's interpreter again
    (home / "bin" / "gcc").write_text("#!/bin/sh\nexit 1\n")
    (home / "bin" / "gcc").chmod(0o755)
    assert not reusable()
    (home / "bin" / "gcc").unlink()
    assert reusable()
    for key, other in (("kit", {"version": "0.0.1", "files": "0" * 64}),  # the code changed
                       ("kernel", {**record["kernel"], "sha256": "0" * 64})):  # fmt: skip
        (image / inputs.INPUTS).write_text(json.dumps({**record, key: other}))
        assert not reusable()
    assert inputs.priors([(image, "relay")], "debian")[image] == inputs.Prior(
        False, record["built_at"], 29.3
    )  # another kernel asked for; and no record at all is none
    (image / inputs.INPUTS).unlink()
    assert inputs.priors([(image, "relay")], "auto")[image] == inputs.NONE


def test_an_image_with_our_sqlite_is_used_again_only_while_that_library_is_unchanged(
    home: Path,
) -> None:
    (home / "bin" / "apt-cache.versions").write_text("libc6=2.36-9\nlibsqlite3-0=3.40.1-2\n")
    ours = sqlitelib.folder("3.40.1-2") / sqlitelib.SONAME
    ours.parent.mkdir(parents=True)
    ours.write_bytes(b"our SQLite, as built")
    built = sqlitelib.own("3.40.1-2")
    assert built is not None
    image = home / "images" / "mirror"
    built_image(image, "mirror", time.time(), built)

    def reusable() -> bool:
        return inputs.priors([(image, "mirror")], "auto")[image].reusable

    assert reusable()
    record = json.loads((image / inputs.INPUTS).read_text())
    assert record["sqlite"] == {
        "kind": "own",
        "label": f"retreatkit build of sqlite3 3.40.1-2 (options {sqlitelib.options_key()})",
        "sha256": _sha256(b"our SQLite, as built"),
    }
    ours.write_bytes(b"our SQLite, built again with other options")  # a build would take it
    assert not reusable()
    ours.write_bytes(b"our SQLite, as built")
    assert reusable()
    ours.unlink()  # none built: a build would take Debian's
    assert not reusable()


def test_up_uses_the_image_it_built_and_names_the_guest_it_stopped_when_the_next_fails(
    home: Path,
) -> None:
    """Every start rebuilt each image, one after the other, without a word (the nameserver's
    DNS was down a minute at each restart); and with the relay's guest up, a stop while the
    nameserver's image built said only `Stopped: mirror`. Here the nameserver's build
    fails (apt knows none of its packages), which ends the start the same way."""
    images = home / "images"
    built_at = time.mktime((2026, 7, 1, 9, 30, 5, 0, 0, -1))
    built_image(images / "relay", "relay", built_at)
    config = home / "retreat.toml"
    config.write_text(
        "".join(f'[{s}]\nlisten = "127.0.0.1:0"\n' for s in ("admin", "relay", "nameserver"))
        + f'[mirror]\nlisten = "127.0.0.1:0"\nstore = "{home / "store"}"\n'
        'pypi = "http://127.0.0.1:1/simple/"\nopam = "http://127.0.0.1:1/opam"\n'
        f'[images]\nrun = ["relay", "nameserver"]\nmemory = 64\nnetwork = "user"\n'
        f'dir = "{images}"\n'
    )
    up = Process.start(retreatkit_argv("--config", str(config), "up", "--no-tui"))
    try:
        code, lines = up.finish(120)
    finally:
        if up.popen.poll() is None:
            up.popen.send_signal(signal.SIGINT)
            up.stop()
    assert f"Using the relay image built at 2026-07-01 09:30 ({images / 'relay'})" in lines
    building = lines.index("Building the nameserver image...")  # its first build: no estimate
    assert re.match(r"^Guest relay starting; admin on http://127\.0\.0\.1:\d+/status$",
                    lines[building - 1])  # fmt: skip
    assert not any(line.startswith("Image ") for line in lines), lines  # nothing was built
    assert code == 1, lines
    assert lines[-2:] == [
        "Stopped: mirror, vm (guest relay)",
        "retreatkit: cannot start: the nameserver guest: cannot fetch python3.11-minimal:"
        " apt knows no package python3.11-minimal",
    ]
