"""What the images plan before anything boots: modules, qemu's command line, names, errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from retreatkit.cli import main as cli
from retreatkit.image import kernel, qemu, run
from retreatkit.image.kmod import Index, Module, ModuleError
from retreatkit.image.run import RunError
from retreatkit.image.supervisor import Definition, GuestError, Supervisor
from retreatkit.image.testing import manifest
from retreatkit.testing import fill, scratch_disk


def module(name: str, depends: str = "", pre: str = "", aliases: str = "") -> Module:
    split = lambda s: tuple(s.split()) if s else ()  # noqa: E731
    return Module(name, f"kernel/{name}.ko", split(depends), split(pre), split(aliases))


INDEX = Index(
    {
        m.name: m
        for m in (
            module("virtio"),
            module("virtio_ring"),
            module("virtio_pci", "virtio virtio_ring", aliases="pci:v00001AF4d*sv*sd*bc*sc*i*"),
            module("failover"),
            module("net_failover", "failover"),
            module("virtio_net", "net_failover virtio virtio_ring", aliases="virtio:d00000001v*"),
            module("jbd2", pre="crc32c"),
            module("crc32c_generic", aliases="crc32c"),
        )
    },
    builtin_aliases=("fs-ext4", "virtio:d00000004v*"),
)


def test_modules_load_dependencies_first_built_ins_skipped() -> None:
    wanted = [*qemu.modaliases("pc", [qemu.NET, qemu.RNG]), "fs-ext4"]
    assert wanted[0] == "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
    order = [m.name for m in INDEX.load_order(wanted)]
    assert order == [
        "virtio",
        "virtio_ring",
        "virtio_pci",
        "failover",
        "net_failover",
        "virtio_net",
    ]
    assert [m.name for m in INDEX.load_order(["jbd2"])] == ["crc32c_generic", "jbd2"]
    with pytest.raises(ModuleError, match="no driver for virtio:d00000002v00001AF4"):
        INDEX.load_order(qemu.modaliases("microvm", [qemu.BLK]))


def test_forwards_parse_and_share_a_port_across_protocols() -> None:
    assert str(qemu.Forward.parse("udp::0:53")) == "udp:127.0.0.1:0:53"
    for bad in ("tcp:1:2", "sctp:h:1:2", "tcp:h:99999:53", "tcp:h:x:53"):
        with pytest.raises(ValueError, match="expected tcp\\|udp:HOST:PORT:GUESTPORT"):
            qemu.Forward.parse(bad)
    bound = qemu.bind_forwards([qemu.Forward.parse("udp:127.0.0.1:0:53"),
                                qemu.Forward.parse("tcp:127.0.0.1:0:53"),
                                qemu.Forward.parse("tcp:127.0.0.1:0:8080")])  # fmt: skip
    assert bound[0].port == bound[1].port != 0
    assert bound[2].port not in (0, bound[0].port)


HOST_RULE = "with HOST an IPv4 address (127.0.0.1, 0.0.0.0, one of this host's)"


@pytest.mark.parametrize(
    "bad",
    ["tcp:127.0.0.1,x=y:8000:9000",  # into qemu's -netdev user,...: options of its own
     "tcp:localhost:8000:9000", "udp:relay.retreat.lan:53:53", "tcp:010.0.0.1:80:80",
     "tcp:127.0.0.1 :80:80", "tcp:1.2.3.4:²:80"],
)  # fmt: skip
def test_a_forward_from_no_ipv4_address_is_refused_up_front(
    home: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    """qemu's hostfwd takes an IPv4 address, and passt resolves no name: a name failed
    as qemu started, and a comma in HOST set options of the sender's choosing."""
    image = whole_image(home / "relay", "relay")
    said = f"expected tcp|udp:HOST:PORT:GUESTPORT {HOST_RULE}, got {bad!r}"
    if bad.endswith("²:80"):
        said = f"expected tcp|udp:HOST:PORT:GUESTPORT, got {bad!r}"
    for argv in (["image", "run", str(image)], ["vm", "start", "r1", str(image)]):
        assert cli.main([*argv, "--forward", bad]) == 1
        assert capsys.readouterr().err == f"retreatkit: {said}\n"
    assert not (home / "state" / "retreatkit" / "vm").exists()  # no supervisor was asked
    with pytest.raises(ValueError, match=re.escape(said)):  # a definition sent: a 400
        Definition.parse({"name": "r1", "image": str(image), "forwards": [bad]})


