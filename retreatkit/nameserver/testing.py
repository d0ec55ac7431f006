"""Test tools for the nameserver on the wire: dnsmasq, our server as a process, upstreams
a test writes (scripted replies, or a zone over UDP and TCP). In-process tools: fakes."""

from __future__ import annotations

import contextlib
import getpass
import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rrset

from retreatkit.nameserver.fakes import Zone
from retreatkit.nameserver.loops import SUFFIX
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
    def start(cls, hosts: Path, ttl: int = 60, extra: tuple[str, ...] = ()) -> Dnsmasq:
        """`extra`: more dnsmasq options, e.g. `--address=/zone/ADDRESS` to answer every
        name under a zone."""
        for _ in range(5):  # a port free for UDP may be taken for TCP: try another
            try:
                return cls._start(hosts, ttl, extra)
            except RuntimeError:
                continue
        raise RuntimeError("dnsmasq did not start")

    @classmethod
    def _start(cls, hosts: Path, ttl: int, extra: tuple[str, ...]) -> Dnsmasq:
        binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        port = free_udp_port()
        argv = [
            binary, "--keep-in-foreground", "--no-resolv", "--no-hosts", f"--port={port}",
            "--listen-address=127.0.0.1", "--bind-interfaces", f"--addn-hosts={hosts}",
            f"--local-ttl={ttl}", f"--neg-ttl={ttl}", "--cache-size=10000", "--pid-file=",
            "--local=/test/", f"--user={getpass.getuser()}",  # root's dnsmasq drops to nobody
            *extra,
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
    home: Path

    def stop(self) -> int:
        code = self.process.stop()
        shutil.rmtree(self.home, ignore_errors=True)
        return code

    @property
    def token(self) -> str:
        """The admin token the process made on its first start, in its own state folder."""
        return (self.home / "state" / "retreatkit" / "admin-token").read_text().strip()

    def request(self, method: str, path: str, body: object = None) -> object:
        """One request to its admin endpoint, with the token, as the dashboard makes it;
        the JSON answer (None for none)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - http to our own admin endpoint
            f"{self.admin}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as r:  # noqa: S310 - the same
            raw = r.read()
        return json.loads(raw) if raw else None


def home_env(home: Path) -> dict[str, str]:
    """Everything a process would keep in the user's folders goes under `home`."""
    return {
        "HOME": str(home),
        "XDG_STATE_HOME": str(home / "state"),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CONFIG_HOME": str(home / "config"),
    }


def start_nameserver(
    *args: str, config: Path | None = None, listen: str = "127.0.0.1:0"
) -> NameserverProcess:
    argv = [sys.executable, "-m", "retreatkit.cli.main"]
    if config is not None:
        argv += ["--config", str(config)]
    argv += ["nameserver", "--listen", listen, "--admin", "127.0.0.1:0", *args]
    home = Path(tempfile.mkdtemp(prefix="rkns-home-"))
    proc = Process.start(argv, env=home_env(home))
    try:
        port = int(proc.wait_for(r"^Nameserver listening on \S+:(\d+) ")[1])
        admin = proc.wait_for(r"^Admin on (http://\S+)/status$")[1]
        if "--blocklist" in args and not any("blocklists loaded" in line for line in proc.seen):
            proc.wait_for(r"blocklists loaded")  # lists load beside the sockets: either order
    except Exception:
        proc.stop()
        shutil.rmtree(home, ignore_errors=True)
        raise
    return NameserverProcess(proc, port, admin, home)


@dataclass(frozen=True)
class TwoHosts:
    """A server and a client host in network namespaces of their own, on one link; each
    has an address in the LAN (10.53.0.0/24) and one outside it (TEST-NET-2), and the
    client one in an IPv6 ULA (fd00:53::/64)."""

    server: str
    client: str
    server_lan: str = "10.53.0.1"
    client_lan: str = "10.53.0.2"
    client_outside: str = "198.51.100.2"
    client_lan6: str = "fd00:53::2"

    def on(self, host: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", host, *argv]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def two_hosts(prefix: str = "rkns", server_more: tuple[str, ...] = ()) -> Iterator[TwoHosts]:
    """Made for one test and removed after it, whatever happens (needs root, iproute2).
    `server_more`: more addresses of the server on the link (`ADDRESS/PREFIX`, IPv4 or
    IPv6), each network routed there from the client."""
    tag = f"{prefix}-{os.getpid()}"
    hosts = TwoHosts(f"{tag}-s", f"{tag}-c")
    link = f"{prefix}{os.getpid() % 10**8}"  # interface names: 15 characters at most
    try:
        for name in (hosts.server, hosts.client):
            _ip("netns", "add", name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", hosts.server, "link", "add", link + "s", "type", "veth", "peer", "name",
            link + "c", "netns", hosts.client)  # fmt: skip
        for name, device, address in (
            (hosts.server, link + "s", f"{hosts.server_lan}/24"),
            (hosts.client, link + "c", f"{hosts.client_lan}/24"),
            (hosts.client, link + "c", f"{hosts.client_outside}/24"),
            (hosts.client, link + "c", f"{hosts.client_lan6}/64"),
            *((hosts.server, link + "s", more) for more in server_more),
        ):
            # nodad: an IPv6 address is usable at once, not after duplicate detection
            _ip("-n", name, "addr", "add", address, "dev", device, *(["nodad"] * (":" in address)))
            _ip("-n", name, "link", "set", device, "up")
        for more in server_more:
            network = ipaddress.ip_interface(more).network
            if not any(
                ipaddress.ip_address(a) in network
                for a in (hosts.client_lan, hosts.client_outside, hosts.client_lan6)
            ):
                _ip("-n", hosts.client, "route", "add", str(network), "dev", link + "c")
        # the outside network is routed to the server, which has no address in it: its
        # answers leave from the address the client asked
        _ip("-n", hosts.server, "route", "add", "198.51.100.0/24", "dev", link + "s")
        yield hosts
    finally:
        for name in (hosts.server, hosts.client):  # the link goes with its namespaces
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


Script = Callable[[dns.message.Message, socket.socket, tuple[str, int]], None]
PROBES = dns.name.from_text(SUFFIX)


@dataclass
class ScriptedUpstream:
    """A UDP upstream in a thread whose replies a test writes: spoofs, delays, counts.

    The nameserver's loop probe (loops.py) is answered NXDOMAIN, as a resolver answers
    `.test` names, and is neither scripted nor kept in `queries`: the test's questions are.
    """

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
            if query.question and query.question[0].name.is_subdomain(PROBES):
                answer = dns.message.make_response(query)
                answer.set_rcode(dns.rcode.NXDOMAIN)
                self.sock.sendto(answer.to_wire(), addr)
                continue
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


@dataclass
class ZoneUpstream:
    """A real upstream on 127.0.0.1, UDP and TCP, answering from a Zone in threads.

    It truncates UDP answers to what the query allows (TC), as a real server does, and
    with `silent` it reads every query and answers none (no ICMP either); with
    `silent_under` only questions for names under that domain (a zone whose own servers
    are silent, while the upstream answers the rest).
    """

    zone: Zone
    silent: bool = False
    silent_under: str = ""
    queries: list[tuple[str, dns.message.Message]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for _ in range(20):  # the UDP port must be free for TCP as well
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind(("127.0.0.1", 0))
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.bind(("127.0.0.1", self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
        self.tcp.listen(16)
        self.udp.settimeout(0.2)
        self.tcp.settimeout(0.2)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._serve_udp, daemon=True),
            threading.Thread(target=self._serve_tcp, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def port(self) -> int:
        return int(self.udp.getsockname()[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def asked(self, transport: str | None = None) -> int:
        return sum(1 for how, _ in self.queries if transport is None or how == transport)

    def _answers(self, query: dns.message.Message) -> bool:
        if self.silent:
            return False
        under = self.silent_under
        return not (under and query.question[0].name.is_subdomain(dns.name.from_text(under)))

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.udp.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            query = dns.message.from_wire(data)
            self.queries.append(("udp", query))
            if not self._answers(query):
                continue
            wire = self.zone.answer(query).to_wire(max_size=65535)
            limit = max(512, query.payload) if query.edns >= 0 else 512
            if len(wire) > limit:
                cut = dns.message.make_response(query)
                cut.flags |= dns.flags.TC
                wire = cut.to_wire()
            self.udp.sendto(wire, addr)

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(5)
                try:
                    (length,) = struct.unpack(">H", _read(conn, 2))
                    query = dns.message.from_wire(_read(conn, length))
                except (OSError, struct.error, dns.exception.DNSException):
                    continue
                self.queries.append(("tcp", query))
                if not self._answers(query):
                    continue
                wire = self.zone.answer(query).to_wire(max_size=65535)
                conn.sendall(struct.pack(">H", len(wire)) + wire)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self.udp.close()
        self.tcp.close()


def _read(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data
