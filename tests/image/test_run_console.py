"""`retreatkit image run` twice for one image at once: each run has a console log of its
own (a fake qemu first on PATH: no guest boots here)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from retreatkit.admin import token as admin_token
from retreatkit.image import cpio, guestconfig, run
from retreatkit.image.testing import retreatkit_argv
from retreatkit.testing import Process, scratch_disk

INITRAMFS = cpio.initramfs({})  # the least initramfs that unpacks (image run unpacks it)

# qemu as `image run` sees it: the guest's console on stdout, then it waits to be stopped
FAKE_QEMU = """#!/bin/sh
printf 'guest pid %s says hello\\n' "$$"
read line
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "qemu-system-x86_64"
    fake.write_text(FAKE_QEMU)
    fake.chmod(0o755)
    return {
        "HOME": str(tmp_path),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A relay image as `image run` checks it (the fake qemu never reads its files)."""
    image = tmp_path / "relay-image"
    image.mkdir()
    manifest = {"service": "relay", "machine": "microvm", "ports": [["tcp", 9000]],
                "admin_port": 8080, "disk": False, "kernel": {"size_bytes": 0, "label": "test"},
                "initramfs": {"size_bytes": len(INITRAMFS)},
                "size_bytes": len(INITRAMFS)}  # fmt: skip
    (image / "manifest.json").write_text(json.dumps(manifest))
    (image / "kernel").write_bytes(b"")
    (image / "initramfs").write_bytes(INITRAMFS)
    (tmp_path / "retreat.toml").write_text('[images]\nnetwork = "user"\n')
    return image


def boots(tmp: Path, image: Path, env: dict[str, str], *more: str) -> None:
    """One `image run` whose (fake) guest says hello, then stopped."""
    run = Process.start(image_run(tmp, image, *more), env=env)
    try:
        run.wait_for(r"says hello")
    finally:
        run.stop()


def refused(tmp: Path, image: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """One `image run` expected to end before any guest boots."""
    return subprocess.run(image_run(tmp, image), capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})  # fmt: skip


def image_run(tmp: Path, image: Path, *more: str) -> list[str]:
    cfg = str(tmp / "retreat.toml")
    return retreatkit_argv("--config", cfg, "image", "run", str(image), "--forward",
                           "tcp:127.0.0.1:0:9000", *more)  # fmt: skip


def test_two_runs_of_one_image_each_keep_their_own_console_log(
    tmp_path: Path, image: Path, env: dict[str, str]
) -> None:
    consoles = tmp_path / "state" / "retreatkit" / "console"
    first = Process.start(image_run(tmp_path, image), env=env)
    second: Process | None = None
    try:
        said = first.wait_for(r"^Booting relay .*; console log (.*)$")
        assert said[1] == str(consoles / "relay.log")
        second = Process.start(image_run(tmp_path, image), env=env)
        said = second.wait_for(r"^Booting relay .*; console log (.*)$")
        assert said[1] == str(consoles / "relay-2.log")
        first.wait_for(r"says hello")
        second.wait_for(r"says hello")
        refused = subprocess.run(
            image_run(tmp_path, image, "--console", str(consoles / "relay.log")),
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
        )
        assert (refused.returncode, refused.stderr) == (
            1,
            f"retreatkit: the console log {consoles / 'relay.log'} is in use by another guest;"
            " pass another --console FILE\n",
        )
    finally:
        first.stop()
        if second is not None:
            second.stop()
    # their locks go with them: nothing is left beside the logs
    assert sorted(p.name for p in consoles.iterdir()) == ["relay-2.log", "relay.log"]
    logs = [(consoles / name).read_text() for name in ("relay.log", "relay-2.log")]
    for log in logs:  # one boot each, one guest's lines each
        assert log.count("--- boot at ") == 1
        assert log.count("says hello") == 1
    assert logs[0] != logs[1]


# a guest that does not stop when asked (its service hung)
DEAF_QEMU = """#!/bin/sh
printf 'guest pid %s says hello\\n' "$$"
exec sleep 600
"""


def test_a_guest_powered_off_by_a_second_ctrl_c_is_said_so(
    tmp_path: Path, image: Path, env: dict[str, str]
) -> None:
    """It read "Guest stopped", as a clean stop does."""
    (tmp_path / "bin" / "qemu-system-x86_64").write_text(DEAF_QEMU)
    booted = Process.start(image_run(tmp_path, image), env=env)
    try:
        booted.wait_for(r"says hello")
        booted.popen.send_signal(signal.SIGINT)
        booted.wait_for(r"^Stopping the guest cleanly \(Ctrl-C again powers it off\)$")
        booted.popen.send_signal(signal.SIGINT)
        code, lines = booted.finish(60)
    finally:
        booted.stop()
    assert (code, lines[-2:]) == (
        130,
        ["Guest powered off (Ctrl-C twice)", "retreatkit: interrupted"],
    )


def test_ctrl_c_stops_the_guest_cleanly_and_exits_130(
    tmp_path: Path, image: Path, env: dict[str, str]
) -> None:
    """As bob and the rest of the `retreatkit` command count a Ctrl-C (a shell's 128 +
    SIGINT): a script could not tell it from a guest that ran and ended well (exit 0)."""
    booted = Process.start(image_run(tmp_path, image), env=env)
    try:
        booted.wait_for(r"says hello")
        booted.popen.send_signal(signal.SIGINT)
        code, lines = booted.finish(60)
    finally:
        booted.stop()
    assert (code, lines[-3:]) == (
        130,
        [
            "Stopping the guest cleanly (Ctrl-C again powers it off)",
            "Guest stopped",
            "retreatkit: interrupted",
        ],
    )


# qemu that keeps what it was handed: its command line (the kernel's among it) and the
# guest's configuration disk, beside itself
KEEPING_QEMU = """#!/bin/sh
printf '%s\\n' "$@" > "$0.argv"
for a in "$@"; do
    case "$a" in file=*config.disk,*) f="${a#file=}"; cp "${f%%,*}" "$0.config";; esac
