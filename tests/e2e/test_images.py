"""VM images built once per run, booted under qemu, used by real clients through forwards."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from retreatkit import version
from retreatkit.admin import token as admin_token
from retreatkit.image import network, tlstesting
from retreatkit.image.paths import cache_dir
from retreatkit.image.spec import HOST_FROM_GUEST
from retreatkit.image.supervisor import Definition, Restarts, Supervisor
from retreatkit.image.testing import (
    BOOT_TIMEOUT,
    GuestProcess,
    build_image,
    isolated_env,
    retreatkit_argv,
    start_guest,
    up_config,
)
from retreatkit.mirror.testing import Server, make_wheel, start_upstream, write_pypi
from retreatkit.nameserver.testing import Dnsmasq
from retreatkit.testing import Process, bob_argv
from retreatkit.tui.sources import AdminClient, Endpoint

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None or shutil.which("apt-get") is None,
        reason="qemu-system-x86 and apt are needed (.ci/run installs qemu)",
    ),
]


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Each service's image, built the first time a test asks for it (once per run)."""
    built: dict[str, Path] = {}
    # our kernel: built here on a machine that has none, or waited for while another
    # `retreatkit image kernel` (CI starts one beside the linters) finishes it
    kernel = subprocess.run(
        retreatkit_argv("image", "kernel"), capture_output=True, text=True, timeout=1800
    )
    assert kernel.returncode == 0, kernel.stderr

    def get(service: str) -> Path:
        if service not in built:
            out = tmp_path_factory.mktemp("images")
            built[service] = build_image(service, out, isolated_env(out / "home"))
        return built[service]

    return get


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return isolated_env(tmp_path / "home")


def admin_get(url: str, token: str) -> bytes:
    """A read from an admin endpoint with its token: a guest's endpoint is bound beyond its
    loopback, so it answers nothing without its own."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as r:
        body: bytes = r.read()
    return body


def get_json(url: str, token: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads(admin_get(url, token))
    return doc


def host_token(env: dict[str, str]) -> str:
    """The user's admin token, which acts on this host (made if missing)."""
    return admin_token.load_or_create(Path(env["XDG_STATE_HOME"]) / "retreatkit" / "admin-token")


def refused(url: str, token: str) -> int:
    """The HTTP status of a read sent `token`, which the endpoint refuses."""
    try:
        admin_get(url, token)
    except urllib.error.HTTPError as refusal:
        refusal.close()  # its connection, which the error holds
        return refusal.code
    raise AssertionError(f"{url} took the token")


def child_named(guest: GuestProcess, program: bytes) -> int:
    """One of `image run`'s children (qemu, and passt where it carries the network)."""
    children = Path(f"/proc/{guest.process.pid}/task/{guest.process.pid}/children").read_text()
    for pid in map(int, children.split()):
        if program in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]:
            return pid
    raise AssertionError(f"no {program!r} among {children}")


def qemu_of(guest: GuestProcess) -> int:
    return child_named(guest, b"qemu-system")


