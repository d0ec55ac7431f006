"""A forwarding loop through the organiser's own resolver, with real parts: the kit's
nameserver on the LAN address takes its upstreams from resolv.conf, whose first is the
laptop's resolver (Debian's dnsmasq on 127.0.0.53, where systemd-resolved sits); and
that resolver's resolv.conf, from DHCP, names the LAN's DNS server: the kit. An attendee
asks with dig from a host of its own."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from retreatkit.nameserver.testing import TwoHosts, home_env, two_hosts
from retreatkit.testing import Process

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (.ci/run does)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(
        shutil.which("dnsmasq") is None and not Path("/usr/sbin/dnsmasq").exists(),
        reason="dnsmasq is not installed (.ci/run does)",
    ),
]
LAPTOP = "127.0.0.53"  # the organiser's own resolver, where systemd-resolved listens
VENUE = "127.0.0.2"  # the venue's resolver: the uplink
HOSTS = "198.51.100.7 www.example.test\n198.51.100.8 new.example.test\n"
STAMP = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} retreatkit.nameserver "
LOOPING = (
    f"upstream {LAPTOP}:53 is looping{{was}}: our question to it came back to us (it"
    " forwards to this nameserver); not asked until that ends, checked every {every} s"
)


@dataclass
class Event:
    hosts: TwoHosts
    folder: Path
    processes: list[subprocess.Popen[bytes]]

    def dnsmasq(self, name: str, address: str, *options: str) -> Path:
        """A dnsmasq on `address`:53 of the kit's host, logging each query to NAME.log."""
        log = self.folder / f"{name}.log"
        argv = [
            shutil.which("dnsmasq") or "/usr/sbin/dnsmasq", "--keep-in-foreground",
            "--no-hosts", f"--listen-address={address}", "--bind-interfaces", "--pid-file=",
            "--user=root", "--log-queries", f"--log-facility={log}", *options,
        ]  # fmt: skip
        self.processes.append(subprocess.Popen(self.hosts.on(self.hosts.server, argv)))
        self.wait_log(log, r"query\[TXT\] version\.bind from", address)
        return log

    def laptop_uses(self, server: str) -> None:
        """The laptop's resolv.conf names `server` (DHCP gave it); its dnsmasq reads it."""
        resolv = self.folder / "laptop-resolv.conf"
        was = resolv.stat().st_mtime if resolv.exists() else None
        fresh = self.folder / "laptop-resolv.conf.new"
        fresh.write_text(f"nameserver {server}\n")
        if was is not None:  # dnsmasq compares whole seconds: a change it cannot miss
            os.utime(fresh, (was + 10, was + 10))
        fresh.replace(resolv)
        if was is not None:
            pattern = rf"using nameserver {re.escape(server)}#53"
            self.wait_log(self.folder / "laptop.log", pattern, LAPTOP)

    def wait_log(self, log: Path, pattern: str, address: str) -> None:
        """Until `log` has a line matching `pattern`, asking the dnsmasq on `address` a
        question it answers itself meanwhile: it reads a changed resolv.conf when a
        question wakes it, and says nothing of it but in its log."""
        ask = ["dig", f"@{address}", "+time=1", "+tries=1", "version.bind", "chaos", "txt"]
        for _ in range(100):
            if log.exists() and re.search(pattern, log.read_text(), re.M):
                return
            if self.processes[-1].poll() is not None:
                break  # a dnsmasq that could not start
            subprocess.run(self.hosts.on(self.hosts.server, ask), capture_output=True)
        raise AssertionError(f"{log.name} never said {pattern!r}")

    def kit(self, *upstreams: str, recheck: float = 30.0) -> Process:
        """The kit's nameserver on the LAN address, port 53, upstreams from resolv.conf."""
        etc = Path("/etc/netns") / self.hosts.server
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text("".join(f"nameserver {u}\n" for u in upstreams))
        config = self.folder / "retreat.toml"
        config.write_text(f"[nameserver]\nupstream_recheck = {recheck}\n")
        argv = [sys.executable, "-m", "retreatkit.cli.main", "--config", str(config),
                "nameserver", "--listen", f"{self.hosts.server_lan}:53",
                "--admin", "127.0.0.1:0", "--record", "wiki.retreat.lan=10.53.0.9"]  # fmt: skip
        return Process.start(self.hosts.on(self.hosts.server, argv), env=home_env(self.folder))

    def dig(self, name: str) -> str:
        """What an attendee's dig gets: the addresses, or the status when there are none."""
        argv = ["dig", f"@{self.hosts.server_lan}", "+time=6", "+tries=1", name]
        out = subprocess.run(
            self.hosts.on(self.hosts.client, argv), capture_output=True, text=True, timeout=30
        ).stdout
        answers = re.findall(rf"^{re.escape(name)}\.\s+\d+\s+IN\s+A\s+(\S+)$", out, re.M)
        return " ".join(answers) or re.search(r"status: (\w+)", out)[1]  # type: ignore[index]


