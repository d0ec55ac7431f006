"""`retreatkit nameserver` refusing what cannot work, as the organiser meets it: one line per
problem naming its key (and flag), exit code 2, and nothing listening."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from retreatkit.nameserver.testing import home_env

pytestmark = pytest.mark.e2e


def nameserver(
    *args: str, tmp: Path, config: str | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "retreatkit.cli.main"]
    if config is not None:
        (tmp / "retreat.toml").write_text(config)
        argv += ["--config", str(tmp / "retreat.toml")]
    argv += ["nameserver", "--admin", "127.0.0.1:0", *args]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=30, env=home_env(tmp / "home")
    )


def test_list_files_must_be_there_at_start_and_urls_are_not_fetched(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    got = nameserver(
        "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9",
        "--blocklist", str(missing), "--blocklist", str(tmp_path), "--blocklist", "/dev/null",
        "--blocklist", "http://192.0.2.1/hosts.txt",  # no uplink yet: fine until it loads
        "--rate-limit", "-5", tmp=tmp_path,
    )  # fmt: skip
    assert got.returncode == 2
    assert got.stderr.splitlines() == [
        "retreatkit: [nameserver] rate_limit (or --rate-limit) must be 0 or more, not -5",
        f"retreatkit: [nameserver] blocklists (or --blocklist): {missing}: No such file or"
        " directory",
        f"retreatkit: [nameserver] blocklists (or --blocklist): {tmp_path}: a folder, not a file",
        "retreatkit: [nameserver] blocklists (or --blocklist): /dev/null: not a regular file",
    ]


def test_an_upstream_name_that_does_not_resolve_stops_the_start(tmp_path: Path) -> None:
    try:
        socket.getaddrinfo("bogus.invalid", 53, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        why = exc.strerror  # what this machine's resolver says
    got = nameserver("--listen", "127.0.0.1:0", "--upstream", "bogus.invalid", tmp=tmp_path)
    assert got.returncode == 2
    assert got.stderr == (
        "retreatkit: [nameserver] upstreams (or --upstream): cannot resolve 'bogus.invalid'"
        f" ({why}): give its address\n"
    )


def test_listen_names_its_port_and_an_unknown_host_is_said_once(tmp_path: Path) -> None:
    # a bare host would bind 53 or 5300 by a guess: ask for the port instead
    got = nameserver(tmp=tmp_path, config='[nameserver]\nlisten = "127.0.0.1"\n')
    assert got.returncode == 2
    assert got.stderr == (
        "retreatkit: [nameserver] listen (or --listen): expected HOST:PORT, got '127.0.0.1'\n"
    )
    got = nameserver("--listen", "nohost.invalid:5300", "--upstream", "127.0.0.1:9", tmp=tmp_path)
    assert got.returncode == 1
    assert got.stderr == (
        "retreatkit: cannot start: nameserver: cannot resolve 'nohost.invalid': change"
        " [nameserver] listen (or --listen)\n"
    )


def test_config_errors_say_their_section_and_key(tmp_path: Path) -> None:
    got = nameserver(
        "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9", tmp=tmp_path,
        config='[nameserver]\nblock_mode = "sinkhole"\n[nameserver.records]\n'
        '"printer.retreat.lan" = "10"\n"loopa.retreat.lan" = "cname:loopb.retreat.lan"\n'
        '"loopb.retreat.lan" = "cname:loopa.retreat.lan"\n',
    )  # fmt: skip
    assert got.returncode == 2
    assert got.stderr.splitlines() == [
        "retreatkit: [nameserver] records (or --record): expected an IP address or cname:TARGET"
        " for printer.retreat.lan, got '10'",
        "retreatkit: [nameserver] records (or --record): CNAME loop: loopa.retreat.lan ->"
        " loopb.retreat.lan -> loopa.retreat.lan",
        "retreatkit: [nameserver] block_mode (or --block-mode): expected null or nxdomain,"
        " got 'sinkhole'",
    ]


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("allow = [5]", "{config}: [nameserver] allow should be a list of strings; got 5 in it"),
        (
            'upstreams = ["192.0.2.1", 53]',
            "{config}: [nameserver] upstreams should be a list of strings; got 53 in it",
        ),
        (
            'blocklists = [["a.txt"]]',
            "{config}: [nameserver] blocklists should be a list of strings; got a list in it",
        ),
        (
            'networks = ["10.0.0.0/33"]',
            "[nameserver] networks: not a network: '10.0.0.0/33' (expected ADDRESS/PREFIX,"
            " like 10.0.0.0/8)",
        ),
        (
            'networks = ["10.53.1.1/24"]',
            "[nameserver] networks: '10.53.1.1/24' has host bits set: the network is"
            " '10.53.1.0/24'",
        ),
        (
            'allow = ["cdn example"]',
            "[nameserver] allow (or --allow): not a domain: 'cdn example' (expected a name"
            " like cdn.example)",
        ),
        (
            'upstreams = ["192.0.2.1:0"]',
            "[nameserver] upstreams (or --upstream): port 0 is no server's port, in"
            " '192.0.2.1:0' (53 is DNS)",
        ),
    ],
)
def test_a_value_that_cannot_work_is_one_line_naming_its_key(
    tmp_path: Path, line: str, error: str
) -> None:
    """Items of the wrong type in a list, networks, allowed domains and an upstream's port:
    before, a traceback, a message naming no key, or nothing at all (ignored, or a server
    that could never be asked)."""
    got = nameserver("--listen", "127.0.0.1:0", tmp=tmp_path, config=f"[nameserver]\n{line}\n")
    assert (got.returncode, got.stdout) == (2, "")
    config = tmp_path / "retreat.toml"
    assert got.stderr == f"retreatkit: {error.format(config=config)}\n"


def test_a_port_another_dns_server_holds_is_one_line(tmp_path: Path) -> None:
    """Another DNS server (systemd-resolved, dnsmasq) holds the port for UDP and TCP."""
    with contextlib.ExitStack() as held:
        for _ in range(20):  # a port free for UDP may be taken for TCP: try another
            udp = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            tcp = held.enter_context(socket.socket())
            with contextlib.suppress(OSError):
                tcp.bind(("127.0.0.1", port))
                tcp.listen()
                break
        got = nameserver("--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:9", tmp=tmp_path)
    assert (got.returncode, got.stdout) == (1, "")
    assert got.stderr == (
        f"retreatkit: cannot start: nameserver: UDP and TCP 127.0.0.1:{port} are in use by"
        " another program: change [nameserver] listen (or --listen)\n"
    )


def test_an_upstream_that_is_this_nameserver_itself_is_refused(tmp_path: Path) -> None:
    """A loop: every question would come back to us, and end in SERVFAIL after a wait."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for listen, upstream in ((f"127.0.0.1:{port}", f"127.0.0.1:{port}"),
                             (f"0.0.0.0:{port}", f"127.0.0.2:{port}")):  # fmt: skip
        got = nameserver("--listen", listen, "--upstream", upstream, tmp=tmp_path)
        assert (got.returncode, got.stdout) == (2, "")
        assert got.stderr == (
            f"retreatkit: [nameserver] upstreams (or --upstream): {upstream} is this nameserver"
            " itself: every question would come back to it (a loop); name the venue's"
            " resolvers\n"
        )
    got = nameserver(
        "--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:9",
        "--forward", f"venue.example=127.0.0.1:{port}", tmp=tmp_path,
    )  # fmt: skip
    assert got.stderr == (
        f"retreatkit: [nameserver] forward (or --forward): 127.0.0.1:{port} is this nameserver"
        " itself: every question would come back to it (a loop); name the venue's resolvers\n"
    )
