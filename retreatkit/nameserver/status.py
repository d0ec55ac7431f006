"""The nameserver's section of /status (docs/admin-api.md): read only, it changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from retreatkit.nameserver import stats as outcomes

if TYPE_CHECKING:
    from retreatkit.nameserver.service import Nameserver


def iso(wall: float) -> str:
    """ISO 8601 UTC, to the second, as the admin contract wants every `*_at`."""
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def at(ns: Nameserver, when: float) -> str:
    """A time of the nameserver's clock as a wall-clock `*_at` string."""
    return iso(ns.wall() - (ns.clock() - when))


def blocking(ns: Nameserver) -> str:
    until = ns.resolver.paused_until
    return f"paused until {at(ns, until)}" if until else "on"


def blocklists(ns: Nameserver) -> list[dict[str, Any]]:
    return [
        {
            "source": s.source,
            "entries": s.entries,
            "bad_lines": s.bad_lines,
            "loaded_at": iso(s.loaded_at) if s.loaded_at is not None else None,
            "last_error": s.last_error or None,
        }
        for s in ns.sources.sources.values()
    ]


def render(ns: Nameserver) -> dict[str, Any]:
    resolver = ns.resolver
    s = resolver.stats
    counts = s.counts
    now = ns.clock()
    upstreams = [
        {
            "address": u.address,
            "zone": zone or None,  # None: the default upstreams; else the forwarded domain
            "state": u.state(),
            "latency_ms": None if u.latency_ms is None else round(u.latency_ms, 2),
            "queries": u.queries,
            "errors": u.errors,
            "last_error": u.last_error or None,
        }
        for zone, group in resolver.upstreams.items()
        for u in group.servers
    ]
    warnings = []
    default = resolver.upstreams[""].servers
    if not default:
        warnings.append("no upstream configured: only local names and cached answers work")
    elif all(u.down or u.looping for u in default):
        looping = sum(u.looping for u in default)
        down = "looping" if looping == len(default) else "down or looping" if looping else "down"
        warnings.append(f"every upstream is {down}: answering from cache (stale) or SERVFAIL")
    for zone, group in resolver.upstreams.items():
        for u in group.servers:
            if u.looping:
                where = f"upstream {u.address}" + (f" for {zone}" if zone else "")
                warnings.append(
                    f"{where} sends our questions back to this nameserver (a loop): point"
                    " its resolver elsewhere, or name the venue's resolvers"
                )
    for source in ns.sources.sources.values():
        if source.last_error:
            warnings.append(
                f"blocklist {source.source} failed: {source.last_error}; {source.fallback}"
            )
    if resolver.paused_until:
        warnings.append(f"blocking is {blocking(ns)}")
    blocklist = resolver.policy.blocklist
    return {
        "up": ns.started is not None,
        "uptime_seconds": round(now - ns.started, 1) if ns.started is not None else 0.0,
        "connections_open": len(ns.connections.open),
        "warnings": warnings,
        "queries": s.queries,
        "cache_hits": counts[outcomes.CACHED],
        "blocked": counts[outcomes.BLOCKED],
        "local": counts[outcomes.LOCAL],
        "stale_served": counts[outcomes.STALE],
        "forwarded": counts[outcomes.FORWARDED],
        "servfail": counts[outcomes.SERVFAIL],
        "refused": counts[outcomes.REFUSED],
        "rate_limited": counts[outcomes.RATE_LIMITED],
        "formerr": counts[outcomes.FORMERR],
        "cname_blocked": s.cname_blocked,
        "rebinding_dropped": s.rebinding_dropped,
        "spoofed_replies_ignored": ns.pool.spoofs,
        "late_replies_ignored": ns.pool.late,
        "cache_entries": len(resolver.cache),
        "blocking": blocking(ns),
        "blocklist_entries": len(blocklist),
        "blocklist_bad_lines": blocklist.bad_lines,
        "blocklists": blocklists(ns),
        "upstreams": upstreams,
        "top_domains": s.top("domains"),
        "top_blocked": s.top("blocked"),
        "top_clients": s.top("clients"),
    }
