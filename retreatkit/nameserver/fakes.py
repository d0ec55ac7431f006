"""In-process test tools: a manual clock, a zone that answers like an upstream, a fake
transport to script upstreams with, and a resolver built on them (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.zone

from retreatkit.nameserver.local import Record
from retreatkit.nameserver.policy import Policy
from retreatkit.nameserver.race import staggered
from retreatkit.nameserver.resolver import Resolver
from retreatkit.nameserver.upstream import Answer, Upstream, UpstreamSet

MAX_CHAIN = 8


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Zone:
    """Answers questions from zone text the way a recursive upstream would: CNAME chains
    followed inside the zone, wildcards made concrete, NXDOMAIN and NODATA with the SOA,
    RRSIGs for DO, AD when `secure` and the query asked with DO or AD."""

    def __init__(self, text: str, origin: str = "test.", secure: bool = False) -> None:
        self.zone = dns.zone.from_text(text, origin, relativize=False, check_origin=False)
        self.origin = dns.name.from_text(origin)
        self.secure = secure

    def _node_of(self, name: dns.name.Name) -> tuple[dns.name.Name, object] | None:
        node = self.zone.get_node(name)
        if node is not None:
            return name, node
        parent = name
        while parent != self.origin and len(parent) > 1:
            parent = parent.parent()
            wild = self.zone.get_node(dns.name.Name((b"*", *parent.labels)))
            if wild is not None:
                return name, wild
            if self.zone.get_node(parent) is not None:
                return None
        return None

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query, recursion_available=True)
        if query.edns >= 0:
            response.use_edns(0, query.ednsflags & dns.flags.DO, payload=4096)
        do = bool(query.ednsflags & dns.flags.DO)
        if self.secure and (do or query.flags & dns.flags.AD):
            response.flags |= dns.flags.AD
        question = query.question[0]
        name, rdtype = question.name, question.rdtype
        for _ in range(MAX_CHAIN):
            found = self._node_of(name)
            if found is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
                response.authority.append(self._soa())
                break
            _, node = found
            assert isinstance(node, dns.node.Node)
            wanted = node.get_rdataset(dns.rdataclass.IN, rdtype)
            cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            rdataset = wanted if wanted is not None else (
                cname if rdtype != dns.rdatatype.CNAME else None
            )  # fmt: skip
            if rdataset is None:
                response.authority.append(self._soa())
                break
            response.answer.append(_rrset(name, rdataset))
            if do:
                sigs = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, rdataset.rdtype)
                if sigs is not None:
                    response.answer.append(_rrset(name, sigs))
            if rdataset is wanted:
                break
            name = rdataset[0].target
            if not name.is_subdomain(self.origin):
                break
        return response

    def _soa(self) -> dns.rrset.RRset:
        return _rrset(self.origin, self.zone.find_rdataset(self.origin, dns.rdatatype.SOA))


def _rrset(name: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(name, rdataset.rdclass, rdataset.rdtype, rdataset.covers)
    rrset.ttl = rdataset.ttl
    for rdata in rdataset:
        rrset.add(rdata)
    return rrset


SILENT = "silent"  # the upstream reads and never answers: the attempt times out


@dataclass
class Hold:
    """A reply the test lets go when it chooses (a slow upstream)."""

    reply: dns.message.Message | str
    released: asyncio.Event = field(default_factory=asyncio.Event)


Script = Callable[[dns.message.Message], "dns.message.Message | str | Hold"]


@dataclass
class FakeTransport:
    """Upstreams in memory: each address answers with its script; every query is kept."""

    scripts: dict[tuple[str, int], Script]
    sent: list[tuple[tuple[str, int], dns.message.Message]] = field(default_factory=list)
    spoofs: int = 0

    async def race(
        self, attempts: Sequence[Callable[[], Awaitable[Answer | None]]], delay: float
    ) -> tuple[Answer | None, list[int]]:
        return await staggered(attempts, delay)

    def asked(self, address: tuple[str, int] | None = None) -> int:
        return sum(1 for where, _ in self.sent if address is None or where == address)

    async def query(
        self, upstream: Upstream, data: bytes, question: bytes, tcp: bool, timeout: float
    ) -> bytes:
        address = (upstream.host, upstream.port)
        message = dns.message.from_wire(data)
        self.sent.append((address, message))
        outcome = self.scripts[address](message)
        if isinstance(outcome, Hold):
            await outcome.released.wait()
            outcome = outcome.reply
        if outcome == SILENT:
            raise TimeoutError()
        assert isinstance(outcome, dns.message.Message)
        outcome.id = message.id
        wire = outcome.to_wire(max_size=65535)
        if not tcp and len(wire) > max(512, message.payload if message.edns >= 0 else 512):
            cut = dns.message.make_response(message)
            cut.flags |= dns.flags.TC
            return cut.to_wire()
        return wire


def resolver(
    scripts: dict[tuple[str, int], Script],
    records: list[Record] | None = None,
    forward: dict[str, tuple[tuple[str, int], ...]] | None = None,
    clock: ManualClock | None = None,
    stale_wait: float = 0.0,
    block_mode: str = "null",
) -> tuple[Resolver, FakeTransport, ManualClock]:
    """A resolver over scripted upstreams: the first address is the default upstream (more
    default upstreams: every address not named in `forward`)."""
    clock = clock or ManualClock()
    transport = FakeTransport(scripts)
    forwarded = {a for addrs in (forward or {}).values() for a in addrs}
    default = [Upstream(h, p) for h, p in scripts if (h, p) not in forwarded]
    groups = {"": UpstreamSet(default, transport, clock)}
    for zone, addrs in (forward or {}).items():
        groups[zone] = UpstreamSet([Upstream(h, p) for h, p in addrs], transport, clock)
    policy = Policy.build(records or [], forward=forward)
    made = Resolver(policy, groups, clock=clock, stale_wait=stale_wait, block_mode=block_mode)
    return made, transport, clock


class Datagrams:
    """A datagram transport in memory: what the server sends is kept."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))

    def close(self) -> None:
        pass


class UDPClient:
    """Our UDP server with an in-memory transport, and clients asking it by address."""

    def __init__(self, resolver: Resolver, networks: list[str] | None = None, rate: int = 0):
        from retreatkit.nameserver.gate import LAN, Gate
        from retreatkit.nameserver.server import UDPServer

        self.server = UDPServer(resolver, Gate(networks or list(LAN), rate, resolver.clock))
        self.transport = Datagrams()
        self.server.connection_made(self.transport)  # type: ignore[arg-type]

    def send(self, query: dns.message.Message, client: str = "10.0.0.5") -> None:
        self.server.datagram_received(query.to_wire(), (client, 5353))

    async def settle(self) -> None:
        """Let every query in progress finish."""
        while self.server.tasks:
            await asyncio.gather(*self.server.tasks)

    async def ask(
        self, name: str, rdtype: str = "A", client: str = "10.0.0.5", **options: object
    ) -> dns.message.Message:
        """One query (EDNS with a 1232-byte payload unless options say otherwise), its answer."""
        query = make_query(name, rdtype, **options)
        before = len(self.transport.sent)
        self.send(query, client)
        await self.settle()
        sent = self.transport.sent[before:]
        assert len(sent) == 1, f"{len(sent)} answers to one query"
        return dns.message.from_wire(sent[0][0])


def make_query(name: str, rdtype: str = "A", **options: object) -> dns.message.Message:
    options.setdefault("use_edns", 0)
    options.setdefault("payload", 1232)
    return dns.message.make_query(name, rdtype, **options)  # type: ignore[arg-type]
