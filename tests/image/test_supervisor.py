"""The supervisor's parts that need no guest, in process: what `up` tells attendees about
its guests, how a guest's end is told, when it is given up, names and answers a client
gets, each boot in the console log. Real guests boot in tests/e2e/test_images.py."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import json
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from retreatkit import config, serve
from retreatkit.admin import noted
from retreatkit.admin import token as admin_token
from retreatkit.admin.app import make_app
from retreatkit.admin.logs import LogRing
from retreatkit.cli import vm
from retreatkit.image import bootcache, cpio, guestconfig, run, vmservice
from retreatkit.image import qemu as qemu_module
from retreatkit.image.paths import private_dir
from retreatkit.image.supervisor import Definition, Restarts, Supervised, Supervisor
from retreatkit.image.testing import manifest, retreatkit_argv
from retreatkit.image.vmservice import Handlers
from retreatkit.testing import Process, fill, scratch_disk
from retreatkit.tui.app import Dashboard
from retreatkit.tui.sources import Endpoint
from retreatkit.tui.testing import Clock, actions_done, settle
from retreatkit.tui.widgets import Lines, Table

INITRAMFS = cpio.initramfs({})  # the least initramfs that unpacks (image run unpacks it)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var, sub in (("HOME", ""), ("XDG_STATE_HOME", "state"), ("XDG_DATA_HOME", "data")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    return tmp_path


def test_up_guests_are_reached_where_their_listen_says() -> None:
    cfg = config.load(None)
    cfg["images"]["run"] = ["relay", "nameserver"]
    cfg["nameserver"]["listen"] = "192.0.2.10:53"
    guests = vmservice.guests_for_up(cfg, None, "192.0.2.10")
    assert guests.attendee_addresses() == {
        "relay": ("0.0.0.0", 9000),
        "nameserver": ("192.0.2.10", 53),
    }


class Guests:
    """A supervisor as serve() sees one, its guests running `services` (no qemu here)."""

    name = "vm"

    def __init__(self, addresses: dict[str, tuple[str, int]]) -> None:
        self.addresses = addresses

    async def start(self, registry: CollectorRegistry, say: serve.Say) -> None:
        pass

    async def stop(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {"up": True}

    def attendee_addresses(self) -> dict[str, tuple[str, int]]:
        return self.addresses


ALL = {"relay": ("0.0.0.0", 9000), "mirror": ("0.0.0.0", 8000), "nameserver": ("0.0.0.0", 53)}


@pytest.mark.parametrize(
    ("addresses", "expected", "reached"),
    [
        (ALL, [
            "bob relay: relay.retreat.lan:9000 (192.0.2.10:9000)",
            "package mirror: http://mirror.retreat.lan:8000/ (its page shows the pip, uv, opam,"
            " npm and apt lines)",
            "DNS server: 192.0.2.10 port 53 (hand it out by DHCP)",
        ], {"relay": "192.0.2.10:9000", "mirror": "192.0.2.10:8000",
            "nameserver": "192.0.2.10:53"}),
        ({"relay": ("127.0.0.1", 41235)}, [
            "bob relay: 127.0.0.1:41235 (loopback only: attendees cannot reach it)",
        ], {"relay": "127.0.0.1:41235"}),
    ],
)  # fmt: skip
async def test_attendees_are_told_of_services_run_as_guests(
    home: Path,
    addresses: dict[str, tuple[str, int]],
    expected: list[str],
    reached: dict[str, str],
) -> None:
    said: list[str] = []
    overview: list[str] = []
    shown: dict[str, str] = {}  # beside each service on the overview

    async def dashboard(url: str, token: str, stop: object) -> None:
        def read() -> None:  # what the dashboard's overview shows
            request = urllib.request.Request(
                f"{url}/status", headers={"Authorization": f"Bearer {token}"}
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                process = json.load(answer)["process"]
                overview.extend(process["attendees"])
                shown.update(process["addresses"])

        await asyncio.to_thread(read)

    try:
        code = await serve.serve(
            [Guests(addresses)], ("127.0.0.1", 0), said.append, dashboard, lan="192.0.2.10"
        )
    finally:
        gc.unfreeze()
    assert code == 0
    start = said.index("Attendees use:")
    assert said[start + 1 : start + 1 + len(expected)] == [f"  {line}" for line in expected]
    assert said[start + 1 + len(expected)] == "Stopping..."
    assert overview == expected
    assert shown == reached


def test_a_guest_whose_kernel_panicked_is_told_so() -> None:
    """Out of memory, a guest's kernel panics and qemu (-no-reboot) exits 0: the exit
    says why, from the console, not "qemu exit code 0"."""
    last = run.LastLine()
    for chunk in (
        b"Relay listening on 0.0.0.0:9000\r\n",
        b"Kernel panic - not syncing: System is dead",
        b"locked on memory\r\nKernel Offset: disabled\n",
    ):
        last.feed(run.printable(chunk))
    assert last.panic == "System is deadlocked on memory"
    assert run.describe_exit(0, last.text, last.panic) == (
        "the guest's kernel panicked: System is deadlocked on memory; give it more memory"
    )
    assert run.describe_exit(-9, last.text, last.panic) == "killed by signal 9"


def test_a_qemu_killed_with_sigterm_is_told_so() -> None:
    """`kill QEMU_PID` from outside: qemu catches SIGTERM, says so and exits 0, as a guest
    that powered off does; the exit is the signal's, not "qemu exit code 0"."""
    last = run.LastLine()
    for chunk in (
        b"Relay listening on 0.0.0.0:9000\r\nAdmin on http://0.0.0.0:8080/status\r\n",
        b"qemu-system-x86_64: terminating on signal 15 from pid 24492 (bash)\n",
    ):
        last.feed(run.printable(chunk))
    assert run.describe_exit(0, last.text) == "killed by signal 15"
    # qemu's error exit keeps its own words; a guest's line that only mentions it is no kill
    assert run.describe_exit(1, last.text) == (
        "qemu exit code 1: qemu-system-x86_64: terminating on signal 15 from pid 24492 (bash)"
    )
    assert run.describe_exit(0, "relay: terminating on signal 15") == "qemu exit code 0"


