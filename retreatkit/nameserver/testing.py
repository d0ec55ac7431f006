"""Test tools for the nameserver: dnsmasq upstream, our server as a process, scripted upstream."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.rrset

from retreatkit.testing import Process


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Dnsmasq:
    """Debian's dnsmasq answering from a hosts file, authoritative for `.test`."""

    process: subprocess.Popen[bytes]
    port: int

    @classmethod
    def start(cls, hosts: Path, ttl: int = 60) -> Dnsmasq:
        for _ in range(5):  # a port free for UDP may be taken for TCP: try another
            try:
                return cls._start(hosts, ttl)
            except RuntimeError:
                continue
        raise RuntimeError("dnsmasq did not start")

    @classmethod
    def _start(cls, hosts: Path, ttl: int) -> Dnsmasq:
        binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        port = free_udp_port()
        argv = [
            binary, "--keep-in-foreground", "--no-resolv", "--no-hosts", f"--port={port}",
            "--listen-address=127.0.0.1", "--bind-interfaces", f"--addn-hosts={hosts}",
            f"--local-ttl={ttl}", f"--neg-ttl={ttl}", "--cache-size=10000", "--pid-file=",
            "--local=/test/", f"--user={getpass.getuser()}",  # root's dnsmasq drops to nobody
        ]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = cls(proc, port)
        try:
            server.wait_ready()
        except RuntimeError:
            server.stop()
            raise
        return server

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Ask until it answers: dnsmasq says nothing when it is ready."""
        query = dns.message.make_query("ready.test", "A")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            for _ in range(int(timeout / 0.2)):
                s.sendto(query.to_wire(), ("127.0.0.1", self.port))
                try:
                    s.recvfrom(4096)
                    return
                except TimeoutError:
                    if self.process.poll() is not None:
                        break
        raise RuntimeError("dnsmasq did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@dataclass
class NameserverProcess:
    process: Process
    port: int
    admin: str

    def stop(self) -> int:
        return self.process.stop()


def start_nameserver(*args: str, config: Path | None = None) -> NameserverProcess:
    argv = [sys.executable, "-m", "retreatkit.cli.main"]
    if config is not None:
        argv += ["--config", str(config)]
    argv += ["nameserver", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", *args]
    proc = Process.start(argv)
    port = int(proc.wait_for(r"^Nameserver listening on 127\.0\.0\.1:(\d+) ")[1])
    admin = proc.wait_for(r"^Admin on (http://\S+)/status$")[1]
    if "--blocklist" in args and not any("blocklists loaded" in line for line in proc.seen):
        proc.wait_for(r"blocklists loaded")  # lists load beside the sockets: either order
    return NameserverProcess(proc, port, admin)


Script = Callable[[dns.message.Message, socket.socket, tuple[str, int]], None]


@dataclass
class ScriptedUpstream:
    """A UDP upstream in a thread whose replies a test writes: spoofs, delays, counts."""

    script: Script
    sock: socket.socket = field(init=False)
    queries: list[dns.message.Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            query = dns.message.from_wire(data)
            self.queries.append(query)
            self.script(query, self.sock, addr)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def reply(query: dns.message.Message, address: str, ttl: int = 60) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text(query.question[0].name, ttl, "IN", "A", address))
    return response