def test_a_forward_to_guest_port_0_is_refused_up_front(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo (`tcp:0.0.0.0:9000:0`) was taken: the host's port went to no port of the
    guest, and the image's own port to a free one on 127.0.0.1 nobody was told to use."""
    image = whole_image(home / "relay", "relay")
    bad = "tcp:0.0.0.0:9000:0"
    said = (
        "expected tcp|udp:HOST:PORT:GUESTPORT with GUESTPORT a port the guest serves"
        f" (1-65535), got {bad!r}"
    )
    for argv in (["image", "run", str(image)], ["vm", "start", "r1", str(image)]):
        assert cli.main([*argv, "--forward", bad]) == 1
        assert capsys.readouterr().err == f"retreatkit: {said}\n"
    assert not (home / "state" / "retreatkit" / "vm").exists()  # no supervisor was asked
    with pytest.raises(ValueError, match=re.escape(said)):  # a definition sent: a 400
        Definition.parse({"name": "r1", "image": str(image), "forwards": [bad]})


NETWORKS = [
    "user",
    pytest.param("passt", marks=pytest.mark.skipif(
        not qemu.shutil.which("passt"), reason="passt is not installed (.ci/run installs it)")),
]  # fmt: skip


@pytest.mark.parametrize("network", NETWORKS)
def test_a_forwarded_port_taken_or_named_twice_is_one_line_before_anything_starts(
    home: Path, capsys: pytest.CaptureFixture[str], network: str
) -> None:
    """A port another program holds, or one port named twice: passt said so in its own
    words ("Failed to bind any port for '-t 19123:9000', exiting"); qemu's user networking
    after the boot's first lines, in one long line of its own, and the run ended as "The
    guest stopped by itself"."""
    image = whole_image(home / "relay", "relay")
    config = home / "retreat.toml"
    config.write_text(f'[images]\nnetwork = "{network}"\n')
    boot = ["image", "run", str(image), "--config", str(config)]
    with (
        socket.socket() as tcp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
    ):
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp.bind(("127.0.0.1", 0))
        held = [("tcp", tcp.getsockname()[1]), ("udp", udp.getsockname()[1])]
        for (proto, port), host in zip(held, ("127.0.0.1", "0.0.0.0"), strict=True):
            assert cli.main([*boot, "--forward", f"{proto}:{host}:{port}:9000"]) == 1
            assert capsys.readouterr().err == (
                f"retreatkit: {proto} {host}:{port} (to guest port 9000) is in use by another"
                " program: free it, or forward another port to guest port 9000\n"
            )
    port = qemu.free_port("127.0.0.1")
    twice = [f"tcp:127.0.0.1:{port}:9000", f"tcp:0.0.0.0:{port}:8080"]
    assert cli.main([*boot, "--forward", twice[0], "--forward", twice[1]]) == 1
    assert capsys.readouterr().err == (
        f"retreatkit: tcp port {port} is forwarded twice (to guest ports 9000 and 8080):"
        " forward one of them from another port\n"
    )


async def test_a_guest_whose_forwarded_port_is_taken_does_not_start(home: Path) -> None:
    """The supervisor says it in one line, before passt or qemu starts."""
    image = whole_image(home / "relay", "relay")
    supervisor = Supervisor(home / "vm")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        supervisor.define(Definition("r1", str(image), [f"tcp:127.0.0.1:{port}:9000"]))
        keeper = (await supervisor.start("r1")).keeper
        assert keeper is not None
        await asyncio.wait_for(keeper, 60)
    item = supervisor.item("r1")
    assert (item["state"], item["last_exit"]) == (
        "failed",
        f"could not start: tcp 127.0.0.1:{port} (to guest port 9000) is in use by another"
        " program: free it, or forward another port to guest port 9000",
    )


def test_a_service_run_as_an_image_listens_on_an_ipv4_address(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = home / "retreat.toml"
    config.write_text('[images]\nrun = ["relay"]\n[relay]\nlisten = "localhost:9000"\n')
    assert cli.main(["--config", str(config), "up"]) == 2
    assert capsys.readouterr().err == (
        "retreatkit: [relay] listen = 'localhost:9000': a service run as an image listens on"
        " an IPv4 address of this host (0.0.0.0: all of them), not a name\n"
    )


def test_qemu_command_line(tmp_path: Path) -> None:
    if not qemu.shutil.which(qemu.QEMU):
        pytest.skip("qemu is not installed (.ci/run installs it)")
    args = qemu.argv("microvm", tmp_path / "k", tmp_path / "i", memory_mb=64, accel="tcg",
                     forwards=[qemu.Forward.parse("tcp:0.0.0.0:9000:9000")],
                     disks=[(tmp_path / "config.disk", True)])  # fmt: skip
    assert "-no-reboot" in args and "-nodefaults" in args
    assert args[args.index("-M") + 1] == "microvm,pit=on,rtc=on,acpi=off"
    assert args[args.index("-append") + 1] == (
        "console=ttyS0 quiet panic=-1 lpj=1000000 noapictimer acpi=off reboot=t"
    )
    kvm = qemu.argv("microvm", tmp_path / "k", None, memory_mb=64, accel="kvm")
    assert kvm[kvm.index("-append") + 1] == "console=ttyS0 quiet panic=-1 acpi=off reboot=t"
    assert "user,id=net0,hostfwd=tcp:0.0.0.0:9000-:9000" in args
    assert f"file={tmp_path / 'config.disk'},if=none,id=disk0,format=raw,readonly=on" in args
    assert "virtio-blk-device,drive=disk0" in args


def test_a_host_disk_that_fills_up_is_an_error_in_the_guest_not_a_pause(tmp_path: Path) -> None:
    """qemu's default pauses a guest whose disk write finds the host's disk full: the
    mirror then stops answering, its qemu still runs, and nobody is told. Reported to the
    guest, its write fails, the mirror says so and serves on."""
    if not qemu.shutil.which(qemu.QEMU):
        pytest.skip("qemu is not installed (.ci/run installs it)")
    data = tmp_path / "mirror.disk"
    args = qemu.argv("microvm", tmp_path / "k", tmp_path / "i", memory_mb=64, accel="tcg",
                     disks=[(tmp_path / "config.disk", True), (data, False)])  # fmt: skip
    assert f"file={data},if=none,id=disk1,format=raw,werror=report,rerror=report" in args


def test_guest_names_are_safe_for_paths() -> None:
    good = {"name": "relay-1", "image": "/x", "forwards": ["tcp:127.0.0.1:0:9000"]}
    assert Definition.parse(good).name == "relay-1"
    for name in ("../x", "", "A", "x" * 33, "-x", "x\n", 7):
        with pytest.raises(GuestError, match="a guest name is 1-32 of a-z"):
            Definition.parse({**good, "name": name})
    with pytest.raises(GuestError, match="bad guest definition"):
        Definition.parse({**good, "colour": "blue"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"memory_mb": 1}, "memory_mb 1: a guest needs at least 56 MB (no image runs in less)"),
        ({"memory_mb": "lots"}, "memory_mb 'lots': guest memory is a whole number of MB"),
        ({"memory_mb": True}, "memory_mb True: guest memory is a whole number of MB"),
        ({"forwards": "tcp::0:9000"}, "bad guest definition: forwards cannot be 'tcp::0:9000'"),
        ({"forwards": [9000]}, "bad guest definition: forwards are tcp|udp:HOST:PORT:GUESTPORT"),
        ({"image": ["x" * 100]}, f"bad guest definition: image cannot be ['{'x' * 58}"),
        ({"records": {"a": 1}}, "bad guest definition: records are names and addresses"),
    ],
)
def test_the_supervisor_refuses_what_cannot_boot(change: dict[str, object], message: str) -> None:
    good = {"name": "r9", "image": "/x", "forwards": [], "memory_mb": 56}
    assert Definition.parse(good).memory_mb == 56
    with pytest.raises(GuestError) as refused:
        Definition.parse({**good, **change})
    assert str(refused.value) == message