def test_a_guest_whose_service_failed_is_told_so() -> None:
    """A guest whose /init or service fails says why on its console and resets, and qemu
    (-no-reboot) exits 0: the exit is the guest's reason, not "qemu exit code 0"."""
    last = run.LastLine()
    for chunk in (
        b"EXT4-fs (vdb): VFS: Can't find ext4 filesystem\r\n",
        b"OSError: [Errno 22] /var/lib/retreatkit: Invalid argument\r\n",
        b"retreatkit: the guest failed: [Errno 22] /var/lib/retreatkit: Inv",
        b"alid argument\r\nretreatkit: guest stopping (exit code 1)\r\n",
        b"reboot: Restarting system\r\n",
    ):
        last.feed(run.printable(chunk))
    assert last.failed == "[Errno 22] /var/lib/retreatkit: Invalid argument"
    assert run.describe_exit(0, last.text, last.panic, last.failed) == (
        "the guest failed: [Errno 22] /var/lib/retreatkit: Invalid argument"
    )
    assert run.describe_exit(-9, last.text, last.panic, last.failed) == "killed by signal 9"


def test_how_a_guest_ended_is_told_in_one_bounded_line() -> None:
    last = run.LastLine()
    for chunk in (b"Booting\n", b"qemu: initrd is too large, cannot ", b"support.\n", b"\n  \n"):
        last.feed(chunk)
    assert last.text == "qemu: initrd is too large, cannot support."
    assert run.describe_exit(1, last.text) == (
        "qemu exit code 1: qemu: initrd is too large, cannot support."
    )
    assert run.describe_exit(-9, last.text) == "killed by signal 9"
    assert run.describe_exit(0, last.text) == "qemu exit code 0"  # the guest powered off
    assert run.describe_exit(1, "") == "qemu exit code 1"
    flood = run.LastLine()  # a guest that never ends a line
    for _ in range(100):
        flood.feed(b"x" * 4096)
    flood.feed(b" the end")
    assert flood.text == "..." + "x" * 149 + " the end"


def test_vm_list_says_how_each_guest_last_ended() -> None:
    guest = {
        "name": "r9", "service": "relay", "state": "failed", "uptime_seconds": 0.0,
        "restarts": 0, "memory_bytes": 0, "cpu_seconds": 0.0, "admin": "http://127.0.0.1:41235",
        "pid": None, "last_exit": "qemu exit code 1: qemu: initrd is too large, cannot support.",
    }  # fmt: skip
    assert vm.table([guest]).splitlines() == [
        "NAME  SERVICE  STATE   UPTIME  RESTARTS  MEMORY  CPU    ADMIN                   LAST EXIT",
        "r9    relay    failed  -       0         -       0.0 s  http://127.0.0.1:41235  "
        "qemu exit code 1: qemu: initrd is too large, cannot support.",
    ]