def test_relay_image_carries_a_bob_transfer(
    image: Callable[[str], Path],
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    relay = image("relay")
    config = tmp_path / "retreat.toml"
    config.write_text('[images]\nnetwork = "user"\n')  # passt carries the other images
    host = host_token(env)
    guest = start_guest(
        relay, "--forward", "tcp:0.0.0.0:0:9000", "--memory", "64", env=env, config=config
    )
    try:
        # bob on this host, through the forward, by the host's name rather than loopback
        address = f"{socket.gethostname()}:{guest.port(9000)}"
        src = tmp_path / "notes.bin"
        src.write_bytes(os.urandom(3_000_000))
        sender = Process.start(
            # through the guest: two peers on one host would otherwise connect directly
            bob_argv("send", "--relay", address, "--no-direct", str(src)),
            env={"BOB_PASSPHRASE": "4-purple-sofa"},
        )
        sender.wait_for(r"^Passphrase: ", BOOT_TIMEOUT)
        out = tmp_path / "out"
        out.mkdir()
        got = subprocess.run(
            bob_argv("recv", "--relay", address, "--yes", "--output", str(out), "4-purple-sofa"),
            capture_output=True,
            text=True,
            timeout=BOOT_TIMEOUT,
            check=False,
        )
        code, lines = sender.finish(BOOT_TIMEOUT)
        assert got.returncode == 0, got.stderr
        assert code == 0, lines
        assert (out / "notes.bin").read_bytes() == src.read_bytes()
        status = get_json(f"{guest.admin}/status", guest.token)
        assert status["process"]["version"] == version.number() != "unknown"
        relay_status = status["relay"]
        assert isinstance(relay_status, dict)
        assert relay_status["bytes_relayed"] > 3_000_000  # the file went through the guest
        # its start-up lines are records on /logs too, as a local process's are: the
        # dashboard's Logs screen has them before the guest logs anything else
        started = logged(guest.admin, guest.token, "Admin on http://0.0.0.0:8080/status")
        assert started[-1] == ("process", "INFO", "Admin on http://0.0.0.0:8080/status")
        assert ("process", "INFO", "Relay listening on 0.0.0.0:9000") in started
        # its own token, never the host's: a guest taken over holds nothing of its host
        assert guest.token != host and refused(f"{guest.admin}/status", host) == 401

        # the token reaches the guest on its configuration disk, never on argv (the
        # kernel's command line among it, which the guest's /proc/cmdline shows)
        argv = Path(f"/proc/{qemu_of(guest)}/cmdline").read_bytes().split(b"\0")
        for secret in (guest.token, host):
            assert secret.encode() not in b" ".join(argv)
        disk = next(a for a in argv if a.startswith(b"file=") and b"config.disk" in a)
        config_disk = Path(disk.split(b",")[0][5:].decode())
        assert config_disk.stat().st_mode & 0o777 == 0o600
        assert host.encode() not in config_disk.read_bytes()
    finally:
        code, lines = guest.interrupt()
    assert code == 130, lines  # Ctrl-C, as a shell counts it
    assert "Stopping the guest cleanly (Ctrl-C again powers it off)" in lines
    assert NETWORK_USER in lines
    assert lines[-2:] == ["Guest stopped", "retreatkit: interrupted"]
    assert "retreatkit: guest stopping (exit code 0)" in lines
    console = Path(env["XDG_STATE_HOME"]) / "retreatkit" / "console" / "relay.log"
    assert "Relay listening on 0.0.0.0:9000" in console.read_text()
    for secret in (guest.token, host):  # nor anything the guest said on its console
        assert secret not in console.read_text()
    assert console.stat().st_mode & 0o777 == 0o600
    assert not config_disk.exists()  # the run folder goes with the guest


HOSTS = "198.51.100.7 www.example.test\n198.51.100.8 ads.example.test\n"


def dig(port: int, *args: str) -> list[str]:
    done = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+short", "+time=5", "+tries=2", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout.split()


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (.ci/run does)")
def test_nameserver_image_answers_dig(
    image: Callable[[str], Path],
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    nameserver = image("nameserver")
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    upstream = Dnsmasq.start(hosts)
    blocklist = tmp_path / "block.txt"
    blocklist.write_text("||ads.example.test^\n")
    config = tmp_path / "retreat.toml"
    config.write_text(
        f'[nameserver]\nupstreams = ["127.0.0.1:{upstream.port}"]\n'
        f'blocklists = ["{blocklist}"]\nrecords = {{ "laptop.retreat.lan" = "10.0.0.7" }}\n'
    )
    guest: GuestProcess | None = None
    try:
        guest = start_guest(
            nameserver,
            "--forward",
            "udp:127.0.0.1:0:53",
            "--forward",
            "tcp:127.0.0.1:0:53",
            "--memory",
            "64",
            env=env,
            config=config,
        )
        loaded = "blocklists loaded: 1 domain"  # beside the sockets: before or after "up"
        if not any(loaded in line for line in guest.process.seen):
            guest.process.wait_for(loaded, BOOT_TIMEOUT)
        port = guest.port(53, "udp")
        assert guest.port(53, "tcp") == port  # one port for both, as for any nameserver
        assert dig(port, "www.example.test") == ["198.51.100.7"]  # via the host's dnsmasq
        assert dig(port, "ads.example.test") == ["0.0.0.0"]  # the host's blocklist file
        assert dig(port, "laptop.retreat.lan") == ["10.0.0.7"]  # a local record
        assert dig(port, "+tcp", "www.example.test") == ["198.51.100.7"]
        status = get_json(f"{guest.admin}/status", guest.token)["nameserver"]
        assert isinstance(status, dict)
        assert status["blocked"] == 1
    finally:
        if guest is not None:
            guest.stop()
        upstream.stop()


NETWORK_USER = network.describe("user")  # pinned in tests/image/test_network.py
NETWORK_PASST = "Network: passt; the guest sees each client's own address"


@contextlib.contextmanager
def attendee_link() -> Iterator[tuple[str, str]]:
    """A namespace joined to this host by a veth pair: the host at 10.213.0.1 (its LAN
    side) and a machine with two addresses, 10.213.0.2 in the LAN and 198.51.100.2 out
    of it (TEST-NET-2: where an attendee's packets never come from). Yields the
    namespace's name and the host's address."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("network namespaces need root and iproute2")
    name, link = f"rkvmn-{os.getpid()}", f"rkvmn{os.getpid() % 10**8}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    try:
        ip("netns", "add", name)
        ip("link", "add", link + "h", "type", "veth", "peer", "name", link + "n")
        ip("link", "set", link + "n", "netns", name)
        ip("addr", "add", "10.213.0.1/24", "dev", link + "h")
        ip("link", "set", link + "h", "up")
        ip("route", "add", "198.51.100.2/32", "dev", link + "h")
        for address in ("10.213.0.2/24", "198.51.100.2/24"):
            ip("-n", name, "addr", "add", address, "dev", link + "n")
        ip("-n", name, "link", "set", link + "n", "up")
        ip("-n", name, "route", "add", "default", "dev", link + "n")
        yield name, "10.213.0.1"
    finally:
        subprocess.run(["ip", "link", "del", link + "h"], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@pytest.mark.skipif(shutil.which("passt") is None, reason="passt is not installed (.ci/run does)")
@pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (.ci/run does)")
def free_udp_and_tcp_port(host: str) -> int:
    """A port free on `host` for UDP and TCP alike, as a nameserver's forward needs."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket() as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port


def test_a_nameserver_guest_behind_passt_refuses_the_world_and_answers_the_lan(
    image: Callable[[str], Path], env: dict[str, str], tmp_path: Path
) -> None:
    # qemu's user networking showed every client to the guest as 10.0.2.2: it answered
    # the world, and a limit per client was one for the whole LAN
    nameserver = image("nameserver")
    config = tmp_path / "retreat.toml"
    config.write_text(
        '[images]\nnetwork = "passt"\n'
        '[nameserver]\nrecords = { "laptop.retreat.lan" = "10.0.0.7" }\n'
    )
    with attendee_link() as (attendee, host):
        port = free_udp_and_tcp_port(host)  # not mDNS's 5353, which zeroconf may hold
        guest = start_guest(
            nameserver,
            "--forward", f"udp:{host}:{port}:53",
            "--forward", f"tcp:{host}:{port}:53",
            "--memory", "64",
            env=env, config=config,
        )  # fmt: skip
        try:

            def ask(source: str, *args: str) -> str:
                done = subprocess.run(
                    ["ip", "netns", "exec", attendee, "dig", f"@{host}", "-p", str(port), "-b",
                     source, "+time=5", "+tries=2", *args, "laptop.retreat.lan"],
                    capture_output=True, text=True, timeout=60, check=False,
                )  # fmt: skip
                found = re.search(r"status: (\w+)", done.stdout)
                answer = re.findall(r"^laptop\.retreat\.lan\.\s.*\sA\s+(\S+)$", done.stdout, re.M)
                return f"{found[1] if found else done.stdout or done.stderr} {answer}"

            assert ask("10.213.0.2") == "NOERROR ['10.0.0.7']"
            assert ask("10.213.0.2", "+tcp") == "NOERROR ['10.0.0.7']"
            assert ask("198.51.100.2") == "REFUSED []"
            assert ask("198.51.100.2", "+tcp") == "REFUSED []"
            passt = child_named(guest, b"passt")
        finally:
            code, lines = guest.interrupt()
    assert code == 130, lines
    assert NETWORK_PASST in lines
    assert not Path(f"/proc/{passt}").exists()  # passt ends with its guest


def pip_install(index: str, target: Path, *names: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--isolated",
            "install",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--target",
            str(target),
            "--index-url",
            index,
            *(names or ("demo-pkg",)),
        ],
        capture_output=True,
        text=True,
        timeout=BOOT_TIMEOUT,
        env={**env, "PIP_CONFIG_FILE": os.devnull},
    )


def https_pypi(
    ca: tuple[bytes, ec.EllipticCurvePrivateKey],
    tmp_path: Path,
    wheels: dict[str, list[tuple[str, bytes, bytes]]],
    more: str = "",
) -> tuple[Server, tlstesting.TlsFront, Path]:
    """A PyPI of `wheels` behind HTTPS with a certificate from `ca`, and a configuration
    whose mirror takes it as its upstream (`more`: further [mirror] lines)."""
    root = tmp_path / "upstream"
    write_pypi(root, wheels)
    upstream = start_upstream(root)
    # the guest reaches the host's loopback at 10.0.2.2: the address it checks the name of
    chain = tlstesting.server_chain(ca, ("127.0.0.1", HOST_FROM_GUEST), tmp_path / "chain.pem")
    plain = urlsplit(upstream.url)
    front = tlstesting.TlsFront(chain, (plain.hostname or "", plain.port or 0)).start()
    config = tmp_path / "retreat.toml"
    config.write_text(
        f'[mirror]\npypi = "https://127.0.0.1:{front.port}/simple/"\n{more}'
        '[images]\ndisk_size = "256M"\n'
    )
    return upstream, front, config


def test_mirror_image_fetches_over_https_and_its_store_survives_a_reboot(
    image: Callable[[str], Path],
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    # the upstream speaks HTTPS with a certificate from a CA of the test's own, which the
    # guest trusts the way it trusts Debian's: in its CA folder, found by subject hash
    ca = tlstesting.make_ca("Retreat Test CA")
    # its SQLite is ours (`image kernel` built it beside the kernel): the store runs on it
    manifest = json.loads((image("mirror") / "manifest.json").read_text())
    assert manifest["sqlite"]["kind"] == "own", manifest["sqlite"]
    # and its OpenSSL relinked from libssl-dev: the handshakes below run on it
    assert manifest["openssl"]["kind"] == "relinked", manifest["openssl"]
    versions = {name: version for name, version, _ in manifest["packages"]}
    assert versions["libssl-dev"] == versions["libssl3"]
    mirror = tlstesting.trusting(image("mirror"), ca[0], tmp_path / "image" / "mirror")
    wheels = {"demo-pkg": [make_wheel("demo-pkg", "1.0", pad=300_000)]}
    upstream, front, config = https_pypi(ca, tmp_path, wheels, "index_ttl = 0.0\n")
    disk = tmp_path / "store.disk"
    # in the 64 MB, the mirror's floor (spec.LEAST_BY_SERVICE)
    args = ("--disk", str(disk), "--memory", "64")
    try:
        guest = start_guest(mirror, *args, env=env, config=config)
        try:
            index = f"http://127.0.0.1:{guest.port(8000)}/pypi/simple/"
            first = pip_install(index, tmp_path / "t1")
            assert first.returncode == 0, first.stderr
            assert (tmp_path / "t1" / "demo_pkg" / "__init__.py").is_file()
        finally:
            code, lines = guest.interrupt()
        assert code == 130, lines
        assert "retreatkit: data disk unmounted cleanly" in lines
        assert not [line for line in lines if "watermark boost" in line]
        assert disk.stat().st_size == 256 * 1024 * 1024  # made by the host at [images] disk_size
        fsck = subprocess.run(
            ["/sbin/e2fsck", "-fn", str(disk)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr  # consistent, no journal replay
    finally:
        front.stop()
        upstream.stop()  # the uplink is gone for the second boot

    guest = start_guest(mirror, *args, env=env, config=config)
    try:
        index = f"http://127.0.0.1:{guest.port(8000)}/pypi/simple/"
        again = pip_install(index, tmp_path / "t2")
        assert again.returncode == 0, again.stderr
        assert (tmp_path / "t2" / "demo_pkg" / "__init__.py").is_file()
        status = get_json(f"{guest.admin}/status", guest.token)["mirror"]
        assert isinstance(status, dict)
        assert status["bytes_from_cache"] > 300_000  # the wheel came from the disk
    finally:
        guest.stop()


def test_a_mirror_guest_in_its_default_memory_serves_a_room_installing_at_once(
    image: Callable[[str], Path],
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    # In 64 MB, its floor, four pip installs of 3 MB wheels at once panic a mirror guest
    # out of memory; [images] memory's default must carry them.
    ca = tlstesting.make_ca("Retreat Test CA")
    mirror = tlstesting.trusting(image("mirror"), ca[0], tmp_path / "image" / "mirror")
    names = [f"wheel{i}" for i in range(8)]
    wheels = {name: [make_wheel(name, "1.0", pad=3_000_000)] for name in names}
    upstream, front, config = https_pypi(ca, tmp_path, wheels)
    guest = start_guest(mirror, "--disk", str(tmp_path / "store.disk"), env=env, config=config)
    try:
        index = f"http://127.0.0.1:{guest.port(8000)}/pypi/simple/"
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            # four attendees, two new wheels each (eight downloads at once), then each all
            # eight, from the store
            fetching = [
                pool.submit(pip_install, index, tmp_path / f"a{i}", *names[2 * i : 2 * i + 2])
                for i in range(4)
            ]
            assert [f.result().returncode for f in fetching] == [0] * 4, fetching[0].result()
            held = [pool.submit(pip_install, index, tmp_path / f"b{i}", *names) for i in range(4)]
            assert [f.result().returncode for f in held] == [0] * 4, held[0].result()
        status = get_json(f"{guest.admin}/status", guest.token)["mirror"]
        assert isinstance(status, dict)
        assert status["bytes_from_cache"] >= 4 * 8 * 3_000_000
    finally:
        code, lines = guest.interrupt()
        front.stop()
        upstream.stop()
    assert code == 130, lines
    assert not [line for line in lines if "panic" in line.lower()], lines


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _digest(folder: Path) -> dict[str, str]:
    return {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
        for name in ("kernel", "initramfs", "manifest.json")
    }


def test_the_same_inputs_build_the_same_bytes(image: Callable[[str], Path], tmp_path: Path) -> None:
    first = image("relay")
    # a second build from the same packages and kernel, with nothing else cached: unpacking,
    # probing, compiling, stripping and archiving all happen again
    fresh = tmp_path / "cache"
    (fresh / "retreatkit").mkdir(parents=True)
    for kept in ("debs", "kernel"):
        source = cache_dir() / kept
        if source.exists():
            shutil.copytree(source, fresh / "retreatkit" / kept, copy_function=_link_or_copy)
    env = {**isolated_env(tmp_path / "home"), "XDG_CACHE_HOME": str(fresh)}
    second = build_image("relay", tmp_path / "again", env)
    assert _digest(second) == _digest(first)
    manifest = json.loads((second / "manifest.json").read_text())
    assert (
        manifest["size_bytes"]
        == (second / "kernel").stat().st_size + (second / "initramfs").stat().st_size
    )


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed (.ci/run does)")
def test_an_image_ships_a_relinked_interpreter_and_only_the_libraries_something_needs(
    image: Callable[[str], Path],
) -> None:
    for service in ("relay", "mirror"):
        manifest = json.loads((image(service) / "manifest.json").read_text())
        assert manifest["interpreter"]["kind"] == "relinked"
        assert manifest["interpreter"]["label"].startswith("relinked from libpython3.11-dev ")
        shipped = {Path(f["path"]).name for f in manifest["files"]}
        # nothing needs expat (no service parses XML) or zlib's library (linked in)
        assert not {"libexpat.so.1", "libz.so.1"} & shipped
        assert "libc.so.6" in shipped
        # the interpreter has libm's few functions linked in; the mirror's SQLite, ours,
        # needs none (Debian's would, and the interpreter would then share it)
        debians_sqlite = manifest.get("sqlite", {}).get("kind") == "debian"
        assert ("libm.so.6" in shipped) == debians_sqlite
        assert (manifest.get("sqlite", {}).get("kind") == "own") == (service == "mirror")
        assert "pyexpat" not in manifest["interpreter"]["builtins"]


def admin_call(url: str, token: str, method: str = "GET") -> dict[str, object]:
    request = urllib.request.Request(
        url, method=method, headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=BOOT_TIMEOUT) as r:
        doc: dict[str, object] = json.load(r)
    return doc


def logged(admin: str, token: str, until: str) -> list[tuple[str, str, str]]:
    """(service, level, message) of each record `/logs` sends, read as the dashboard's Logs
    screen reads them, up to the record that says `until`."""

    async def read() -> list[tuple[str, str, str]]:
        out: list[tuple[str, str, str]] = []
        async with AdminClient(Endpoint(admin, token)) as client:
            async for batch in client.logs():
                out += [(r["service"], r["level"], r["message"]) for r in batch if "seq" in r]
                said = [message for *_, message in out]
                if until in said:
                    return out[: said.index(until) + 1]
        return out

    return asyncio.run(asyncio.wait_for(read(), BOOT_TIMEOUT))


def test_vm_supervisor_restarts_a_killed_guest(
    image: Callable[[str], Path], env: dict[str, str]
) -> None:
    relay = image("relay")
    supervisor = Process.start(retreatkit_argv("vm", "serve"), env=env)
    try:
        admin = supervisor.wait_for(r"^Admin on (http://\S+)/status$", BOOT_TIMEOUT)[1]
        for name in ("one", "two"):
            done = subprocess.run(
                retreatkit_argv("vm", "start", name, str(relay), "--memory", "64", "--restart"),
                capture_output=True, text=True, timeout=BOOT_TIMEOUT, env={**os.environ, **env},
                check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert done.stderr.startswith(f"Guest {name} (relay) starting; admin on http://")
            # it returns once the guest is up, not as it starts
            assert re.search(rf"^Guest {name} up; admin on http://\S+/status$", done.stderr, re.M)
        up = {supervisor.wait_for(r"^Guest (one|two) up; admin on ", BOOT_TIMEOUT)[1] for _ in "12"}
        assert up == {"one", "two"}
        token = host_token(env)
        before = {g["name"]: g for g in admin_call(f"{admin}/vm/guests", token)["guests"]}  # type: ignore[union-attr]
        for again in (("two",), ("two", str(relay))):  # with or without an image: one answer
            done = subprocess.run(
                retreatkit_argv("vm", "start", *again), capture_output=True, text=True,
                timeout=60, env={**os.environ, **env}, check=False,
            )  # fmt: skip
            assert (done.returncode, done.stderr) == (
                1,
                "retreatkit: guest two is running: stop it first (retreatkit vm stop two)\n",
            )

        with socket.socket() as taken:  # a guest whose port is taken fails, and says so
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            done = subprocess.run(
                retreatkit_argv("vm", "start", "three", str(relay), "--memory", "64",
                                "--forward", f"tcp:127.0.0.1:{port}:9000"),
                capture_output=True, text=True, timeout=BOOT_TIMEOUT,
                env={**os.environ, **env}, check=False,
            )  # fmt: skip
        assert done.returncode == 1, done.stderr
        assert done.stderr.splitlines()[-1].startswith("retreatkit: guest three did not start: ")

        os.kill(before["one"]["pid"], signal.SIGKILL)  # qemu dies, as in a crash
        supervisor.wait_for(r"^Guest one exited \(killed by signal 9\); restart 1$", BOOT_TIMEOUT)
        supervisor.wait_for(r"^Guest one up; admin on ", BOOT_TIMEOUT)
        # the dashboard's Logs screen shows the restart too, as the vm service's warning
        restarted = "Guest one exited (killed by signal 9); restart 1"
        records = logged(admin, token, restarted)
        assert records[-1] == ("vm", "WARNING", restarted)
        assert ("vm", "INFO", f"Guest one up; admin on {before['one']['admin']}/status") in records
        after = {g["name"]: g for g in admin_call(f"{admin}/vm/guests", token)["guests"]}  # type: ignore[union-attr]
        assert after["one"]["state"] == "running"
        assert after["one"]["restarts"] == 1
        assert after["one"]["pid"] != before["one"]["pid"]
        assert after["one"]["admin"] == before["one"]["admin"]  # same ports after a restart
        assert after["two"]["restarts"] == 0
        assert after["two"]["pid"] == before["two"]["pid"]
        assert after["two"]["memory_bytes"] > 64_000_000
        assert after["two"]["cpu_seconds"] > 0
        # each guest serves with a token of its own, which the supervisor gives for its own
        own = admin_call(f"{admin}/vm/guests/one/token", token)["token"]
        assert isinstance(own, str) and own != token
        kept = Path(env["XDG_STATE_HOME"]) / "retreatkit" / "vm" / "one" / "admin-token"
        assert kept.read_text() == own + "\n" and kept.stat().st_mode & 0o777 == 0o600
        assert admin_get(f"{after['one']['admin']}/healthz", own) == b"ok\n"  # it serves
        assert refused(f"{after['one']['admin']}/healthz", token) == 401  # not the host's

        stats = subprocess.run(
            retreatkit_argv("vm", "stats", "one"),
            capture_output=True, text=True, timeout=60, env={**os.environ, **env}, check=False,
        )  # fmt: skip
        assert "restarts: 1" in stats.stdout.splitlines()
        assert "last exit: killed by signal 9" in stats.stdout.splitlines()
        listed = subprocess.run(retreatkit_argv("vm", "list"), capture_output=True, text=True,
                                timeout=60, env={**os.environ, **env}, check=False)  # fmt: skip
        assert listed.stdout.split("\n")[0].split() == [
            "NAME", "SERVICE", "STATE", "UPTIME", "RESTARTS", "MEMORY", "CPU", "ADMIN", "LAST",
            "EXIT"
        ]  # fmt: skip
        one = next(line for line in listed.stdout.splitlines() if line.startswith("one "))
        assert one.endswith(" killed by signal 9")

        console = subprocess.run(
            retreatkit_argv("vm", "console", "one", "-n", "2"),
            capture_output=True, text=True, timeout=60, env={**os.environ, **env}, check=False,
        )  # fmt: skip
        assert (
            console.stdout
            == "Relay listening on 0.0.0.0:9000\nAdmin on http://0.0.0.0:8080/status\n"
        )

        # the dashboard's action: stop a guest through the admin endpoint
        stopped = admin_call(f"{admin}/vm/guests/two/stop", token, "POST")
        assert stopped["state"] == "stopped"
        assert stopped["pid"] is None
    finally:
        supervisor.popen.send_signal(signal.SIGINT)
        code, lines = supervisor.finish(BOOT_TIMEOUT)
    assert code == 0, lines
    console = Path(env["XDG_STATE_HOME"]) / "retreatkit" / "vm" / "one" / "console.log"
    assert console.read_text().count("Relay listening on 0.0.0.0:9000") == 2
    boot = re.compile(r"--- boot at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d ---")
    boots = [n for n, line in enumerate(console.read_text().splitlines()) if boot.fullmatch(line)]
    assert len(boots) == 2 and boots[0] == 0  # each boot starts with the host's line


@pytest.mark.parametrize("network", ["user", "passt"])
async def test_a_guest_that_cannot_start_is_given_up_with_its_reason(
    image: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    network: str,
) -> None:
    """Its port taken by another program, the guest cannot start: the supervisor says why
    at each start (qemu's user networking said it in a long line of its own, passt in its
    own words), and stops trying. No guest boots."""
    if network == "passt" and shutil.which("passt") is None:
        pytest.skip("passt is not installed (.ci/run does)")
    relay = image("relay")
    config = tmp_path / "retreat.toml"
    config.write_text(f'[images]\nnetwork = "{network}"\n')
    for var, value in isolated_env(tmp_path / "home").items():
        monkeypatch.setenv(var, value)
    caplog.set_level(logging.INFO, "retreatkit.vm")
    supervisor = Supervisor(tmp_path / "vm", restarts=lambda: Restarts(0.0))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        forward = f"tcp:127.0.0.1:{port}:9000"
        supervisor.define(
            Definition("r9", str(relay), [forward], memory_mb=64, restart=True, config=str(config))
        )
        keeper = (await supervisor.start("r9")).keeper
        assert keeper is not None
        await asyncio.wait_for(keeper, BOOT_TIMEOUT)
    item = supervisor.item("r9")
    assert (item["state"], item["restarts"]) == ("failed", 4)
    reason = item["last_exit"]
    assert reason == (
        f"could not start: tcp 127.0.0.1:{port} (to guest port 9000) is in use by another"
        " program: free it, or forward another port to guest port 9000"
    )
    said = [r.getMessage() for r in caplog.records if r.name == "retreatkit.vm"]
    assert said == [
        f"Guest r9 starting; admin on {item['admin']}/status",
        *(f"Guest r9 exited ({reason}); restart {n}" for n in range(1, 5)),
        f"Guest r9 exited ({reason}); 5 exits in a row within 10 s of the start: not restarted",
    ]
    assert supervisor.warnings() == [
        f"guest r9 failed: {reason} (5 exits in a row within 10 s of the start: not restarted)"
    ]


def test_up_runs_a_service_as_an_image(tmp_path: Path, env: dict[str, str]) -> None:
    config = up_config(
        tmp_path,
        f'[images]\nrun = ["relay"]\nmemory = 64\ndir = "{tmp_path / "images"}"\n',
    )
    up = Process.start(retreatkit_argv("--config", str(config), "up"), env=env)
    try:
        seen: dict[str, str] = {}
        pattern = r"^(Admin on|Guest relay up; admin on) (http://\S+)/status$"
        while len(seen) < 2:
            match = up.wait_for(pattern, BOOT_TIMEOUT)
            seen[match[1]] = match[2]
        admin, guest_admin = seen["Admin on"], seen["Guest relay up; admin on"]
        built = next(i for i, line in enumerate(up.seen) if line.startswith("Image "))
        assert re.match(r"^Image \S+/relay built \(\d+\.\d MB\)$", up.seen[built])
        assert "Building the relay image..." in up.seen[:built]  # its first: no estimate
        assert not any(line.startswith("Relay listening") for line in up.seen)  # not in-process
        status = get_json(f"{admin}/status", host_token(env))
        assert "relay" not in status
        assert status["vm"]["guests_running"] == 1  # type: ignore[index]
        guests = get_json(f"{admin}/vm/guests", host_token(env))["guests"]
        assert [(g["name"], g["service"], g["state"]) for g in guests] == [  # type: ignore[union-attr,index]
            ("relay", "relay", "running")
        ]
        own = Path(env["XDG_STATE_HOME"]) / "retreatkit" / "vm" / "relay" / "admin-token"
        # the guest serves its own status, for its own token
        assert "relay" in get_json(f"{guest_admin}/status", own.read_text().strip())
        # attendees are told of the guest's relay, at its forward (on the console and on
        # the dashboard's overview)
        [port] = [f.split(":")[2] for f in guests[0]["forwards"] if f.endswith(":9000")]  # type: ignore[index]
        line = f"  bob relay: 127.0.0.1:{port} (loopback only: attendees cannot reach it)"
        if line not in up.seen:
            up.wait_for(f"^{re.escape(line)}$", 10)
        assert up.seen[up.seen.index(line) - 1] == "Attendees use:"
        attendees = status["process"]["attendees"]  # type: ignore[index]
        assert attendees[0] == line.strip()  # type: ignore[index]
    finally:
        up.popen.send_signal(signal.SIGTERM)
        code, lines = up.finish(BOOT_TIMEOUT)
    assert code == 0, lines
    assert lines[-1] == "Stopped: mirror, nameserver, vm (guest relay)"  # the guest named too


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (.ci/run does)")
def test_up_survives_sighup_and_hands_a_nameserver_guest_the_edited_list(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """SIGHUP, docs/operations.md's reload after editing a blocklist, ended `up` (129, every
    guest gone) when the nameserver ran as a guest; and a reload asked of the guest read
    again only the copy it booted with, while saying it had reloaded."""
    lists = tmp_path / "blocks.txt"
    lists.write_text("0.0.0.0 ads.example.test\n")
    config = up_config(
        tmp_path,
        f'blocklists = ["{lists}"]\n'
        f'[images]\nrun = ["nameserver"]\nmemory = 64\ndir = "{tmp_path / "images"}"\n',
    )
    up = Process.start(retreatkit_argv("--config", str(config), "up", "--no-tui"), env=env)
    try:
        admin = up.wait_for(r"^Admin on (http://\S+)/status$", BOOT_TIMEOUT)[1]
        if not any(line.startswith("Guest nameserver up;") for line in up.seen):
            up.wait_for(r"^Guest nameserver up; admin on ", BOOT_TIMEOUT)
        guests = get_json(f"{admin}/vm/guests", host_token(env))["guests"]
        port = int(guests[0]["address"].rsplit(":", 1)[1])  # type: ignore[index]
        assert dig(port, "new.example.test") == []  # upstream 127.0.0.1:9 answers nothing

        lists.write_text("0.0.0.0 ads.example.test\n0.0.0.0 new.example.test\n")
        up.popen.send_signal(signal.SIGHUP)
        up.wait_for(
            f"^SIGHUP: guest nameserver: blocklists reloaded: 2 entries from {lists}$",
            BOOT_TIMEOUT,
        )
        assert dig(port, "new.example.test") == ["0.0.0.0"]

        # the dashboard's `r` for the guest: its supervisor reads the file and hands it over
        lists.write_text("0.0.0.0 new.example.test\n")
        path = "/vm/guests/nameserver/blocklists/reload"
        answer = admin_call(f"{admin}{path}", host_token(env), "POST")
        assert [(s["source"], s["entries"]) for s in answer["blocklists"]] == [  # type: ignore[union-attr,index]
            (str(lists), 1)
        ]
        assert dig(port, "ads.example.test") == []
    finally:
        up.popen.send_signal(signal.SIGTERM)
        code, lines = up.finish(BOOT_TIMEOUT)
    assert code == 0, lines
    assert lines[-1] == "Stopped: relay, mirror, vm (guest nameserver)"


def test_up_uses_an_image_built_from_the_same_inputs_and_names_its_guest_at_ctrl_c(
    image: Callable[[str], Path], tmp_path: Path, env: dict[str, str]
) -> None:
    """Every start rebuilt each image, one after the other, without a word (the DNS of a
    nameserver guest was down about a minute at each restart); Ctrl-C while the nameserver's
    image built, with the relay's guest running, ended on `Stopped: mirror`."""
    images = tmp_path / "images"
    shutil.copytree(image("relay"), images / "relay")  # built by `image build`, as here
    built_at = json.loads((images / "relay" / "inputs.json").read_text())["built_at"]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(built_at))
    config = up_config(
        tmp_path,
        f'[images]\nrun = ["relay", "nameserver"]\nmemory = 64\ndir = "{images}"\n',
    )
    up = Process.start(retreatkit_argv("--config", str(config), "up"), env=env)
    try:
        # said once the relay's guest is started: Ctrl-C then, as its build takes a while
        up.wait_for(r"^Building the nameserver image\.\.\.$", BOOT_TIMEOUT)
    finally:
        up.popen.send_signal(signal.SIGINT)
        code, lines = up.finish(BOOT_TIMEOUT)
    assert code == 0, lines
    assert f"Using the relay image built at {when} ({images / 'relay'})" in lines
    assert not any(line.startswith("Image ") for line in lines), lines  # nothing built
    assert lines[-1] == "Stopped: mirror, vm (guest relay)"
    assert not processes_naming(str(images))  # the build was ended, not left


def test_a_guest_stopped_while_its_kernel_boots_still_stops_cleanly(
    image: Callable[[str], Path], env: dict[str, str]
) -> None:
    """Ctrl-C right after qemu starts: the stop written then met no open console and was
    lost, and the guest was powered off 30 s later (a mirror's disk not unmounted)."""
    relay = image("relay")
    proc = Process.start(retreatkit_argv("image", "run", str(relay)), env=env)
    try:
        proc.wait_for(r"^Network: ", BOOT_TIMEOUT)  # said once qemu runs
    finally:
        proc.popen.send_signal(signal.SIGINT)
        code, lines = proc.finish(BOOT_TIMEOUT)
    assert code == 130, lines
    assert "retreatkit: stopping at the host's request" in lines  # it heard, not a power-off
    assert "retreatkit: guest stopping (exit code 0)" in lines
    assert lines[-2:] == ["Guest stopped", "retreatkit: interrupted"]


def test_up_stops_at_once_when_asked_while_it_builds_its_images(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """Ctrl-C while `up` builds its images: it used to build and boot every guest first."""
    config = tmp_path / "retreat.toml"
    config.write_text(
        '[admin]\nlisten = "127.0.0.1:0"\n'
        '[relay]\nlisten = "127.0.0.1:0"\n[mirror]\nlisten = "127.0.0.1:0"\n'
        '[nameserver]\nlisten = "127.0.0.1:0"\n'
        f'[images]\nrun = ["relay", "nameserver", "mirror"]\ndir = "{tmp_path / "images"}"\n'
    )
    up = Process.start(retreatkit_argv("--config", str(config), "up"), env=env)
    try:
        up.wait_for(r"^Network: ", BOOT_TIMEOUT)  # said before the first image is built
    finally:
        up.popen.send_signal(signal.SIGINT)
        code, lines = up.finish(BOOT_TIMEOUT)
    assert code == 0, lines
    assert lines[-2:] == ["Stopping...", "Stopped before any service had started"]
    assert not any(line.startswith(("Image ", "Guest ")) for line in lines), lines
    assert not (tmp_path / "images" / "relay" / "manifest.json").exists()
    assert not processes_naming(str(tmp_path / "images"))  # the build was ended, not left


def processes_naming(text: str) -> list[int]:
    """The processes whose command line holds `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
    return found


def test_debians_kernel_boots_with_the_modules_it_needs(
    tmp_path: Path, env: dict[str, str]
) -> None:
    done = subprocess.run(
        retreatkit_argv("image", "build", "relay", "--kernel", "debian", "-o", str(tmp_path)),
        capture_output=True, text=True, timeout=900, env={**os.environ, **env}, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("Kernel: Debian linux-image-")
    manifest = json.loads((tmp_path / "relay" / "manifest.json").read_text())
    assert manifest["machine"] == "pc"
    modules = manifest["modules"]  # computed from the devices' modaliases, dependencies first
    assert {"virtio_pci", "virtio_net", "virtio_blk", "virtio_rng"} <= set(modules)
    assert modules.index("virtio_ring") < modules.index("virtio_pci") < modules.index("virtio_net")
    guest = start_guest(tmp_path / "relay", "--memory", "160", env=env)
    try:
        assert admin_get(f"{guest.admin}/healthz", guest.token) == b"ok\n"
    finally:
        code, lines = guest.interrupt()
    assert code == 130, lines
