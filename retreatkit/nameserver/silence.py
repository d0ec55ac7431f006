"""Whether a question an upstream left unanswered counts against it: a silent zone told
from a silent upstream, on the caller's clock.

A zone's own servers can be silent (a dead domain, a tracker firewalled away) while the
upstream answers everything else: its questions must not take the upstream down for the
whole LAN. So an unanswered question counts nothing if the upstream replied to another
question of ours since it was sent. A reply to the check question (NS of the root or of
the forwarded zone, upstream.py) spares it too, but only while the questions left
unanswered since the upstream's last reply to one of ours are about fewer than
SITES_TO_DOWN sites: a resolver whose own uplink is gone still answers NS . from its
cache and drops everything else, and before this rule it was never marked down (every
cache miss waited on it for good). One silent zone is one site however many of its
names are asked; three sites unanswered with nothing else answered is an upstream that
answers nothing, and it is down, check or no check.

A site is the name's last two labels (`tracker.example`), or its two labels below the
forwarded zone when the name is under it: rough on purpose. Two zones merged into one
site (`a.co.uk`, `b.co.uk`) only spare an upstream longer; one zone split into two
(a dead zone's delegated child) needs a third before it counts.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

SITES_TO_DOWN = 3
SITE_LABELS = 2  # labels below the zone that tell one site from another


class Verdict(enum.Enum):
    SPARED = "spared"  # it answered since: the name's own servers are silent, not it
    FAILED = "failed"  # one more failure in a row
    DOWN = "down"  # unanswered on SITES_TO_DOWN sites, nothing answered: down now


@dataclass(slots=True)
class Silence:
    """What one upstream left unanswered, and when it last replied."""

    heard_at: float = -math.inf  # its last reply to anything, the check question included
    replied_at: float = -math.inf  # its last reply to a question of ours (not the check)
    sites: set[bytes] = field(default_factory=set)  # unanswered since replied_at

    def heard(self, now: float) -> None:
        """A reply to the check question: the upstream is there, whatever it said."""
        self.heard_at = max(self.heard_at, now)

    def replied(self, now: float) -> None:
        """A reply to a question of ours, whatever its rcode: it answers real questions."""
        self.heard(now)
        if now >= self.replied_at:
            self.replied_at = now
            self.sites.clear()

    def unanswered(self, sent: float, site: bytes) -> Verdict:
        """A question about `site`, sent at `sent`, got no usable answer."""
        if self.replied_at > sent:
            return Verdict.SPARED
        if len(self.sites) < SITES_TO_DOWN:  # bounded: nothing more is needed
            self.sites.add(site)
        if len(self.sites) >= SITES_TO_DOWN:
            return Verdict.DOWN
        return Verdict.SPARED if self.heard_at > sent else Verdict.FAILED


def zone_wire(zone: str) -> bytes:
    """A forwarded zone's name in wire form, lowercased as cache keys are (b"\\0": root)."""
    labels = [label.lower().encode("ascii") for label in zone.split(".") if label]
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\0"


def site_of(key: bytes, zone: bytes = b"\0") -> bytes:
    """The site of the question in cache key `key` (the name in wire form first): its
    last SITE_LABELS labels, or SITE_LABELS below `zone` (wire form) when under it."""
    starts: list[int] = []
    pos = 0
    while pos < len(key) and key[pos]:
        starts.append(pos)
        pos += 1 + key[pos]
    end = min(pos + 1, len(key))
    keep = SITE_LABELS
    for depth, start in enumerate(starts):
        if key[start:end] == zone:  # the root (b"\0") never matches a label: last two
            keep += len(starts) - depth
            break
    return key[starts[-keep] : end] if len(starts) > keep else key[:end]