def test_a_guest_dying_at_each_start_is_given_up_after_five() -> None:
    policy = Restarts()
    assert [policy.after_exit(0.4) for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert policy.after_exit(3.0) is None  # 15 s of waiting and five starts, then no more
    assert policy.given_up() == "5 exits in a row within 10 s of the start"
    lived = Restarts()  # a guest that served a while starts again at once, and afresh
    assert [lived.after_exit(s) for s in (1, 1, 600, 1, 1, 1, 1)] == [1, 2, 0, 1, 2, 4, 8]
    assert lived.after_exit(9.9) is None


@pytest.mark.parametrize(
    ("sent", "shown"),
    [("..%2F..%2Fetc", "'../../etc'"), ("bad%2Fname", "'bad/name'"), ("r1%0A", "'r1\\n'"),
     ("R1", "'R1'"), ("x" * 200, "'" + "x" * 39)],
)  # fmt: skip
async def test_the_supervisor_refuses_a_bad_name_whatever_a_client_sends(
    home: Path, sent: str, shown: str
) -> None:
    supervisor = Supervisor(home / "vm")
    definition = {"image": str(home), "forwards": []}
    async with TestClient(TestServer(Handlers(supervisor).control_app())) as client:
        for method, path in (("PUT", ""), ("PATCH", ""), ("GET", ""), ("POST", "/start"),
                             ("POST", "/stop")):  # fmt: skip
            answer = await client.request(method, f"/vm/guests/{sent}{path}", json=definition)
            assert (answer.status, await answer.text()) == (
                400,
                f"bad guest name {shown}: a guest name is 1-32 of a-z, 0-9 and -, starting with"
                " a letter or digit\n",
            )
    assert not list(home.rglob("guest.json")) and supervisor.guests == {}


async def test_a_definition_nested_past_the_recursion_limit_is_one_line(home: Path) -> None:
    supervisor = Supervisor(home / "vm")
    async with TestClient(TestServer(Handlers(supervisor).control_app())) as client:
        answer = await client.put("/vm/guests/r1", data=b"[" * 4000 + b"]" * 4000)
        assert (answer.status, await answer.text()) == (
            400,
            "a guest definition is a JSON object\n",
        )
    assert supervisor.guests == {}


async def test_starting_or_redefining_a_running_guest_is_one_answer(home: Path) -> None:
    supervisor = Supervisor(home / "vm")
    for state in ("running", "restarting"):  # as a guest under qemu is (none runs here)
        supervisor.guests["r1"] = Supervised(Definition("r1", "/x", []), state=state)
        async with TestClient(TestServer(Handlers(supervisor).control_app())) as client:
            start = await client.post("/vm/guests/r1/start")
            define = await client.put("/vm/guests/r1", json={"image": "/y", "forwards": []})
            change = await client.patch("/vm/guests/r1", json={"memory_mb": 256})
            for answer in (start, define, change):
                assert (answer.status, await answer.text()) == (
                    409,
                    f"guest r1 is {state}: stop it first (retreatkit vm stop r1)\n",
                )
    assert supervisor.guests["r1"].definition.image == "/x"
    assert supervisor.guests["r1"].definition.memory_mb == 128


def test_a_guest_says_where_its_service_is_forwarded_from(home: Path) -> None:
    """For the dashboard's overview, which showed every guest of an image at the address
    of `up`'s guest of that service."""
    supervisor = Supervisor(home / "vm")
    for name, service, forwards in (
        ("r1", "relay", ["tcp:0.0.0.0:19200:9000"]),
        ("dns", "nameserver", ["tcp:127.0.0.1:5353:53", "udp:192.0.2.1:5353:53"]),
    ):
        image = home / f"{name}-image"
        image.mkdir()
        (image / "manifest.json").write_text(json.dumps(manifest(service)))
        supervisor.define(Definition(name, str(image), forwards))
    assert supervisor.item("r1")["address"] == "0.0.0.0:19200"
    assert supervisor.item("dns")["address"] == "192.0.2.1:5353"  # DNS is UDP first


def test_each_boot_is_marked_on_a_line_of_its_own_in_the_console_log(tmp_path: Path) -> None:
    when = datetime.datetime(
        2026, 7, 1, 9, 30, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
    )
    log = run.ConsoleLog(tmp_path / "r1" / "console.log")
    log.mark(run.boot_line(when))
    log.write(b"Relay listening on 0.0.0.0:9000\nAdmin on http")  # then qemu is killed
    log.mark(run.boot_line(when + datetime.timedelta(seconds=70)))
    assert log.path.read_text().splitlines() == [
        "--- boot at 2026-07-01T09:30:05+02:00 ---",
        "Relay listening on 0.0.0.0:9000",
        "Admin on http",
        "--- boot at 2026-07-01T09:31:15+02:00 ---",
    ]


async def test_a_known_mirror_guest_is_refused_less_than_its_floor(home: Path) -> None:
    image = home / "mirror-image"
    image.mkdir()
    (image / "manifest.json").write_text(json.dumps(manifest("mirror")))
    supervisor = Supervisor(home / "vm")
    supervisor.define(Definition("m1", str(image), [], memory_mb=128))
    async with TestClient(TestServer(Handlers(supervisor).control_app())) as client:
        # what `vm start m1 --memory 56` sends
        change = await client.patch("/vm/guests/m1", json={"memory_mb": 56})
        assert (change.status, await change.text()) == (
            400,
            "memory_mb 56: the mirror image needs at least 64 MB (in less it runs out of"
            " memory as it starts)\n",
        )
    assert supervisor.guests["m1"].definition.memory_mb == 128


async def test_a_guest_whose_manifest_is_not_whole_is_one_answer(home: Path) -> None:
    """Defined or started, a guest whose image's manifest lacks a key, or has one of
    another kind, is told so in one line: it was a 500 and a traceback in the log."""
    image = home / "relay-image"
    image.mkdir()
    (image / "manifest.json").write_text(json.dumps({**manifest("relay"), "kernel": None}))
    supervisor = Supervisor(home / "vm")
    async with TestClient(TestServer(Handlers(supervisor).control_app())) as client:
        define = await client.put("/vm/guests/r1", json={"image": str(image), "forwards": []})
        assert (define.status, await define.text()) == (
            400,
            f"{image} is not a whole image: manifest.json's kernel is null, not an object;"
            " build it again (retreatkit image build relay)\n",
        )
        (image / "manifest.json").write_text(json.dumps(manifest("relay")))
        define = await client.put("/vm/guests/r1", json={"image": str(image), "forwards": []})
        assert define.status == 200
        (image / "manifest.json").write_text("[]")  # rebuilt meanwhile, and cut short
        start = await client.post("/vm/guests/r1/start")
        assert (start.status, await start.text()) == (
            400,
            f"cannot start r1: {image} is not a whole image: manifest.json holds [], not an"
            " object; build it again (retreatkit image build SERVICE)\n",
        )
        listed = await client.get("/vm/guests")
        assert [g["state"] for g in (await listed.json())["guests"]] == ["stopped"]


@pytest.mark.skipif(os.geteuid() != 0, reason="a full disk needs a tmpfs mount (root)")
async def test_a_definition_the_state_disk_has_no_room_for_is_one_answer(home: Path) -> None:
    """`vm start NAME IMAGE` with the state folder's disk full: a 500 and a traceback in
    supervisor.log, and a guest.json cut to nothing, which lost the guest it defined."""
    image = home / "relay-image"
    image.mkdir()
    (image / "manifest.json").write_text(json.dumps(manifest("relay")))
    with scratch_disk("1m") as disk:
        supervisor = Supervisor(disk / "vm")
        supervisor.define(Definition("r1", str(image), []))
        fill(disk)
        async with TestClient(TestServer(Handlers(supervisor).control_app())) as client:
            for name in ("r2", "r1"):  # a new guest, and one defined again
                body = {"image": str(image), "forwards": [], "memory_mb": 256}
                answer = await client.put(f"/vm/guests/{name}", json=body)
                saved = disk / "vm" / name / "guest.json"
                assert (answer.status, await answer.text()) == (
                    500,
                    f"cannot keep guest {name}'s definition in {saved}: No space left on device\n",
                )
        assert supervisor.guests["r1"].definition.memory_mb == 128
        assert sorted(supervisor.guests) == ["r1"]
        kept = Supervisor(disk / "vm")  # the next supervisor finds it as it was
        assert [(n, e.definition.memory_mb) for n, e in kept.guests.items()] == [("r1", 128)]
        assert [p.name for p in (disk / "vm").rglob("*")] == ["r1", "guest.json"]


async def test_a_stopped_guest_is_removed_and_a_running_one_is_not(home: Path) -> None:
    image = home / "relay-image"
    image.mkdir()
    (image / "manifest.json").write_text(json.dumps(manifest("relay")))
    supervisor = Supervisor(home / "vm")
    for name in ("r1", "r2"):
        supervisor.define(Definition(name, str(image), []))
    supervisor.guests["r2"].state = "running"  # as a guest under qemu is (none runs here)
    async with TestClient(TestServer(Handlers(supervisor).control_app())) as client:
        gone = await client.delete("/vm/guests/r1")
        kept = await client.delete("/vm/guests/r2")
        unknown = await client.delete("/vm/guests/r9")
        assert (gone.status, await gone.json()) == (200, {"removed": "r1"})
        assert (kept.status, await kept.text()) == (
            409,
            "guest r2 is running: stop it first (retreatkit vm stop r2)\n",
        )
        assert unknown.status == 404
    assert sorted(supervisor.guests) == ["r2"]
    assert not (home / "vm" / "r1").exists() and (home / "vm" / "r2" / "guest.json").exists()
    # a supervisor started later finds only what is left
    assert sorted(Supervisor(home / "vm").guests) == ["r2"]


# qemu as the supervisor sees it: the guest's console on stdout, then its end. With
# `<itself>.panics` beside it the kernel panics at boot; else it serves until told to stop.
FAKE_QEMU = """#!/bin/sh
if [ -e "$0.keeps" ]; then  # what it was handed: its command line, the configuration disk
  printf '%s\\n' "$@" > "$0.argv"
  for a in "$@"; do
    case "$a" in file=*config.disk,*) f="${a#file=}"; cp "${f%%,*}" "$0.config";; esac
  done
fi
if [ -e "$0.panics" ]; then
  printf 'Kernel panic - not syncing: System is deadlocked on memory\\n'
  exit 0
fi
if [ -e "$0.boots-for-ever" ]; then
  read line
  exit 0
fi
printf 'Relay listening on 0.0.0.0:9000\\nAdmin on http://0.0.0.0:8080/status\\n'
read line
"""
PANIC = "the guest's kernel panicked: System is deadlocked on memory; give it more memory"


@pytest.fixture
def qemu(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake qemu-system-x86_64 first on PATH (no guest boots in these tests)."""
    folder = home / "bin"
    folder.mkdir()
    fake = folder / "qemu-system-x86_64"
    fake.write_text(FAKE_QEMU)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return fake


@pytest.fixture
def ring(caplog: pytest.LogCaptureFixture) -> Iterator[LogRing]:
    """The admin endpoint's log ring, as `serve` gives a process with the vm service."""
    caplog.set_level(logging.INFO, "retreatkit")
    ring = LogRing(services=("vm",))
    logging.getLogger("retreatkit").addHandler(ring)
    yield ring
    logging.getLogger("retreatkit").removeHandler(ring)


def relay_guest(home: Path, restart: bool) -> Definition:
    image = home / "relay-image"
    image.mkdir()
    (image / "manifest.json").write_text(json.dumps(manifest("relay", 0, len(INITRAMFS))))
    (image / "kernel").write_bytes(b"")
    (image / "initramfs").write_bytes(INITRAMFS)
    toml = home / "retreat.toml"
    toml.write_text('[images]\nnetwork = "user"\n')
    return Definition("r1", str(image), [], memory_mb=64, restart=restart, config=str(toml))


def told(ring: LogRing) -> list[tuple[str, str, str]]:
    """(service, level, message) of each record /logs sends, as the dashboard shows them."""
    return [(r["service"], r["level"], r["message"]) for r in ring.after(0)[1]]


async def until_told(ring: LogRing, line: str) -> None:
    async with asyncio.timeout(60):
        while line not in [message for _, _, message in told(ring)]:
            await ring.wait(ring.next - 1, 60)


async def test_a_guest_panicking_at_each_start_reaches_the_dashboards_logs(
    home: Path, qemu: Path, ring: LogRing
) -> None:
    qemu.with_name(qemu.name + ".panics").touch()
    supervisor = Supervisor(home / "vm", restarts=lambda: Restarts(0.0))
    supervisor.define(relay_guest(home, restart=True))
    keeper = (await supervisor.start("r1")).keeper
    assert keeper is not None
    await asyncio.wait_for(keeper, 60)
    admin = supervisor.item("r1")["admin"]
    assert told(ring) == [
        ("vm", "INFO", f"Guest r1 starting; admin on {admin}/status"),
        *(("vm", "WARNING", f"Guest r1 exited ({PANIC}); restart {n}") for n in range(1, 5)),
        ("vm", "WARNING", f"Guest r1 exited ({PANIC}); 5 exits in a row within 10 s of the"
                          " start: not restarted"),
    ]  # fmt: skip
    # how it ended outlives the supervisor that saw it (`vm list` with none running)
    assert Supervisor(home / "vm").item("r1")["last_exit"] == PANIC


async def test_a_guest_started_stopped_and_ended_by_itself_reaches_the_dashboards_logs(
    home: Path, qemu: Path, ring: LogRing
) -> None:
    supervisor = Supervisor(home / "vm")
    supervisor.define(relay_guest(home, restart=False))
    admin = supervisor.item("r1")["admin"]
    await supervisor.start("r1")
    await until_told(ring, f"Guest r1 up; admin on {admin}/status")
    unpacked = sorted(bootcache.folder().iterdir())  # what qemu was handed, kept for next time
    assert [p.suffix for p in unpacked] == [".cpio"]
    await supervisor.stop("r1")
    await supervisor.stop("r1")  # stopped already: nothing more to tell
    qemu.with_name(qemu.name + ".panics").touch()
    keeper = (await supervisor.start("r1")).keeper
    assert keeper is not None
    await asyncio.wait_for(keeper, 60)
    assert sorted(bootcache.folder().iterdir()) == unpacked  # unpacked once, not per boot
    assert told(ring) == [
        ("vm", "INFO", f"Guest r1 starting; admin on {admin}/status"),
        ("vm", "INFO", f"Guest r1 up; admin on {admin}/status"),
        ("vm", "INFO", "Guest r1 stopped"),
        ("vm", "INFO", f"Guest r1 starting; admin on {admin}/status"),
        ("vm", "WARNING", f"Guest r1 stopped by itself ({PANIC})"),
    ]


async def test_a_guest_whose_image_is_cut_short_is_not_restarted_and_says_why(
    home: Path, qemu: Path, ring: LogRing
) -> None:
    """Its image rebuilt or copied over while it ran and cut short (the copy interrupted):
    at the restart the supervisor says so, and the guest is failed, not left restarting."""
    supervisor = Supervisor(home / "vm", restarts=lambda: Restarts(0.0))
    definition = relay_guest(home, restart=True)
    supervisor.define(definition)
    admin = supervisor.item("r1")["admin"]
    keeper = (await supervisor.start("r1")).keeper
    assert keeper is not None
    await until_told(ring, f"Guest r1 up; admin on {admin}/status")
    (Path(definition.image) / "initramfs").write_bytes(b"\x28\xb5")
    os.kill(supervisor.item("r1")["pid"], signal.SIGKILL)
    await asyncio.wait_for(keeper, 60)
    why = (
        f"could not start: {definition.image} is not a whole image: its initramfs is 2 bytes"
        f" where manifest.json says {len(INITRAMFS)}; build it again (retreatkit image build relay)"
    )
    assert told(ring)[-1] == ("vm", "WARNING", f"Guest r1 not restarted ({why})")
    assert (supervisor.item("r1")["state"], supervisor.item("r1")["last_exit"]) == ("failed", why)
    await supervisor.stop("r1")
    assert supervisor.item("r1")["state"] == "stopped"


async def test_a_guest_that_cannot_restart_for_its_token_is_failed_and_says_why(
    home: Path, qemu: Path, ring: LogRing
) -> None:
    """The guest's admin token made readable by others while the guest ran, then its qemu
    killed: the restart could not render its configuration, and the guest was left
    "restarting" with no qemu, its stop a 500 and a supervisor meant to end with it running
    on."""
    idle: list[bool] = []
    supervisor = Supervisor(home / "vm", lambda: idle.append(True), lambda: Restarts(0.0))
    supervisor.define(relay_guest(home, restart=True))
    admin = supervisor.item("r1")["admin"]
    keeper = (await supervisor.start("r1")).keeper
    assert keeper is not None
    await until_told(ring, f"Guest r1 up; admin on {admin}/status")
    token = home / "vm" / "r1" / "admin-token"
    token.chmod(0o644)
    os.kill(supervisor.item("r1")["pid"], signal.SIGKILL)
    await asyncio.wait_for(keeper, 60)
    why = f"could not start: the admin token {token} is open to others: chmod 600 {token}"
    assert told(ring)[-1] == ("vm", "WARNING", f"Guest r1 not restarted ({why})")
    assert (supervisor.item("r1")["state"], supervisor.item("r1")["last_exit"]) == ("failed", why)
    assert idle == [True]  # a supervisor `vm start` left in the background ends
    async with TestClient(TestServer(Handlers(supervisor).control_app())) as client:
        start = await client.post("/vm/guests/r1/start")  # the same, asked for
        assert (start.status, await start.text()) == (400, f"cannot start r1: {why[17:]}\n")
        stop = await client.post("/vm/guests/r1/stop")
        assert (stop.status, (await stop.json())["state"]) == (200, "stopped")


async def test_each_guest_is_given_a_token_of_its_own_never_the_hosts(
    home: Path, qemu: Path, ring: LogRing
) -> None:
    """Every guest was given the host's admin token: a guest taken over (a mirror parses
    what the internet sends) held what starts and stops every guest and sets every
    service's log level on the host. Its own is kept by the supervisor, this user's alone,
    and given to the dashboard (GET /vm/guests/NAME/token) for the host's token only."""
    host = admin_token.load_or_create()
    qemu.with_name(qemu.name + ".keeps").touch()
    supervisor = Supervisor(home / "vm")
    definition = relay_guest(home, restart=False)
    supervisor.define(definition)
    supervisor.define(Definition("r2", definition.image, [], memory_mb=64))
    admin = supervisor.item("r1")["admin"]
    carried = []
    for _ in range(2):  # the same at each start: a dashboard watching it keeps its token
        await supervisor.start("r1")
        await until_told(ring, f"Guest r1 up; admin on {admin}/status")
        await supervisor.stop("r1")
        with qemu.with_name(qemu.name + ".config").open("rb") as disk:
            carried.append(guestconfig.read(disk).token)
    own = carried[0]
    kept = home / "vm" / "r1" / "admin-token"
    assert carried == [own, own] and own != host
    assert kept.read_text() == own + "\n" and kept.stat().st_mode & 0o777 == 0o600
    assert supervisor.token("r2") not in (own, host)  # one each
    argv = qemu.with_name(qemu.name + ".argv").read_text()
    console = home / "vm" / "r1" / "console.log"
    for secret in (own, host):  # on neither the kernel's command line nor the console log
        assert secret not in argv
        assert secret not in console.read_text()
    assert console.stat().st_mode & 0o777 == 0o600

    app = make_app(CollectorRegistry(), {}, Handlers(supervisor).admin_routes(), token=host)
    async with TestClient(TestServer(app)) as client:
        anyone = await client.get("/vm/guests/r1/token")  # open reads on loopback: not this
        assert (anyone.status, await anyone.text()) == (401, "this needs the admin token\n")
        listed = await client.get("/vm/guests")
        assert own not in await listed.text()
        asked = await client.get("/vm/guests/r1/token", headers={"Authorization": f"Bearer {host}"})
        assert (asked.status, await asked.json()) == (200, {"token": own})
        wrong = await client.get("/vm/guests/r1/token", headers={"Authorization": f"Bearer {own}"})
        assert wrong.status == 401  # a guest's own token opens nothing of its host's


@pytest.mark.parametrize(
    ("broken", "said"),
    [((qemu_module, "accel"), "stopped by itself"),  # as it boots
     ((run, "ConsoleLog"), "failed")],  # before: its console log is opened once for all boots
)  # fmt: skip
async def test_a_guest_whose_start_fails_unforeseen_is_failed_and_says_why(
    home: Path,
    qemu: Path,
    ring: LogRing,
    monkeypatch: pytest.MonkeyPatch,
    broken: tuple[object, str],
    said: str,
) -> None:
    """Whatever ends a guest's start, it ends failed with the reason told, not running."""

    def fault(*args: object) -> None:
        raise LookupError("no such thing")

    monkeypatch.setattr(*broken, fault)
    idle: list[bool] = []
    supervisor = Supervisor(home / "vm", lambda: idle.append(True))
    supervisor.define(relay_guest(home, restart=False))
    keeper = (await supervisor.start("r1")).keeper
    assert keeper is not None
    await asyncio.wait_for(keeper, 60)
    why = "could not start: LookupError: no such thing"
    assert told(ring)[-1] == ("vm", "WARNING", f"Guest r1 {said} ({why})")
    assert (supervisor.item("r1")["state"], supervisor.item("r1")["last_exit"]) == ("failed", why)
    assert idle == [True]
    await supervisor.stop("r1")
    assert supervisor.item("r1")["state"] == "stopped"


def test_a_guests_line_reads_on_stderr_as_it_is_said(home: Path) -> None:
    """On stderr (and so in supervisor.log) a guest's line is the line alone, as before it
    was a log record; other records keep their time, logger and level."""
    console = serve.ConsoleFormatter()
    said = logging.LogRecord("retreatkit.vm", logging.WARNING, __file__, 1,
                             "Guest r1 exited (killed by signal 9); restart 1", None, None,
                             )  # fmt: skip
    said.__dict__.update(serve.SAID)
    assert console.format(said) == "Guest r1 exited (killed by signal 9); restart 1"
    other = logging.LogRecord("retreatkit.vm", logging.INFO, __file__, 1, "no guest left", None,
                              None)  # fmt: skip
    assert console.format(other).endswith(" retreatkit.vm INFO no guest left")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`retreatkit ARGS` in this test's home, with the fake qemu first on PATH."""
    return subprocess.run(retreatkit_argv(*args), capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip


async def test_a_guests_restarts_outlive_its_supervisor_until_it_is_started_again(
    home: Path, qemu: Path, ring: LogRing
) -> None:
    """`up` restarts a guest whose qemu was killed, then quits: `vm list` still counts the
    restart; a start asked for counts from 0 again."""
    supervisor = Supervisor(vmservice.vm_dir(), restarts=lambda: Restarts(0.0))
    supervisor.define(relay_guest(home, restart=True))
    admin = supervisor.item("r1")["admin"]
    await supervisor.start("r1")
    await until_told(ring, f"Guest r1 up; admin on {admin}/status")
    os.kill(supervisor.item("r1")["pid"], signal.SIGKILL)  # `kill -9` of its qemu
    await until_told(ring, "Guest r1 exited (killed by signal 9); restart 1")
    await until_told(ring, f"Guest r1 up; admin on {admin}/status")
    assert supervisor.item("r1")["restarts"] == 1
    await supervisor.close()  # `up` quits

    listed = run_cli("vm", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split()[:5] == ["r1", "relay", "stopped", "-", "1"]
    again = Supervisor(vmservice.vm_dir())
    await again.start("r1")
    assert again.item("r1")["restarts"] == 0
    await again.stop("r1")
    assert Supervisor(vmservice.vm_dir()).item("r1")["restarts"] == 0


def start_guests(home: Path, image: Path, names: tuple[str, ...]) -> None:
    """`retreatkit vm start NAME IMAGE` for each name, 64 MB each."""
    for name in names:
        config = str(home / "retreat.toml")
        started = run_cli("vm", "start", name, str(image), "--memory", "64", "--config", config)
        assert started.returncode == 0, started.stderr


def test_a_supervisor_names_the_guests_it_stopped(home: Path, qemu: Path) -> None:
    image = Path(relay_guest(home, restart=False).image)
    supervisor = Process.start(retreatkit_argv("vm", "serve"))
    try:
        supervisor.wait_for(r"^Admin on ")
        start_guests(home, image, ("r2", "r1"))
    finally:
        supervisor.popen.send_signal(signal.SIGINT)
        code, lines = supervisor.finish()
    assert code == 0, lines
    assert lines[-1] == "Stopped: vm (guests r1, r2)"


def ended(pid: int) -> None:
    """Return once process `pid` (not a child of ours) has ended."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        readable, _, _ = select.select([fd], [], [], 60)
        assert readable, f"process {pid} still runs"
    finally:
        os.close(fd)


async def test_the_dashboard_stops_the_last_guest_of_a_background_supervisor(
    home: Path, qemu: Path
) -> None:
    """`vm start` leaves a supervisor in the background that ends with its last guest:
    the dashboard says a guest it started is up once it is, and when it stops the last
    guest it shows the supervisor ended, its guests stopped, no alarm, and how to start one
    again."""
    image = Path(relay_guest(home, restart=False).image)
    start_guests(home, image, ("r1", "r2"))
    [url] = noted.noted()
    [pid] = [int(p.name) for p in noted.folder().iterdir() if p.name.isdigit()]
    app = Dashboard([Endpoint(url, admin_token.read())], interval=3600, clock=Clock(),
                    follow_logs=False)  # fmt: skip
    [endpoint] = app.clients

    def result() -> str:
        return str(app.screen.query_one("#result", Lines).render())

    def states() -> list[tuple[str, str]]:
        table = app.screen.query_one("#guests", Table)
        return [(str(table.get_row_at(i)[0]), str(table.get_row_at(i)[2]))
                for i in range(table.row_count)]  # fmt: skip

    try:
        async with app.run_test(size=(150, 60)) as pilot:
            await pilot.press("6")
            await settle(pilot)
            assert states() == [("r1", "running"), ("r2", "running")]
            await pilot.press("down", "x")
            await pilot.pause()
            await pilot.press("y")
            await actions_done(pilot)
            assert result() == "guest r2 stopped"
            await pilot.press("s")
            await actions_done(pilot)
            assert result() == "guest r2 starting: its row says when it is up, or how it ended"
            async with asyncio.timeout(60):
                while result() != "guest r2 up":  # said once its supervisor lists it up
                    await app.poll(endpoint)
                    await settle(pilot)
            for row in ("down", "up"):  # r2, then r1: the last guest
                await pilot.press(row, "x")
                await pilot.pause()
                await pilot.press("y")
                await actions_done(pilot)
            assert result() == "guest r1 stopped"
            await asyncio.to_thread(ended, pid)  # it had nothing left to run
            await app.poll(endpoint)
            await settle(pilot)
            assert str(app.screen.query_one("#summary", Lines).render()) == (
                f"{endpoint} ended with its last guest, as the supervisor `retreatkit vm start`"
                " leaves in the background does: `retreatkit vm start NAME` starts a guest again"
            )
            assert states() == [("r1", "stopped"), ("r2", "stopped")]
            assert "· no alarms ·" in str(app.screen.query_one("#title", Lines).render())
            await pilot.press("s")
            await actions_done(pilot)
            assert result() == (
                "guest r1's supervisor ended with its last guest: start it with "
                "`retreatkit vm start r1`"
            )
            await pilot.press("1")
            await settle(pilot)
            assert "ended" in [
                str(c) for c in app.screen.query_one("#services", Table).get_row_at(0)
            ]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


async def test_a_background_supervisor_whose_last_guest_died_reads_as_ended(
    home: Path, qemu: Path
) -> None:
    """The last guest of a `vm start` supervisor dies on its own (its qemu killed): the
    supervisor says so to the dashboard's next poll before it goes, so the dashboard
    shows how the guest ended and that the supervisor ended, not "cannot connect"."""
    image = Path(relay_guest(home, restart=False).image)
    start_guests(home, image, ("r1",))
    [url] = noted.noted()
    [pid] = [int(p.name) for p in noted.folder().iterdir() if p.name.isdigit()]
    app = Dashboard([Endpoint(url, admin_token.read())], interval=3600, clock=Clock(),
                    follow_logs=False)  # fmt: skip
    [endpoint] = app.clients
    try:
        async with app.run_test(size=(150, 60)) as pilot:
            await app.poll(endpoint)
            [guest] = app.state.endpoints[endpoint].guests or []
            assert (guest.name, guest.state) == ("r1", "running")
            [fake] = fake_qemus(qemu)
            os.kill(fake, signal.SIGKILL)
            async with asyncio.timeout(60):
                while (app.state.endpoints[endpoint].guests or [guest])[0].state == "running":
                    await app.poll(endpoint)  # the supervisor still answers
            await asyncio.to_thread(ended, pid)
            await app.poll(endpoint)
            await pilot.press("6")
            await settle(pilot)
            assert app.state.endpoints[endpoint].ended
            assert str(app.screen.query_one("#summary", Lines).render()).startswith(
                f"{endpoint} ended with its last guest"
            )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def fake_qemus(fake: Path) -> list[int]:
    """The processes running the fake qemu at `fake`."""
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and str(fake).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
    return found


def children_named(prefix: str) -> list[int]:
    """Our own child processes whose command name starts with `prefix`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # ended while we looked
            continue
        name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :]
        if name.startswith(prefix) and int(rest.split()[1]) == os.getpid():
            found.append(int(stat.parent.name))
    return found


def supervisors(state: Path) -> list[int]:
    """The background supervisors (`vm serve --until-idle`) keeping their state in `state`."""
    found = []
    wanted = f"XDG_STATE_HOME={state}".encode()
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if (
                proc.name.isdigit()
                and b"--until-idle" in (proc / "cmdline").read_bytes()
                and wanted in (proc / "environ").read_bytes().split(b"\0")
            ):
                found.append(int(proc.name))
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="a full disk needs a tmpfs mount (root)")
def test_vm_start_with_the_state_disk_full_is_one_line(
    home: Path, qemu: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor `vm start` leaves in the background could not write its log, and did
    not start ("see supervisor.log", which was empty); one that could answered 500."""
    image = Path(relay_guest(home, restart=False).image)
    with scratch_disk("1m") as disk:
        monkeypatch.setenv("XDG_STATE_HOME", str(disk))
        admin_token.load_or_create()
        fill(disk)
        done = run_cli("vm", "start", "r1", str(image), "--memory", "64")
        assert (done.returncode, done.stderr) == (
            1,
            f"retreatkit: cannot keep guest r1's definition in {disk}/retreatkit/vm/r1/"
            "guest.json: No space left on device\n",
        )
        for pid in supervisors(disk):  # it ends, having no guest to run
            ended(pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="a full disk needs a tmpfs mount (root)")
def test_a_supervisor_that_cannot_start_tells_vm_start_why(
    home: Path, qemu: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state disk full before the first start (no admin token yet): the supervisor
    `vm start` leaves in the background could not make the token, said so in its log,
    which had no room for it, and `vm start` said "see supervisor.log", found empty."""
    image = Path(relay_guest(home, restart=False).image)
    with scratch_disk("1m") as disk:
        monkeypatch.setenv("XDG_STATE_HOME", str(disk))
        fill(disk)
        done = run_cli("vm", "start", "r1", str(image), "--memory", "64")
        assert (done.returncode, done.stderr) == (
            1,
            "retreatkit: the supervisor did not start: cannot write the admin token"
            f" {disk}/retreatkit/admin-token: No space left on device\n",
        )
        # none is left running: one that said why may still be on its way out
        for pid in supervisors(disk):
            ended(pid)


def test_ctrl_c_while_vm_start_waits_says_the_guest_goes_on(home: Path, qemu: Path) -> None:
    """`vm start` waits for the guest to be up; a Ctrl-C then ended it without a word,
    while the supervisor went on starting the guest."""
    image = Path(relay_guest(home, restart=False).image)
    Path(f"{qemu}.boots-for-ever").touch()
    config = str(home / "retreat.toml")
    start = Process.start(retreatkit_argv("vm", "start", "r1", str(image), "--memory", "64",
                                          "--config", config))  # fmt: skip
    try:
        start.wait_for(r"^Guest r1 \(relay\) starting; ")
        start.popen.send_signal(signal.SIGINT)
        code, lines = start.finish()
        assert (code, lines[-1]) == (
            130,
            "retreatkit: interrupted; guest r1 may go on starting under the supervisor"
            " (retreatkit vm list shows it; retreatkit vm stop r1 stops it)",
        )
        listed = run_cli("vm", "list").stdout.splitlines()
        assert listed[1].split()[:3] == ["r1", "relay", "running"]
    finally:
        start.stop()
        run_cli("vm", "stop", "r1")
        for pid in supervisors(home / "state"):
            ended(pid)


def test_vm_stop_of_a_guest_that_is_not_running_says_so(home: Path, qemu: Path) -> None:
    """With a supervisor running it said "Guest r1 stopped", as if this stop had."""
    image = Path(relay_guest(home, restart=False).image)
    for name in ("r1", "r2"):  # r2 keeps the supervisor running
        started = run_cli("vm", "start", name, str(image), "--memory", "64")
        assert started.returncode == 0, started.stderr
    try:
        said = [run_cli("vm", "stop", "r1") for _ in range(2)]
        assert [(s.returncode, s.stderr) for s in said] == [
            (0, "Guest r1 stopped\n"),
            (0, "Guest r1 is not running\n"),
        ]
    finally:
        run_cli("vm", "stop", "r2")
        for pid in supervisors(home / "state"):
            ended(pid)


def test_a_supervisor_started_past_its_logs_limit_moves_the_old_one_aside(
    home: Path, qemu: Path
) -> None:
    """Each supervisor `vm start` leaves in the background appends to one log; over an
    event's weeks it only grew."""
    image = Path(relay_guest(home, restart=False).image)
    log = private_dir(vmservice.vm_dir()) / "supervisor.log"
    log.write_bytes(b"an old line\n" * (vm.SUPERVISOR_LOG_MAX // 12 + 1))
    old = log.read_bytes()
    started = run_cli("vm", "start", "r1", str(image), "--memory", "64")
    assert started.returncode == 0, started.stderr
    assert run_cli("vm", "stop", "r1").returncode == 0
    for pid in supervisors(home / "state"):
        ended(pid)
    assert log.with_name("supervisor.log.1").read_bytes() == old
    assert log.read_text().startswith("Supervisor control socket ")


def test_vm_starts_at_once_share_one_supervisor_and_the_others_end(home: Path, qemu: Path) -> None:
    """Three `vm start` at once with no supervisor running: each started one in the
    background, and those that found another answering ran on for good, as did one whose
    socket a later one had taken."""
    image = Path(relay_guest(home, restart=False).image)
    config = str(home / "retreat.toml")
    names = ("r1", "r2", "r3")
    argv = [retreatkit_argv("vm", "start", n, str(image), "--memory", "64", "--config", config)
            for n in names]  # fmt: skip
    starts = [subprocess.Popen(a, stderr=subprocess.PIPE, text=True) for a in argv]
    said = [start.communicate(timeout=120)[1] for start in starts]
    started = supervisors(home / "state")  # the one answering, and others not yet ended
    log = (vmservice.vm_dir() / "supervisor.log").read_text().splitlines()
    try:
        for name, start, lines in zip(names, starts, said, strict=True):
            assert start.returncode == 0, lines
            assert lines.splitlines()[-1].startswith(f"Guest {name} up; admin on ")
        listed = run_cli("vm", "list")
        assert [line.split()[:3] for line in listed.stdout.splitlines()[1:]] == [
            [name, "relay", "running"] for name in names
        ]
        spawned = sum(line.startswith("Supervisor control socket ") for line in log)
        others = [line for line in log if line.startswith("Another supervisor answers ")]
        assert spawned == 1, log  # one answers; the others (most times, two) end
        assert others == [f"Another supervisor answers on {vmservice.control_path()}: this one,"
                          " with no guest to run, ends"] * len(others)  # fmt: skip
        for name in names:
            assert run_cli("vm", "stop", name).returncode == 0
        for pid in started:  # each ends: the one that ran the guests with its last one
            ended(pid)
        assert supervisors(home / "state") == []
    finally:
        for pid in supervisors(home / "state"):
            os.kill(pid, signal.SIGTERM)


@pytest.mark.skipif(shutil.which("passt") is None, reason="passt is not installed (.ci/run does)")
async def test_an_image_that_does_not_unpack_starts_no_passt(
    home: Path, qemu: Path, ring: LogRing
) -> None:
    """passt holds the guest's forwarded ports: one started for an image that then failed
    to unpack was left running, and every restart found its ports taken."""
    supervisor = Supervisor(home / "vm", restarts=lambda: Restarts(0.0))
    definition = relay_guest(home, restart=False)
    (home / "retreat.toml").write_text('[images]\nnetwork = "passt"\n')
    (Path(definition.image) / "initramfs").write_bytes(bytes(len(INITRAMFS)))  # its size
    supervisor.define(definition)
    keeper = (await supervisor.start("r1")).keeper
    assert keeper is not None
    await asyncio.wait_for(keeper, 60)
    assert supervisor.item("r1")["last_exit"].startswith(
        f"could not start: {definition.image} is not a whole image: its initramfs does not unpack ("
    )
    assert children_named("passt") == []
    await supervisor.stop("r1")


@pytest.mark.skipif(shutil.which("passt") is None, reason="passt is not installed (.ci/run does)")
async def test_a_guest_whose_network_ends_is_shut_down_and_restarted(
    home: Path, qemu: Path, ring: LogRing
) -> None:
    """passt gone under a running guest: nobody reached the guest any more, yet it was
    listed running and up, and never restarted."""
    supervisor = Supervisor(home / "vm", restarts=lambda: Restarts(0.0))
    definition = relay_guest(home, restart=True)
    (home / "retreat.toml").write_text('[images]\nnetwork = "passt"\n')
    supervisor.define(definition)
    admin = supervisor.item("r1")["admin"]
    await supervisor.start("r1")
    await until_told(ring, f"Guest r1 up; admin on {admin}/status")
    [passt] = children_named("passt")
    os.kill(passt, signal.SIGKILL)
    why = "the guest failed: its network ended: passt exited"
    await until_told(ring, f"Guest r1 exited ({why}); restart 1")
    up = ("vm", "INFO", f"Guest r1 up; admin on {admin}/status")
    async with asyncio.timeout(60):  # up again, with a passt of its own
        while told(ring).count(up) < 2:
            await ring.wait(ring.next - 1, 60)
    assert supervisor.item("r1")["state"] == "running"
    assert [p for p in children_named("passt") if p != passt]
    await supervisor.stop("r1")
    assert children_named("passt") == []


@pytest.mark.skipif(shutil.which("passt") is None, reason="passt is not installed (.ci/run does)")
async def test_a_guest_that_powers_itself_off_is_not_blamed_on_its_network(
    home: Path, qemu: Path, ring: LogRing
) -> None:
    """passt ends as qemu does: its end seen first made a guest's own power-off read as
    'its network ended' (4 boots in 5), over the reason the guest gave."""
    qemu.with_name(qemu.name + ".panics").touch()  # the guest ends by itself, at once
    supervisor = Supervisor(home / "vm", restarts=lambda: Restarts(0.0))
    definition = relay_guest(home, restart=False)
    (home / "retreat.toml").write_text('[images]\nnetwork = "passt"\n')
    supervisor.define(definition)
    for _ in range(3):
        keeper = (await supervisor.start("r1")).keeper
        assert keeper is not None
        await asyncio.wait_for(keeper, 60)
        assert supervisor.item("r1")["last_exit"] == PANIC


class RecordedAdvert:
    """What `up` announces for a guest, recorded (the LAN itself: tests/e2e/test_bob_lan.py)."""

    def __init__(self, name: str, log: list[tuple[str, str]], changed: asyncio.Event) -> None:
        self.name, self.log, self.changed = name, log, changed

    def start(self, host: str, port: int) -> None:
        self.log.append(("announced", f"{self.name} {host}:{port}"))
        self.changed.set()

    async def stop(self) -> None:
        self.log.append(("withdrawn", self.name))
        self.changed.set()


async def test_a_relay_guest_stopped_is_no_longer_announced_and_started_is_again(
    home: Path, qemu: Path, ring: LogRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped from the dashboard, a relay guest stayed announced while `up` ran, and
    attendees' bob met a refused connection at its address."""
    from retreatkit import mdns

    log: list[tuple[str, str]] = []
    changed = asyncio.Event()
    monkeypatch.setattr(mdns, "service_advert", lambda name: RecordedAdvert(name, log, changed))
    definition = relay_guest(home, restart=False)
    definition = Definition("relay", definition.image, ["tcp:0.0.0.0:19700:9000"],
                            memory_mb=64, restart=False, config=definition.config)  # fmt: skip
    service = vmservice.VmService([definition], network="user", announce=True)

    async def next_change() -> list[tuple[str, str]]:
        await asyncio.wait_for(changed.wait(), 30)
        changed.clear()
        return log

    await service.start(CollectorRegistry(), lambda _: None)
    try:
        assert await next_change() == [("announced", "relay 0.0.0.0:19700")]
        assert service.supervisor is not None
        await service.supervisor.stop("relay")
        assert (await next_change())[-1] == ("withdrawn", "relay")
        await service.supervisor.start("relay")
        assert (await next_change())[-1] == ("announced", "relay 0.0.0.0:19700")
    finally:
        await service.stop()
    assert log[-1] == ("withdrawn", "relay")  # goodbyes when up stops


def test_vm_start_says_a_forward_only_once_it_holds(home: Path, qemu: Path) -> None:
    """With its port taken, `vm start` said `Forward tcp ...:PORT -> guest port 9000`, then
    that the guest did not start, since that very port was in use."""
    image = Path(relay_guest(home, restart=False).image)
    config = str(home / "retreat.toml")
    started = r"^Guest r\d \(relay\) starting; admin on http://127\.0\.0\.1:(\d+)/status$"
    try:
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            held.listen()
            port = held.getsockname()[1]
            forward = f"tcp:127.0.0.1:{port}:9000"
            taken = run_cli("vm", "start", "r1", str(image), "--forward", forward,
                            "--memory", "64", "--config", config)  # fmt: skip
        said = taken.stderr.splitlines()
        assert taken.returncode == 1 and len(said) == 2 and re.match(started, said[0]), said
        assert said[1] == (
            f"retreatkit: guest r1 did not start: could not start: tcp 127.0.0.1:{port} (to"
            " guest port 9000) is in use by another program: free it, or forward another port"
            " to guest port 9000"
        )
        # free, it is said: once the guest is up, just before it is said to be
        done = run_cli("vm", "start", "r2", str(image), "--forward", f"tcp:127.0.0.1:{port}:9000",
                       "--memory", "64", "--config", config)  # fmt: skip
        said = done.stderr.splitlines()
        assert done.returncode == 0 and len(said) == 4, said
        admin = re.match(started, said[0])
        assert admin is not None, said
        assert said[1:] == [
            f"Forward tcp 127.0.0.1:{port} -> guest port 9000",
            f"Forward tcp 127.0.0.1:{admin[1]} -> guest port 8080",
            f"Guest r2 up; admin on http://127.0.0.1:{admin[1]}/status",
        ]
    finally:
        run_cli("vm", "stop", "r2")
        for pid in supervisors(home / "state"):
            ended(pid)
