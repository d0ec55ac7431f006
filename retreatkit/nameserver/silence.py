"""Whether a question an upstream left unanswered counts against it: a silent zone told
from a silent upstream, on the caller's clock.

A zone's own servers can be silent (a dead domain, a tracker firewalled away) while the
upstream answers everything else: its questions must not take the upstream down for the
whole LAN. So an unanswered question counts nothing if the upstream has since replied to
another question of ours, or to the check question (upstream.py asks it when silent
questions are about to take the upstream down). The same question rechecks an upstream
that is down, and only it brings one back: an attendee's question may be for a name the
upstream holds in its cache, and a resolver whose own uplink is gone answers those.

The check question is the A of a name no cache holds, which only the uplink answers: a
fresh random label under the forwarded zone, or, for the default upstreams, under com
(`<random>.com.`). Only an upstream that still reaches that zone's servers answers it,
with NXDOMAIN as a rule, so only NOERROR and NXDOMAIN pass. The NS of the root, the check
once, is answered from any resolver's cache: one whose own uplink was gone answered it
and dropped every other question, and was never marked down (every cache miss waited on
it for good). A rule on how many sites went unanswered marked a working upstream down
instead when a quiet LAN asked three dead zones at once: only a question that needs the
uplink tells the two apart, and any such question spares the silent ones, whatever their
domain (as a reply to another question of ours does).

NOERROR passes as NXDOMAIN does: a resolver that turns NXDOMAIN into an address of its
own (some ISPs' do) is online, and taken for down it would leave the LAN without DNS. An
NXDOMAIN need not carry com's SOA: one made from cached NSEC records carries the SOA
too, so requiring it proves nothing more, and a small forwarder that drops the
authority section would be taken for down.

Why com: no resolver answers a name under it from local data. It is delegated from the
root, and no resolver holds a copy of it; it is signed with NSEC3 opt-out, which leaves
nothing to synthesise a denial from (RFC 8198). Not right under the root: dnsmasq
(`domain-needed`, OpenWrt's default) answers a name of one label NXDOMAIN itself, a
resolver with a copy of the root zone (RFC 8806) answers any such name, and one that
synthesises NXDOMAIN from cached NSEC records answers it from the root's. Not under the
unanswered question's own top-level domain: for a reverse lookup that is arpa, a small
zone signed with NSEC, whose few records a validating resolver with `aggressive-nsec`
(unbound's default) holds after a few checks, for as long as a denial's TTL, and answers
any name under it from; some resolvers hold a copy of arpa as well. Such an upstream
answered the check without its uplink and stayed up, every miss waiting out its time.
"""

from __future__ import annotations

import base64
import math
import os
import struct
from dataclasses import dataclass

RCODE_NOERROR, RCODE_NXDOMAIN = 0, 3
PASSING = (RCODE_NOERROR, RCODE_NXDOMAIN)  # the check's rcodes that say it reached the zone
LABEL_BYTES = 10  # 80 random bits: 16 characters of base32, never asked twice
DEFAULT_PARENT = b"\3com\0"  # the default upstreams' check goes under com (see above)
_A_IN = struct.pack(">HH", 1, 1)


@dataclass(slots=True)
class Silence:
    """When one upstream last showed that it reaches beyond its cache."""

    heard_at: float = -math.inf  # its last reply to a question of ours, or a passed check

    def heard(self, now: float) -> None:
        self.heard_at = max(self.heard_at, now)

    def spares(self, sent: float) -> bool:
        """Whether a question sent at `sent` and left unanswered counts nothing: the
        upstream has answered since, so the name's own servers are the silent ones."""
        return self.heard_at > sent


def random_label() -> str:
    """A label no resolver has cached: 16 characters from the operating system's CSPRNG."""
    return base64.b32encode(os.urandom(LABEL_BYTES)).decode("ascii").lower()


def check_key(parent: bytes, label: str) -> bytes:
    """The cache key of the check question: A of `label` under `parent` (wire form)."""
    return zone_wire(label)[:-1] + parent + _A_IN + b"\0"


def check_parent(zone: str) -> bytes:
    """Where the check question goes: under the forwarded zone, or under com (wire form)."""
    return zone_wire(zone) if zone else DEFAULT_PARENT


def zone_wire(zone: str) -> bytes:
    """A domain's name in wire form, lowercased as cache keys are (b"\\0": the root)."""
    labels = [label.lower().encode("ascii") for label in zone.split(".") if label]
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\0"