done
printf 'guest pid %s says hello\n' "$$"
read line
"""


def test_a_guest_is_given_a_token_of_its_own_never_the_hosts(
    tmp_path: Path, image: Path, env: dict[str, str]
) -> None:
    """The host's admin token was on every guest's configuration disk: a guest taken over
    (a mirror parses what the internet sends) held what acts on every service here."""
    qemu = tmp_path / "bin" / "qemu-system-x86_64"
    qemu.write_text(KEEPING_QEMU)
    host = admin_token.load_or_create(Path(env["XDG_STATE_HOME"]) / "retreatkit" / "admin-token")
    booted = Process.start(image_run(tmp_path, image), env=env)
    try:
        kept = Path(booted.wait_for(r"^The guest's own admin token is in (/\S+)$")[1])
        booted.wait_for(r"says hello")
        own = kept.read_text().strip()
        assert kept.stat().st_mode & 0o777 == 0o600
        assert kept.parent.stat().st_mode & 0o777 == 0o700
        booted.popen.send_signal(signal.SIGTERM)  # a stop asked for: no Ctrl-C, exit 0
        code, lines = booted.finish(60)
    finally:
        booted.stop()
    assert (code, lines[-1]) == (0, "Guest stopped")
    with qemu.with_name(qemu.name + ".config").open("rb") as disk:
        carried = guestconfig.read(disk).token
    assert carried == own != host
    assert len(own) == len(host)  # as random as the host's: 32 bytes, URL-safe
    argv = qemu.with_name(qemu.name + ".argv").read_text()
    console = tmp_path / "state" / "retreatkit" / "console" / "relay.log"
    for secret in (own, host):  # on neither the kernel's command line nor the console log
        assert secret not in argv
        assert secret not in console.read_text()
    assert console.stat().st_mode & 0o777 == 0o600
    assert console.parent.stat().st_mode & 0o777 == 0o700
    assert not kept.exists()  # gone with the run


# qemu that says which archive it was handed for the guest's root: its first bytes
INITRD_QEMU = """#!/bin/sh
while [ "$#" -gt 0 ]; do
    if [ "$1" = "-initrd" ]; then printf 'initrd starts %s\\n' "$(head -c 6 "$2")"; fi
    shift
