"""A venue for the nameserver's end-to-end tests: the kit, the venue's resolver and the
internet, each in a network namespace of its own; the venue's uplink to cut and mend;
and a small internet of authoritative servers (the root, arpa, com, a reverse zone),
DNSSEC-signed where a validating resolver needs it.

Run as a script (`python dns_venue.py SPEC.json`), it is those servers: SPEC names the
zones (origin -> zone text), the addresses that serve them, the zones to sign, and
where the root's DS goes (the validating resolver's trust anchor). It prints `ready`
once every socket is bound."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.dnssec
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.zone
from cryptography.hazmat.primitives.asymmetric import ec

from retreatkit.testing import Process

KIT, ROUTER, ROUTER_WAN, GATEWAY = "10.77.0.1", "10.77.0.254", "203.0.113.2", "203.0.113.1"
ROOT, TLDS, RIR = "198.51.100.53", "198.51.100.54", "198.51.100.56"  # in the internet


@dataclass(frozen=True)
class Venue:
    """`kit` (our nameserver, the attendees' dig) on a LAN with `router` (the venue's
    resolver), whose uplink reaches `net` (the internet's servers)."""

    kit: str
    router: str
    net: str

    def on(self, host: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", host, *argv]

    def cut(self) -> None:
        """The uplink goes silent: the internet's replies to the venue are lost on the
        way, no ICMP comes back, and the venue's resolver waits on its questions."""
        _ip("-n", self.net, "route", "add", "blackhole", f"{ROUTER_WAN}/32")

    def mend(self) -> None:
        _ip("-n", self.net, "route", "del", "blackhole", f"{ROUTER_WAN}/32")

    def unplug(self) -> None:
        """The venue router's own route out is gone (its WAN link down): it knows at once."""
        _ip("-n", self.router, "route", "del", "default")

    def dig(self, *args: str, server: str = KIT, client: str = "dig") -> str:
        """What an attendee's dig (or kdig) gets: the answer's records (`NAME TTL TYPE
        DATA` each, by lines), or the status when there are none."""
        options = ["+tries=1", "+comments"] if client == "dig" else ["+retry=0", "+header"]
        argv = [client, f"@{server}", "+time=6", "+noall", "+answer", *options, *args]
        out = subprocess.run(
            self.on(self.kit, argv), capture_output=True, text=True, timeout=30
        ).stdout
        records = [
            " ".join(line.split()[:2] + line.split()[3:])
            for line in out.splitlines()
            if line and not line.startswith(";")
        ]
        if records:
            return "\n".join(records)
        status = re.search(r"status: (\w+)", out)
        return status[1] if status else out


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def venue(prefix: str) -> Iterator[Venue]:
    """Made for one test and removed after it (needs root, iproute2)."""
    tag = f"{prefix}-{os.getpid()}"
    made = Venue(f"{tag}-kit", f"{tag}-router", f"{tag}-net")
    link = f"dw{os.getpid() % 10**6}"  # interface names: 15 characters at most
    try:
        for name in (made.kit, made.router, made.net):
            _ip("netns", "add", name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", made.kit, "link", "add", link + "k", "type", "veth", "peer", "name",
            link + "l", "netns", made.router)  # fmt: skip
        _ip("-n", made.router, "link", "add", link + "w", "type", "veth", "peer", "name",
            link + "n", "netns", made.net)  # fmt: skip
        for host, device, address in (
            (made.kit, link + "k", f"{KIT}/24"),
            (made.router, link + "l", f"{ROUTER}/24"),
            (made.router, link + "w", f"{ROUTER_WAN}/24"),
            (made.net, link + "n", f"{GATEWAY}/24"),
        ):
            _ip("-n", host, "addr", "add", address, "dev", device)
            _ip("-n", host, "link", "set", device, "up")
        for address in (ROOT, TLDS, RIR):
            _ip("-n", made.net, "addr", "add", f"{address}/32", "dev", "lo")
        _ip("-n", made.router, "route", "add", "default", "via", GATEWAY)
        yield made
    finally:
        for name in (made.kit, made.router, made.net):  # the links go with their namespaces
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@contextlib.contextmanager
def running(argv: list[str], ready: str, env: dict[str, str] | None = None) -> Iterator[Process]:
    """A process for the test's length, once its stderr or stdout says `ready`."""
    process = Process.start(argv, env=env)
    try:
        process.wait_for(ready)
        yield process
    finally:
        process.stop()


def start_internet(place: Venue, folder: Path, spec: dict[str, Any]) -> Process:
    """The authoritative servers of `spec` (this module as a script) in the internet."""
    (folder / "internet.json").write_text(json.dumps(spec))
    argv = [sys.executable, __file__, str(folder / "internet.json")]
    process = Process.start(place.on(place.net, argv))
    process.wait_for("^ready$")
    return process


# the authoritative servers, run in the internet's namespace


def _load(spec: dict[str, Any]) -> dict[dns.name.Name, dns.zone.Zone]:
    zones = {
        dns.name.from_text(origin): dns.zone.from_text(text, origin, relativize=False)
        for origin, text in spec["zones"].items()
    }
    now = int(time.time())
    signed = sorted((dns.name.from_text(o) for o in spec.get("signed", [])), key=len)
    for origin in reversed(signed):  # children first: each parent holds its children's DS
        key = ec.generate_private_key(ec.SECP256R1())
        dnskey = dns.dnssec.make_dnskey(
            key.public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256, flags=257
        )
        dns.dnssec.sign_zone(
            zones[origin], keys=[(key, dnskey)], inception=now - 3600, expiration=now + 86400
        )
        ds = dns.dnssec.make_ds(origin, dnskey, "SHA256")
        if origin == dns.name.root:
            Path(spec["anchor"]).write_text(f". DS {ds.to_text()}\n")
        else:
            with zones[origin.parent()].writer() as txn:
                txn.add(origin, 86400, ds)
    return zones


class _Authority:
    """Answers as an authoritative server does: referrals with glue, AA answers,
    NXDOMAIN and NODATA with the SOA; with DO, RRSIGs, DS, and the NSEC records that
    prove a denial (RFC 4035 3.1)."""

    def __init__(self, zones: dict[dns.name.Name, dns.zone.Zone], serve: dict[str, list[str]]):
        self.zones = zones
        self.serve = {a: [dns.name.from_text(o) for o in origins] for a, origins in serve.items()}

    def answer(self, query: dns.message.Message, address: str) -> dns.message.Message:
        response = dns.message.make_response(query, recursion_available=False)
        if query.edns >= 0:
            response.use_edns(0, query.ednsflags & dns.flags.DO, payload=1232)
        do = bool(query.ednsflags & dns.flags.DO)
        name, rdtype = query.question[0].name, query.question[0].rdtype
        zone = self._zone(address, name, rdtype)
        if zone is None:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        origin = zone.origin
        assert origin is not None
        below = [n for n in _ancestors(name) if n.is_subdomain(origin) and n != origin]
        for cut in reversed(below):  # from the apex down: the first delegation is a referral
            ns = zone.get_rdataset(cut, dns.rdatatype.NS)
            if ns is None or (cut == name and rdtype == dns.rdatatype.DS):
                continue
            response.authority.append(_rrset(cut, ns))
            if do:
                ds = zone.get_rdataset(cut, dns.rdatatype.DS)
                if ds is not None:
                    self._signed(response.authority, zone, cut, ds)
                else:
                    self._nsec(response.authority, zone, cut)
            self._glue(response, ns)
            return response
        response.flags |= dns.flags.AA
        node = zone.get_node(name)
        if node is not None:
            found = node.get_rdataset(dns.rdataclass.IN, rdtype)
            if found is None and rdtype != dns.rdatatype.CNAME:
                found = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if found is not None:
                self._signed(response.answer, zone, name, found, do)
                return response
        elif not any(n.is_subdomain(name) for n in zone.nodes):  # not an empty non-terminal
            response.set_rcode(dns.rcode.NXDOMAIN)
        soa = zone.get_rdataset(origin, dns.rdatatype.SOA)
        assert soa is not None
        self._signed(response.authority, zone, origin, soa, do)
        if do:
            self._nsec(response.authority, zone, name)
            if response.rcode() == dns.rcode.NXDOMAIN:
                encloser = name.parent()
                while zone.get_node(encloser) is None:
                    encloser = encloser.parent()
                self._nsec(response.authority, zone, dns.name.Name((b"*", *encloser.labels)))
        return response

    def _zone(self, address: str, name: dns.name.Name, rdtype: int) -> dns.zone.Zone | None:
        """The deepest zone served here that holds `name` (a DS: the parent's side)."""
        best: dns.name.Name | None = None
        for origin in self.serve.get(address, []):
            if rdtype == dns.rdatatype.DS and name == origin != dns.name.root:
                continue
            if name.is_subdomain(origin) and (best is None or len(origin) > len(best)):
                best = origin
        return None if best is None else self.zones[best]

    def _glue(self, response: dns.message.Message, ns: dns.rdataset.Rdataset) -> None:
        for rdata in ns:
            for zone in self.zones.values():
                found = zone.get_rdataset(rdata.target, dns.rdatatype.A)
                if found is not None and rdata.target.is_subdomain(zone.origin):
                    response.additional.append(_rrset(rdata.target, found))
                    break

    def _signed(
        self,
        section: list[dns.rrset.RRset],
        zone: dns.zone.Zone,
        name: dns.name.Name,
        found: dns.rdataset.Rdataset,
        do: bool = True,
    ) -> None:
        section.append(_rrset(name, found))
        sigs = zone.get_rdataset(name, dns.rdatatype.RRSIG, found.rdtype) if do else None
        if sigs is not None:
            section.append(_rrset(name, sigs))

    def _nsec(self, section: list[dns.rrset.RRset], zone: dns.zone.Zone, name: dns.name.Name):
        """The NSEC at `name`, or the one that covers it (canonical order), once."""
        owners = sorted(
            n for n, node in zone.nodes.items()
            if node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NSEC) is not None
        )  # fmt: skip
        if not owners:
            return
        owner = max((n for n in owners if n <= name), default=owners[-1])
        if any(r.name == owner and r.rdtype == dns.rdatatype.NSEC for r in section):
            return
        nsec = zone.get_rdataset(owner, dns.rdatatype.NSEC)
        assert nsec is not None
        self._signed(section, zone, owner, nsec)


def _ancestors(name: dns.name.Name) -> list[dns.name.Name]:
    found = [name]
    while found[-1] != dns.name.root:
        found.append(found[-1].parent())
    return found


def _rrset(name: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> dns.rrset.RRset:
    made = dns.rrset.RRset(name, rdataset.rdclass, rdataset.rdtype, rdataset.covers)
    made.update(rdataset)
    made.ttl = rdataset.ttl
    return made


def _serve_udp(authority: _Authority, address: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 53))

    def run() -> None:
        while True:
            data, peer = sock.recvfrom(65535)
            try:
                query = dns.message.from_wire(data)
            except dns.exception.DNSException:
                continue
            reply = authority.answer(query, address)
            wire = reply.to_wire(max_size=65535)
            if len(wire) > (max(512, query.payload) if query.edns >= 0 else 512):
                cut = dns.message.make_response(query)
                cut.flags |= dns.flags.TC
                wire = cut.to_wire()
            with contextlib.suppress(OSError):  # no way back (the uplink cut): lost
                sock.sendto(wire, peer)

    threading.Thread(target=run, daemon=True).start()


def _serve_tcp(authority: _Authority, address: str) -> None:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            conn: socket.socket = self.request
            conn.settimeout(5)
            with contextlib.suppress(OSError, struct.error, dns.exception.DNSException):
                while head := conn.recv(2, socket.MSG_WAITALL):
                    data = conn.recv(struct.unpack(">H", head)[0], socket.MSG_WAITALL)
                    wire = authority.answer(dns.message.from_wire(data), address).to_wire()
                    conn.sendall(struct.pack(">H", len(wire)) + wire)

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    server = Server((address, 53), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    authority = _Authority(_load(spec), spec["serve"])
    for address in spec["serve"]:
        _serve_udp(authority, address)
        _serve_tcp(authority, address)
    print("ready", file=sys.stderr, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