@pytest.fixture
def event(tmp_path: Path) -> Iterator[Event]:
    with two_hosts("rkloop") as hosts:
        made = Event(hosts, tmp_path, [])
        try:
            hosts_file = tmp_path / "hosts"
            hosts_file.write_text(HOSTS)
            made.dnsmasq("venue", VENUE, "--no-resolv", f"--addn-hosts={hosts_file}",
                         "--local=/test/", "--local-ttl=300")  # fmt: skip
            yield made
        finally:
            for process in made.processes:
                process.terminate()
                process.wait(10)
            shutil.rmtree(Path("/etc/netns") / hosts.server, ignore_errors=True)


def logged(kit: Process, line: str, level: str = "WARNING") -> None:
    kit.wait_for(STAMP + re.escape(f"{level} {line}") + "$")


def test_a_loop_through_the_laptops_resolver_is_named_at_start_and_passed_by(
    event: Event,
) -> None:
    """The laptop's resolver sends everything to the kit from the start. Before, every
    question the kit had not cached went to it first, came back, waited there until the
    kit gave up (1.5 s, then the venue's resolver was asked too), and the log said only
    that the laptop's resolver was slow (`failing: no answer in time`)."""
    event.laptop_uses(event.hosts.server_lan)
    laptop = event.dnsmasq("laptop", LAPTOP, f"--resolv-file={event.folder}/laptop-resolv.conf")
    kit = event.kit(LAPTOP, VENUE)
    with _stopping(kit):
        logged(kit, LOOPING.format(was="", every=30))
        assert event.dig("www.example.test") == "198.51.100.7"  # from the venue's resolver
        assert event.dig("wiki.retreat.lan") == "10.53.0.9"
        asked = laptop.read_text()
        assert "www.example.test" not in asked  # the looping upstream is asked nothing
        # our probe went round once: the laptop asked us, and we answered it ourselves
        (label,) = set(re.findall(r"query\[TXT\] (\w+)\.loop-check\.retreatkit\.test", asked))
        probe = f"{label}.loop-check.retreatkit.test"
        assert [_what(line) for line in asked.splitlines() if probe in line] == [
            f"query[TXT] {probe} from 127.0.0.1",
            f"forwarded {probe} to {event.hosts.server_lan}",
            f"reply {probe} is NXDOMAIN",
        ]
        venue = (event.folder / "venue.log").read_text()
        assert label not in venue  # it never went on to the venue's resolver


def test_a_loop_that_forms_later_is_found_and_its_end_too(event: Event) -> None:
    """DHCP renews the laptop's lease while the event runs, and its resolver now forwards
    to the kit. Cached answers and local names still answer; a new name gets SERVFAIL at
    once instead of going round; when the laptop's resolver leaves the kit again, the
    kit asks it again."""
    event.laptop_uses(VENUE)
    event.dnsmasq("laptop", LAPTOP, f"--resolv-file={event.folder}/laptop-resolv.conf")
    kit = event.kit(LAPTOP, recheck=1.0)
    with _stopping(kit):
        kit.wait_for(r"^Admin on ")
        assert event.dig("www.example.test") == "198.51.100.7"
        logged(kit, f"upstream {LAPTOP}:53 is up", "INFO")
        event.laptop_uses(event.hosts.server_lan)
        assert event.dig("new.example.test") == "SERVFAIL"  # it went round, until we gave up
        logged(kit, f"upstream {LAPTOP}:53 is failing (was up): no answer in time", "INFO")
        logged(kit, LOOPING.format(was=" (was failing)", every=1))
        assert event.dig("www.example.test") == "198.51.100.7"  # cached
        assert event.dig("wiki.retreat.lan") == "10.53.0.9"
        assert event.dig("other.example.test") == "SERVFAIL"
        assert "other.example.test" not in (event.folder / "laptop.log").read_text()
        event.laptop_uses(VENUE)
        logged(kit, f"upstream {LAPTOP}:53 is up (was looping)", "INFO")
        assert event.dig("new.example.test") == "198.51.100.8"


@contextlib.contextmanager
def _stopping(kit: Process) -> Iterator[None]:
    try:
        yield
    finally:
        kit.stop()


def _what(line: str) -> str:
    """A dnsmasq log line without its time and `dnsmasq[PID]: `."""
    return re.sub(r"^.*?dnsmasq\[\d+\]: ", "", line)
