"""Forwarding loops: a question of our own to each upstream, known again if it comes back.

The organiser's laptop runs systemd-resolved (127.0.0.53) or dnsmasq; DHCP handed it the
LAN's DNS server, which is this nameserver; and this nameserver took its upstream from
that laptop's resolv.conf. Every question then goes round (us, the laptop's resolver, us)
until someone gives up: clients wait and get SERVFAIL, and the upstream looks merely
silent. The start-up check (hosted.is_itself) sees only an upstream that is our own
address; a loop through another resolver takes asking.

As dnsmasq's --dns-loop-detect does, each upstream is asked a TXT question for a name
only we could ask: a random label under SUFFIX, in RFC 6761's `.test`, which a resolver
without a loop answers NXDOMAIN (or sends to the root, which does). If that question
reaches us as a query, the upstream sends our questions back to us: it is `looping`, and
passed by (Upstream.looping) until a later probe is answered without coming back. The
label is 64 bits from the caller's entropy, new for each probe, so no client can make
us think an upstream loops without seeing our queries to it.

An upstream is probed when it was never probed (at start); at once when its questions
start failing after a probe found no loop (a loop that formed later: its questions go
round until they time out); and every `recheck` seconds while it loops (to see the loop
end) or its questions keep failing. A query for a name under SUFFIX is never forwarded:
the caller answers it NXDOMAIN itself.

No I/O: the caller sends what `due` returns, tells `came_back` of each query under
SUFFIX and `answered` of each probe's reply. Clock and entropy are the caller's.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from retreatkit.nameserver.upstream import RETRY_AFTER, Upstream

SUFFIX = "loop-check.retreatkit.test"
SUFFIX_WIRE = b"".join(bytes((len(p),)) + p.encode() for p in SUFFIX.split(".")) + b"\0"
QUESTION = struct.pack(">HHB", 16, 1, 0)  # TXT, IN, and the key byte: no DO or CD
RCODE_NOERROR, RCODE_NXDOMAIN = 0, 3
LABEL_BYTES = 8  # 64 random bits: a label is 16 hex digits


def is_probe(key: bytes) -> bool:
    """Whether the question in cache key `key` (wire.Query.key) is for a name under
    SUFFIX: one of our probes, come back, or a name made to look like one."""
    return key.endswith(SUFFIX_WIRE, 0, len(key) - 5)


@dataclass(slots=True)
class Probe:
    """One probe question, to one upstream."""

    label: str
    zone: str  # the upstream's group: "" for the default upstreams, else a forwarded domain
    upstream: Upstream
    sent_at: float
    clean: bool  # the upstream was neither looping nor failing when it was sent
    came_back: bool = False
    done: bool = False  # its reply came, or none will

    @property
    def name(self) -> str:
        return f"{self.label}.{SUFFIX}"

    @property
    def key(self) -> bytes:
        """The cache key of its question (wire.Query.key), to ask upstream."""
        label = self.label.encode()
        return bytes((len(label),)) + label + SUFFIX_WIRE + QUESTION


def looping_line(recheck: float) -> str:
    """What an upstream that loops says in /status and the log."""
    return (
        "our question to it came back to us (it forwards to this nameserver); not asked"
        f" until that ends, checked every {recheck:.0f} s"
    )


class Loops:
    def __init__(
        self,
        servers: Iterable[tuple[str, Upstream]],
        recheck: float = RETRY_AFTER,
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.servers = list(servers)  # (zone, upstream): those the resolver has probed
        self.recheck = recheck
        self.entropy = entropy
        self._latest: dict[int, Probe] = {}  # by id() of the upstream: its last probe
        self._by_label: dict[str, Probe] = {}  # the probes waiting on their answer, by label

    def due(self, now: float) -> list[Probe]:
        """The probes to send now (each remembered as that upstream's latest)."""
        out = []
        for zone, upstream in self.servers:
            last = self._latest.get(id(upstream))
            if last is not None:
                if not last.done or not (upstream.looping or upstream.failures):
                    continue  # one probe at a time; one answering as it should: none
                if now - last.sent_at < self.recheck and (upstream.looping or not last.clean):
                    continue
            clean = not (upstream.looping or upstream.failures)
            probe = Probe(self.entropy(LABEL_BYTES).hex(), zone, upstream, now, clean)
            self._latest[id(upstream)] = probe
            self._by_label[probe.label] = probe
            out.append(probe)
        return out

    def came_back(self, key: bytes) -> Probe | None:
        """A query for a name under SUFFIX reached us (key: its wire.Query.key): the probe
        it is, whose upstream now loops; None for a label we are not waiting on. In a loop
        our question reaches us before its upstream can answer it, so a label counts only
        until then: a client that learned one later cannot make an upstream look looping."""
        label = key[1 : 1 + key[0]].decode("ascii", "replace")
        probe = self._by_label.get(label)
        if probe is None:
            return None
        probe.came_back = True
        upstream = probe.upstream
        upstream.looping = True
        upstream.last_error = looping_line(self.recheck)
        return probe

    def answered(self, probe: Probe, rcode: int | None, elapsed: float) -> bool:
        """The probe's own reply: its rcode, None for none (no answer, unreachable).
        Whether its upstream's loop ended: a name answered, and our question did not
        come back. A reply that says nothing of the name (SERVFAIL, REFUSED, none)
        changes nothing: the next probe decides."""
        probe.done = True
        self._by_label.pop(probe.label, None)
        upstream = probe.upstream
        if probe.came_back or not upstream.looping:
            return False
        if rcode not in (RCODE_NOERROR, RCODE_NXDOMAIN):
            return False
        upstream.looping = False
        # it answers what we ask: up. Its failures were the loop's (its questions went
        # round until they timed out), so they do not keep it down
        upstream.back(elapsed)
        return True
