"""Moving a cache: `retreatkit mirror export` from one store, `import` into an empty one with
a byte flipped in one blob of the bundle: the import names exactly that blob, and the
store it made serves the rest with no upstream at all."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from retreatkit.mirror import bundle, fakeupstream
from retreatkit.mirror.testing import mirror_client, settings, write_pypi
from tests.mirror.conftest import JSON, wheel_set


def cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"HOME": str(home), "XDG_STATE_HOME": str(home / "state"), "PATH": "/usr/bin:/bin"}
    argv = [sys.executable, "-m", "retreatkit.cli.main", "mirror", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


async def test_export_import_a_damaged_blob_is_named_and_the_rest_served(tmp_path: Path) -> None:
    wheels = wheel_set()
    write_pypi(tmp_path / "upstream", {name: [w] for name, w in wheels.items()})
    urls = {}
    async with fakeupstream.serving(tmp_path / "upstream") as upstream:
        config = settings(tmp_path / "home-store", f"{upstream.url}simple/")
        async with mirror_client(config) as (client, _):
            for name in ("demo-dep", "big-pkg"):
                r = await client.get(f"/pypi/simple/{name}/", headers={"Accept": JSON})
                urls[name] = (await r.json(content_type=None))["files"][0]["url"]
                assert await (await client.get(urls[name])).read() == wheels[name][1]
        gone = upstream.url

    usb = tmp_path / "usb" / "retreat"
    done = cli("export", "--store", str(tmp_path / "home-store"), str(usb), home=tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("Exported 4 files (") and done.stdout.endswith(
        f" to {usb}; 0 already there.\n"
    )
    again = cli("export", "--store", str(tmp_path / "home-store"), str(usb), home=tmp_path)
    assert again.stdout == f"Exported 0 files (0 B) to {usb}; 4 already there.\n"  # resumes

    dep = hashlib.sha256(wheels["demo-dep"][1]).hexdigest()
    blob = usb / "blobs" / "sha256" / dep[:2] / dep
    damaged = bytearray(blob.read_bytes())
    damaged[1000] ^= 0x01
    blob.write_bytes(bytes(damaged))
    got = hashlib.sha256(damaged).hexdigest()

    venue = tmp_path / "venue-store"
    done = cli("import", "--store", str(venue), str(usb), home=tmp_path)
    lines = done.stdout.splitlines()
    assert done.returncode == 1, done
    assert lines[0].startswith("Imported 3 files (") and lines[0].endswith(
        f" into {venue}; 0 already there."
    )
    key = "pypi/" + urls["demo-dep"].removeprefix("/pypi/files/")
    assert lines[1:] == [
        f"damaged: {key}: sha256 mismatch: expected {dep}, got {got}; skipped",
        "1 file was damaged and skipped: the mirror fetches them again when their upstream"
        " is reachable.",
    ]

    config = settings(venue, f"{gone}simple/")  # the upstream is gone
    async with mirror_client(config) as (client, mirror):
        r = await client.get(urls["big-pkg"])
        assert (r.status, await r.read()) == (200, wheels["big-pkg"][1])
        r = await client.get("/pypi/simple/demo-dep/", headers={"Accept": JSON})
        assert r.status == 200  # the page came through whole
        r = await client.get(urls["demo-dep"])
        assert r.status == 504  # not held, and its upstream cannot be reached
        assert mirror.store.source(key) is not None  # but known: fetched once it can be


def test_what_is_not_a_bundle_or_not_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "holiday.jpg").write_bytes(b"x")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "index.sqlite").touch()
    with pytest.raises(bundle.BundleError, match="is not empty: give a new or empty folder"):
        bundle.export(tmp_path / "store", tmp_path / "full")
    done = cli("import", "--store", str(tmp_path / "s2"), str(tmp_path / "full"), home=tmp_path)
    assert (done.returncode, done.stderr) == (
        1,
        f"retreatkit: {tmp_path / 'full'} is not a complete bundle (no retreatkit-bundle.json):"
        " export it again\n",
    )
