"""The relay's /status section and transfer list, read from the core (no I/O, no secrets)."""

from __future__ import annotations

import datetime
from collections import Counter
from typing import Any

from retreatkit.relay.lifecycle import LISTED, Ending, RelayCore, Transfer
from retreatkit.relay.matching import ATTACKED

FULL = 0.9  # of the waiting limit: warn the organiser before senders are turned away


def section(core: RelayCore, warnings: list[str] | None = None) -> dict[str, Any]:
    """The `relay` section of /status (docs/admin-api.md, each field in docs/operations.md)."""
    return {
        "up": True,
        "uptime_seconds": round(core.clock() - core.started, 1),
        "connections_open": len(core.conns),
        "warnings": [*own_warnings(core), *(warnings or [])],
        "waiting_senders": core.matcher.waiting,
        "transfers_active": len(core.active),
        "pairs_limit": core.limits.pairs,
        "transfers_completed": core.transfers_completed,
        "bytes_relayed": core.bytes_relayed,
        "handshakes_refused": core.handshakes_refused,
        "handshakes_failed": core.handshakes_failed,
        "ended": {ending.value: core.ended[ending] for ending in Ending},
    }


def own_warnings(core: RelayCore) -> list[str]:
    out = []
    waiting, limit = core.matcher.waiting, core.limits.waiting
    if waiting >= FULL * limit:
        out.append(
            f"{waiting} senders are waiting and the limit is {limit}:"
            " new senders are turned away when it is reached (raise [relay] waiting);"
            f" most from {_most(core.matcher.waiting_by_ip())}"
        )
    pairs, most = len(core.active), core.limits.pairs
    if pairs >= FULL * most:
        out.append(
            f"{pairs} transfers are paired and the limit is {most}: new ones are turned"
            " away when it is reached (raise [relay] pairs);"
            f" most connections from {_most(core.paired_by_ip())}"
        )
    failures = core.matcher.recent_failures()
    guesser = core.matcher.top_guesser()
    if failures >= ATTACKED and guesser is not None:
        address, count = guesser
        out.append(
            f"{failures} failed joins in the last 10 minutes, {count} from {address}:"
            " someone may be guessing nameplates; new nameplates are longer for now"
        )
    return out


def _most(counts: Counter[str], n: int = 3) -> str:
    """The `n` addresses holding the most, most first (then by address: stable)."""
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]
    return ", ".join(f"{address} ({count})" for address, count in top)


def transfers(core: RelayCore) -> dict[str, list[dict[str, Any]]]:
    """`GET /relay/transfers`: active and recent pairings, newest first, bounded."""
    now = core.clock()
    active = list(core.active)[-LISTED:]
    return {
        "active": [_item(t, now - t.started) for t in reversed(active)],
        "recent": [_item(t, t.duration) for t in core.recent],
    }


def _item(transfer: Transfer, duration: float) -> dict[str, Any]:
    item: dict[str, Any] = {
        "nameplate": transfer.nameplate,
        "bytes": transfer.bytes,
        "started_at": iso(transfer.started_at),
        "duration_seconds": round(duration, 3),
        "rate_bytes_per_second": round(transfer.bytes / duration) if duration > 0 else 0,
    }
    if transfer.ended is not None:
        item["ended"] = transfer.ended.value
    return item


def iso(wall: float) -> str:
    moment = datetime.datetime.fromtimestamp(wall, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