done
read line
"""


def test_qemu_is_handed_the_archive_unpacked_and_a_damaged_one_is_one_line(
    tmp_path: Path, image: Path, env: dict[str, str]
) -> None:
    fake = tmp_path / "bin" / "qemu-system-x86_64"
    fake.write_text(INITRD_QEMU)
    run = Process.start(image_run(tmp_path, image), env=env)
    try:
        run.wait_for(r"^initrd starts 070701$")  # the newc archive, not zstd's frame
    finally:
        run.stop()
    (image / "initramfs").write_bytes(bytes(len(INITRAMFS)))  # the size the manifest says
    damaged = refused(tmp_path, image, env)
    assert damaged.returncode == 1
    assert damaged.stderr.startswith(
        f"retreatkit: {image} is not a whole image: its initramfs does not unpack ("
    )
    assert damaged.stderr.endswith("); build it again (retreatkit image build relay)\n")
    assert damaged.stderr.count("\n") == 1


def test_a_console_named_by_the_organiser_is_all_that_is_left_beside_it(
    tmp_path: Path, image: Path, env: dict[str, str]
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    for _ in range(2):
        boots(tmp_path, image, env, "--console", str(logs / "r.log"))
    assert [p.name for p in logs.iterdir()] == ["r.log"]
    (logs / "r.log.lock").write_bytes(b"")  # left by a run killed outright: taken over
    boots(tmp_path, image, env, "--console", str(logs / "r.log"))
    assert [p.name for p in logs.iterdir()] == ["r.log"]


@pytest.mark.parametrize("part", ["kernel", "initramfs"])
def test_a_part_changed_at_the_same_size_is_refused_by_its_manifests_hash(
    tmp_path: Path, image: Path, env: dict[str, str], part: str
) -> None:
    """A copy damaged in place (a bad sector, a sync cut short) keeps its size: the
    SHA-256 the build wrote says so before qemu boots a kernel that panics naming
    neither."""
    doc = json.loads((image / "manifest.json").read_text())
    kernel = b"\x00" * 64
    (image / "kernel").write_bytes(kernel)
    doc["kernel"].update(size_bytes=len(kernel), sha256=hashlib.sha256(kernel).hexdigest())
    doc["initramfs"]["sha256"] = hashlib.sha256(INITRAMFS).hexdigest()
    (image / "manifest.json").write_text(json.dumps(doc))
    boots(tmp_path, image, env)  # as built, it boots
    damaged = bytearray((image / part).read_bytes())
    damaged[-1] ^= 0x01
    (image / part).write_bytes(damaged)
    said = refused(tmp_path, image, env)
    named = doc[part]["sha256"][:16]
    got = hashlib.sha256(damaged).hexdigest()[:16]
    assert (said.returncode, said.stderr) == (
        1,
        f"retreatkit: {image} is not the image it was built as: its {part} is not the one"
        f" manifest.json names (its SHA-256 is {got}..., not {named}...); build it again"
        " (retreatkit image build relay)\n",
    )


# qemu whose guest says more as it stops than a page of the log's disk takes
LAST_WORDS_QEMU = """#!/bin/sh
printf 'guest pid %s says hello\\n' "$$"
read line
i=0
while [ "$i" -lt 200 ]; do echo "the guest stopping, line $i of its last words"; i=$((i+1)); done
"""
ROOT = os.geteuid() == 0


def full_but_for(log: Path) -> None:
    """`log` ends a page of its disk exactly, and someone else's file takes the rest."""
    with log.open("ab") as out:
        out.write(b"#" * (-log.stat().st_size % os.statvfs(log.parent).f_frsize))
    st = os.statvfs(log.parent)
    (log.parent / "filler").write_bytes(bytes(st.f_bavail * st.f_frsize))