def test_kconfig_dropping_a_line_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / ".config"
    config.write_text("CONFIG_64BIT=y\n# CONFIG_EXT4_FS is not set\n")
    with pytest.raises(
        kernel.KernelError, match=r"Kconfig dropped CONFIG_EMBEDDED=y, .*CONFIG_EXT4_FS=y"
    ):
        kernel._verify(config)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var, sub in (("HOME", ""), ("XDG_STATE_HOME", "state"), ("XDG_DATA_HOME", "data")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    return tmp_path


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["image", "run", "/nonexistent"], 1,
         "retreatkit: /nonexistent is not an image (no readable manifest.json)\n"),
        (["image", "run", "/nonexistent", "--forward", "tcp:9000"], 1,
         "retreatkit: expected tcp|udp:HOST:PORT:GUESTPORT, got 'tcp:9000'\n"),
        (["vm", "stop", "ghost"], 1,
         "retreatkit: no guest named 'ghost'; `retreatkit vm list` names them\n"),
        (["vm", "stats", "ghost"], 1,
         "retreatkit: no guest named 'ghost'; `retreatkit vm list` names them\n"),
        (["vm", "console", "ghost"], 1,
         "retreatkit: no console log for 'ghost' (has it ever started?)\n"),
        (["vm", "console", "ghost", "-n", "-3"], 2,  # all but its first 3 lines were shown
         "retreatkit: -n -3: a number of lines, 0 or more\n"),
        (["vm", "start", "r9", "/nonexistent", "--memory", "1"], 2,
         "retreatkit: --memory 1: a guest needs at least 56 MB (no image runs in less)\n"),
        (["vm", "start", "r9", "--memory", "1"], 2,  # a known guest: checked all the same
         "retreatkit: --memory 1: a guest needs at least 56 MB (no image runs in less)\n"),
        (["image", "run", "/nonexistent", "--memory", "55"], 2,
         "retreatkit: --memory 55: a guest needs at least 56 MB (no image runs in less)\n"),
    ],
)  # fmt: skip
def test_errors_are_one_line(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    assert cli.main(argv) == code
    assert capsys.readouterr().err == message


def test_image_run_does_not_read_the_hosts_admin_token(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run's guest has a token of its own: the host's, even one open to others (which
    the commands that use it refuse in one line), is none of its business."""
    token = home / "state" / "retreatkit" / "admin-token"
    token.parent.mkdir(parents=True)
    token.write_text("s3cret\n")
    token.chmod(0o644)
    assert cli.main(["image", "run", "/nonexistent"]) == 1
    assert capsys.readouterr().err == (
        "retreatkit: /nonexistent is not an image (no readable manifest.json)\n"
    )


def test_up_names_only_services_with_images(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = home / "retreat.toml"
    config.write_text('[images]\nrun = ["dashboard"]\n')
    assert cli.main(["--config", str(config), "up"]) == 2
    assert capsys.readouterr().err == (
        "retreatkit: no image for 'dashboard'; one of relay, mirror, nameserver\n"
    )


def test_up_refuses_a_service_named_twice_in_images_run(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run = ["relay", "relay"]` built and booted the relay's guest, built its image
    again, then stopped everything: "guest relay is running: stop it first"."""
    config = home / "retreat.toml"
    config.write_text('[images]\nrun = ["relay", "nameserver", "relay"]\n')
    assert cli.main(["--config", str(config), "up"]) == 2
    assert capsys.readouterr().err == (
        "retreatkit: [images] run names relay twice: each service runs once\n"
    )
    assert not (home / "state" / "retreatkit" / "vm").exists()  # no supervisor started


def test_a_setting_the_service_refuses_is_refused_for_its_image(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`retreatkit relay` and `up` refuse `[relay] per_ip = -1`; `image run` booted a guest
    with it, whose relay then refused every connection."""
    image = whole_image(home / "relay", "relay")
    config = home / "retreat.toml"
    config.write_text("[relay]\nper_ip = -1\nhandshake_timeout = nan\n")
    assert cli.main(["image", "run", str(image), "--config", str(config)]) == 2
    assert capsys.readouterr().err == (
        "retreatkit: [relay] per_ip must be above 0, not -1; [relay] handshake_timeout must"
        " be a finite number above 0, not nan\n"
    )


async def test_a_guest_whose_settings_its_service_refuses_does_not_start(home: Path) -> None:
    image = whole_image(home / "relay", "relay")
    config = home / "retreat.toml"
    config.write_text("[relay]\nper_ip = -1\n")
    supervisor = Supervisor(home / "vm")
    supervisor.define(Definition("r1", str(image), [], config=str(config)))
    with pytest.raises(RunError) as failed:
        await supervisor.start("r1")
    assert str(failed.value) == f"{config}: [relay] per_ip must be above 0, not -1"
    assert supervisor.item("r1")["state"] == "stopped"


def test_too_little_guest_memory_in_retreat_toml(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = home / "retreat.toml"
    config.write_text('[images]\nrun = ["relay"]\nmemory = 1\n')
    for argv in (["up"], ["vm", "start", "r9", "/nonexistent"]):
        assert cli.main(["--config", str(config), *argv]) == 2
        assert capsys.readouterr().err == (
            "retreatkit: [images] memory = 1: a guest needs at least 56 MB"
            " (no image runs in less)\n"
        )
    assert not (home / "state" / "retreatkit" / "vm").exists()  # no supervisor was asked


def test_more_guest_memory_than_the_host_has_is_refused_before_it_starts(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """qemu took any --memory, then failed in three lines of its own, the last shown
    alone ("and exabytes, respectively.")."""
    most = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20  # in MB
    image = whole_image(home / "relay", "relay")
    for argv, given in (
        (["image", "run", str(image), "--memory", "1000000000000000000000000"],
         "--memory 100000000000000000000..."),
        (["vm", "start", "r9", str(image), "--memory", str(most + 1)], f"--memory {most + 1}"),
    ):  # fmt: skip
        assert cli.main(argv) == 2
        assert capsys.readouterr().err == (
            f"retreatkit: {given}: more than this host's {most} MB of memory\n"
        )
    config = home / "retreat.toml"
    config.write_text(f'[images]\nrun = ["relay"]\nmemory = {most + 1}\n')
    assert cli.main(["--config", str(config), "up"]) == 2
    assert capsys.readouterr().err == (
        f"retreatkit: [images] memory = {most + 1}: more than this host's {most} MB of memory\n"
    )
    assert cli.main(["image", "run", str(image), "--memory", str(most)]) == 1  # as much is taken
    assert capsys.readouterr().err.startswith(
        f"retreatkit: {image} is not a whole image: its initramfs does not unpack"
    )
    assert not (home / "state" / "retreatkit" / "vm").exists()  # no supervisor was asked
    supervisor = Supervisor(home / "vm")
    with pytest.raises(GuestError, match=rf"^memory_mb {most + 1}: more than this host's"):
        supervisor.define(Definition("r1", str(image), [], memory_mb=most + 1))
    # one saved on a larger host is listed all the same
    saved = Definition("r2", str(image), [], memory_mb=256)
    supervisor.define(saved)
    guest_json = home / "vm" / "r2" / "guest.json"
    guest_json.write_text(guest_json.read_text().replace("256", str(most + 1)))
    assert Supervisor(home / "vm").guests["r2"].definition.memory_mb == most + 1


RULE = "a guest name is 1-32 of a-z, 0-9 and -, starting with a letter or digit"
RULE = "a guest name is 1-32 of a-z, 0-9 and -, starting with a letter or digit"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["vm", "start", "bad/name", "/nonexistent"],
         f"retreatkit: bad guest name 'bad/name': {RULE}\n"),
        (["vm", "start", "../../etc"], f"retreatkit: bad guest name '../../etc': {RULE}\n"),
        (["vm", "stop", "R1"], f"retreatkit: bad guest name 'R1': {RULE}\n"),
        (["vm", "stats", "r1\n"], f"retreatkit: bad guest name 'r1\\n': {RULE}\n"),
        (["vm", "console", "../../etc/passwd"],
         f"retreatkit: bad guest name '../../etc/passwd': {RULE}\n"),
    ],
)  # fmt: skip
def test_a_bad_guest_name_is_refused_before_anything(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert cli.main(argv) == 2
    assert capsys.readouterr() == ("", message)
    assert not (home / "state" / "retreatkit" / "vm").exists()  # no supervisor was asked


def test_a_supervisor_started_for_a_refused_request_ends(home: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "retreatkit.cli.main", "vm", "start", "ghost"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (
        1,
        "retreatkit: no guest named 'ghost'; `retreatkit vm list` names them\n",
    )
    control = home / "state" / "retreatkit" / "vm" / "control.sock"
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(control))
        except OSError:
            return  # gone already
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid = struct.unpack("3i", creds)[0]
    ended = os.pidfd_open(pid)
    try:
        assert select.select([ended], [], [], 60)[0] == [ended]  # it ended, nothing left
    finally:
        os.close(ended)


def test_vm_list_without_a_supervisor(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["vm", "list"]) == 0
    assert capsys.readouterr().out == (
        "NAME  SERVICE  STATE  UPTIME  RESTARTS  MEMORY  CPU  ADMIN  LAST EXIT\n"
    )


def test_vm_start_without_an_image_takes_the_options_given(home: Path) -> None:
    """`vm start NAME --memory MB` on a known guest changes its memory and keeps the rest;
    the guest cannot boot here (its retreat.toml is broken), so no qemu runs."""
    image = home / "images" / "relay"
    image.mkdir(parents=True)
    (image / "manifest.json").write_text(json.dumps(manifest("relay")))
    broken = home / "broken.toml"
    broken.write_text("[relay\n")
    saved = home / "state" / "retreatkit" / "vm" / "r1" / "guest.json"
    saved.parent.mkdir(parents=True)
    forwards = ["tcp:127.0.0.1:41000:9000", "tcp:127.0.0.1:41001:8080"]
    defined = {"name": "r1", "image": str(image), "forwards": forwards, "memory_mb": 128,
               "disk": None, "restart": True, "config": str(broken), "records": {}}  # fmt: skip
    saved.write_text(json.dumps(defined))

    def retreatkit(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "retreatkit.cli.main", *argv],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    done = retreatkit("vm", "start", "r1", "--memory", "256")
    assert done.returncode == 1 and done.stderr.startswith("retreatkit: cannot start r1: ")
    assert json.loads(saved.read_text()) == {**defined, "memory_mb": 256}
    shown = retreatkit("vm", "stats", "r1").stdout.splitlines()
    assert "memory: - (not running; the guest is given 256 MB)" in shown
    assert "uptime: - (not running)" in shown


def test_the_mirrors_image_is_refused_below_its_own_floor(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    said = "the mirror image needs at least 64 MB (in less it runs out of memory as it starts)"
    config = home / "retreat.toml"
    config.write_text('[images]\nrun = ["mirror"]\nmemory = 56\n')
    assert cli.main(["--config", str(config), "up"]) == 2
    assert capsys.readouterr().err == f"retreatkit: [images] memory = 56: {said}\n"
    image = home / "mirror-image"
    image.mkdir()
    (image / "manifest.json").write_text(json.dumps(manifest("mirror")))
    assert cli.main(["image", "run", str(image), "--memory", "56"]) == 2
    assert capsys.readouterr().err == f"retreatkit: --memory 56: {said}\n"


def test_an_output_folder_that_cannot_be_is_said_before_the_build(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_folder = tmp_path / "f.txt"
    not_a_folder.write_text("")
    assert cli.main(["image", "build", "relay", "-o", str(not_a_folder)]) == 1
    assert capsys.readouterr().err == f"retreatkit: {not_a_folder}/relay: Not a directory\n"


def test_vm_remove_with_no_supervisor(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = home / "relay-image"
    image.mkdir()
    (image / "manifest.json").write_text(json.dumps(manifest("relay")))
    Supervisor(home / "state" / "retreatkit" / "vm").define(Definition("r1", str(image), []))
    assert cli.main(["vm", "remove", "r9"]) == 1
    assert capsys.readouterr().err == (
        "retreatkit: no guest named 'r9'; `retreatkit vm list` names them\n"
    )
    assert cli.main(["vm", "stop", "r1"]) == 0  # stopped already, as asked
    assert capsys.readouterr().err == "Guest r1 is not running (no supervisor is)\n"
    assert cli.main(["vm", "remove", "r1"]) == 0
    assert capsys.readouterr().err == "Guest r1 removed\n"
    assert not (home / "state" / "retreatkit" / "vm" / "r1").exists()


def whole_image(folder: Path, service: str) -> Path:
    """An image folder whose files are as large as its manifest says (nothing boots it)."""
    folder.mkdir()
    sizes = {"kernel": 3, "initramfs": 5}
    for name, size in sizes.items():
        (folder / name).write_bytes(b"x" * size)
    (folder / "manifest.json").write_text(json.dumps(manifest(service, **sizes)))
    return folder


def test_an_image_cut_short_is_refused_before_it_boots(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A build or a copy interrupted: booted, its kernel panics ("VFS: Unable to mount root
    fs") and names neither; it is said before qemu starts."""
    image = whole_image(home / "relay", "relay")
    (image / "initramfs").write_bytes(b"x")
    assert cli.main(["image", "run", str(image)]) == 1
    assert capsys.readouterr().err == (
        f"retreatkit: {image} is not a whole image: its initramfs is 1 bytes where"
        " manifest.json says 5; build it again (retreatkit image build relay)\n"
    )
    (image / "kernel").unlink()
    assert cli.main(["image", "run", str(image)]) == 1
    assert capsys.readouterr().err == (
        f"retreatkit: {image} is not a whole image: its kernel: No such file or directory\n"
    )


MISSING = object()  # the key left out
BROKEN_MANIFESTS = [
    ([], "manifest.json holds [], not an object", "SERVICE"),
    ({"kernel": None}, "manifest.json's kernel is null, not an object", "relay"),
    ({"service": MISSING}, "manifest.json has no service", "SERVICE"),
    ({"service": "web"}, 'manifest.json\'s service is "web", not one of mirror, nameserver,'
     " relay", "SERVICE"),
    ({"machine": MISSING}, "manifest.json has no machine", "relay"),
    ({"admin_port": MISSING}, "manifest.json has no admin_port", "relay"),
    ({"admin_port": 70000}, "manifest.json's admin_port is 70000, not a port", "relay"),
    ({"ports": [["tcp", "9000"]]}, 'manifest.json\'s ports is [["tcp", "9000"]], not a list'
     " of [tcp|udp, PORT]", "relay"),
    ({"initramfs": {}}, "manifest.json has no initramfs.size_bytes", "relay"),
    ({"disk": "no"}, 'manifest.json\'s disk is "no", not true or false', "relay"),
]  # fmt: skip


def break_manifest(image: Path, change: list[object] | dict[str, object]) -> None:
    """The image's manifest.json with `change`: a whole other document, or keys changed."""
    doc: object = change
    if isinstance(change, dict):
        whole = json.loads((image / "manifest.json").read_text())
        doc = {k: v for k, v in {**whole, **change}.items() if v is not MISSING}
    (image / "manifest.json").write_text(json.dumps(doc))


@pytest.mark.parametrize(("change", "problem", "service"), BROKEN_MANIFESTS)
def test_a_manifest_that_is_not_whole_is_one_line(
    home: Path,
    capsys: pytest.CaptureFixture[str],
    change: list[object] | dict[str, object],
    problem: str,
    service: str,
) -> None:
    """A manifest edited by hand or cut short: each step of the run read it its own way,
    and one key missing or of another kind ended in a traceback."""
    image = whole_image(home / "relay", "relay")
    break_manifest(image, change)
    assert cli.main(["image", "run", str(image)]) == 1
    assert capsys.readouterr().err == (
        f"retreatkit: {image} is not a whole image: {problem}; build it again"
        f" (retreatkit image build {service})\n"
    )


NO_DISK = (
    "the mirror image keeps its store on a data disk: pass --disk FILE (an ext4 disk, made"
    " there if missing)"
)


def test_a_mirror_image_without_its_data_disk_is_refused_before_it_boots(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its store went to the guest's memory, a file system with no room it can measure:
    the mirror kept nothing and answered every download with 507 ("the mirror's disk has
    no room for demo-1.0-py3-none-any.whl (4.6 kB): 0 B free")."""
    image = whole_image(home / "mirror", "mirror")
    assert cli.main(["image", "run", str(image)]) == 1
    assert capsys.readouterr().err == f"retreatkit: {NO_DISK}\n"


async def test_a_mirror_guest_without_its_data_disk_does_not_start(home: Path) -> None:
    image = whole_image(home / "mirror", "mirror")
    supervisor = Supervisor(home / "vm")
    supervisor.define(Definition("m1", str(image), []))  # `vm start m1 IMAGE`, then:
    with pytest.raises(RunError, match=f"^{re.escape(NO_DISK)}$"):
        await supervisor.start("m1")
    assert supervisor.item("m1")["state"] == "stopped"
    disk = home / "m1.disk"  # `vm start m1 --disk FILE`: as far as the boot
    supervisor.change("m1", {"disk": str(disk)})
    keeper = (await supervisor.start("m1")).keeper
    assert keeper is not None
    await asyncio.wait_for(keeper, 60)
    assert supervisor.item("m1")["last_exit"].startswith(
        f"could not start: {image} is not a whole image: its initramfs does not unpack"
    )


def test_a_data_disk_the_guest_cannot_use_is_refused_before_it_boots(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file that holds no ext4 file system (the wrong file named): the guest would fail
    at its mount, told as "qemu exit code 0"; and one that cannot be written. The disk is
    left as it was."""
    image = whole_image(home / "mirror", "mirror")
    junk = home / "junk.disk"
    junk.write_bytes(bytes(range(256)) * 64)
    assert cli.main(["image", "run", str(image), "--disk", str(junk)]) == 1
    assert capsys.readouterr().err == (
        f"retreatkit: the disk {junk} holds no ext4 file system: name a file that does not"
        " exist yet, and one is made there\n"
    )
    assert junk.read_bytes() == bytes(range(256)) * 64
    folder = home / "a-folder"
    folder.mkdir()
    assert cli.main(["image", "run", str(image), "--disk", str(folder)]) == 1
    assert capsys.readouterr().err == (
        f"retreatkit: the disk {folder} cannot be written: Is a directory\n"
    )
    with read_only_ext4(home) as disk:
        assert cli.main(["image", "run", str(image), "--disk", str(disk)]) == 1
        why = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
        assert capsys.readouterr().err == f"retreatkit: the disk {disk} cannot be written: {why}\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="a full disk needs a tmpfs mount (root)")
def test_a_data_disk_a_full_file_system_cannot_take_is_one_line(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """mke2fs on a full disk says each block it could not write: all of it was the error,
    four lines and more."""
    image = whole_image(home / "mirror", "mirror")
    with scratch_disk("1m") as full:
        fill(full)
        disk = full / "mirror.disk"
        assert cli.main(["image", "run", str(image), "--disk", str(disk)]) == 1
        assert capsys.readouterr().err == (
            f"retreatkit: cannot make the disk {disk}: mke2fs: No space left on device while"
            " writing out and closing file system\n"
        )
        assert not disk.exists()


def test_a_data_disk_mke2fs_never_finishes_making_is_one_line(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An mke2fs stuck on its file system (a hung network mount) was a traceback once its
    time ran out."""
    image = whole_image(home / "mirror", "mirror")
    tools = home / "tools"
    tools.mkdir()
    stuck = tools / "mke2fs"
    stuck.write_text("#!/bin/sh\nexec sleep 600\n")  # the stuck program itself
    stuck.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(run, "MKE2FS_SECONDS", 1.0)
    disk = home / "mirror.disk"
    assert cli.main(["image", "run", str(image), "--disk", str(disk)]) == 1
    assert capsys.readouterr().err == (
        f"retreatkit: cannot make the disk {disk}: mke2fs took over 1 s"
        " (is that file system stuck?)\n"
    )
    assert not disk.exists()


@contextlib.contextmanager
def read_only_ext4(folder: Path) -> Iterator[Path]:
    """A file with ext4's magic that cannot be written: on a read-only tmpfs as root (who
    writes whatever a file's mode says), else by its mode."""
    superblock = bytes(1080) + b"\x53\xef" + bytes(966)
    if os.geteuid() != 0:
        disk = folder / "ro.disk"
        disk.write_bytes(superblock)
        disk.chmod(0o444)
        yield disk
        return
    mount = folder / "ro"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        (mount / "ro.disk").write_bytes(superblock)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield mount / "ro.disk"
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def test_every_images_key_is_checked_and_every_problem_said_at_once(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With `run` empty, `network = "pasta"`, `kernel = "mine"` and `disk_size = "4X"`
    were taken without a word (and `up` started); with a service to run, a bad kernel and
    a bad disk size were said one at a time, the second only once the first was fixed."""
    bad = '[images]\nnetwork = "pasta"\nkernel = "mine"\ndisk_size = "4X"\n'
    lines = [
        "retreatkit: [images] kernel must be one of auto, own, debian, not 'mine'",
        "retreatkit: [images] network must be one of auto, passt, user, not 'pasta'",
        "retreatkit: [images] disk_size = '4X' is not a size from 64M up"
        " (a number and K, M, G or T)",
    ]
    config = home / "retreat.toml"
    listens = "".join(f'[{s}]\nlisten = "127.0.0.1:0"\n' for s in ("admin", "relay", "mirror"))
    config.write_text(f"{listens}{bad}")
    # a process of its own: the old `up` started here, and would have served on
    done = subprocess.run(
        [sys.executable, "-m", "retreatkit.cli.main", "--config", str(config), "up",
         "--no-tui", "--nameserver-listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stderr.splitlines()) == (2, lines)
    config.write_text(f'{bad}run = ["relay"]\nmemory = 1\n')
    assert cli.main(["--config", str(config), "up"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "retreatkit: [images] memory = 1: a guest needs at least 56 MB (no image runs in less)",
        *lines,
    ]
    assert not (home / "state" / "retreatkit" / "vm").exists()  # no supervisor started