@pytest.mark.skipif(not ROOT, reason="a full disk needs a tmpfs mount (root)")
def test_a_console_log_whose_disk_fills_loses_lines_not_the_guest(
    tmp_path: Path, image: Path, env: dict[str, str]
) -> None:
    """A console that nobody reads stalls the guest at its next line; the log's full disk
    ended the reading, and the run ended in a traceback."""
    (tmp_path / "bin" / "qemu-system-x86_64").write_text(LAST_WORDS_QEMU)
    with scratch_disk("1m") as disk:
        log = disk / "relay.log"
        booted = Process.start(image_run(tmp_path, image, "--console", str(log)), env=env)
        try:
            booted.wait_for(r"says hello")
            full_but_for(log)
            booted.popen.send_signal(signal.SIGINT)
            code, lines = booted.finish(60)
        finally:
            booted.stop()
    assert not any("Traceback" in line for line in lines), lines
    assert "the guest stopping, line 199 of its last words" in lines  # all of it read
    lost = sum(len(f"the guest stopping, line {i} of its last words\n") for i in range(200))
    assert (code, lines[-3:]) == (
        130,
        [
            f"Its console log {log} lost {lost} bytes of its lines (No space left on device)",
            "Guest stopped",
            "retreatkit: interrupted",
        ],
    )


@pytest.mark.skipif(not ROOT, reason="a full disk needs a tmpfs mount (root)")
def test_a_console_log_with_no_room_is_one_line_before_qemu_starts(
    tmp_path: Path, image: Path, env: dict[str, str]
) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    with scratch_disk("1m") as disk:
        log = disk / "relay.log"
        log.write_bytes(b"an earlier boot\n")
        full_but_for(log)
        done = subprocess.run(
            image_run(tmp_path, image, "--console", str(log)),
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env, "TMPDIR": str(temporary)},
        )
    assert (done.returncode, done.stderr) == (
        1,
        f"retreatkit: cannot write the console log {log}: No space left on device\n",
    )
    assert list(temporary.iterdir()) == []  # nothing unpacked left behind


@pytest.mark.skipif(not ROOT, reason="a full disk needs a tmpfs mount (root)")
def test_a_console_log_says_what_it_lost_once_it_has_room_again() -> None:
    with scratch_disk("1m") as disk:
        log = run.ConsoleLog(disk / "relay.log")
        log.keep(b"booted\n")
        full_but_for(log.path)
        log.keep(b"x" * 5000)
        (disk / "filler").unlink()
        log.keep(b"later\n")
        kept = log.path.read_bytes()
    assert kept.endswith(b"\n--- 5000 bytes of console lost: No space left on device ---\nlater\n")
    assert kept.startswith(b"booted\n#") and b"x" not in kept
    assert (log.lost, log.why) == (5000, "No space left on device")


@pytest.mark.skipif(not ROOT, reason="a full disk needs a tmpfs mount (root)")
def test_a_console_log_loses_whole_chunks_and_counts_exactly_what_it_lacks() -> None:
    """A log that does not end a page of its disk: the disk took the chunk up to the end
    of that page and refused the rest, so the log kept a piece of the chunk while its count
    said all of it was lost (and a piece of the note, when the note was what did not fit)."""
    with scratch_disk("1m") as disk:
        log = run.ConsoleLog(disk / "relay.log")
        log.keep(b"booted\n")
        st = os.statvfs(disk)
        (disk / "filler").write_bytes(bytes(st.f_bavail * st.f_frsize))
        log.keep(b"x" * 5000)
        log.keep(b"y" * 5000)
        assert log.path.read_bytes() == b"booted\n"
        (disk / "filler").unlink()
        log.keep(b"later\n")
        kept = log.path.read_bytes()
    note = b"\n--- 10000 bytes of console lost: No space left on device ---\n"
    assert kept == b"booted\n" + note + b"later\n"
    assert (log.lost, log.why) == (10000, "No space left on device")
