"""The mirror on the admin endpoint: its /status section, its /metrics, its fetch list.

/status and /metrics are made from the same tables. Field by field in docs/operations.md
("The mirror in /status"); the contract with the dashboard is docs/admin-api.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from retreatkit.mirror.health import Upstream, origin
from retreatkit.mirror.service import Mirror
from retreatkit.mirror.stats import COUNTERS, iso

# gauges: /status key (a dotted path into the section) -> what it measures
GAUGES: dict[str, str] = {
    "downloads_in_progress": "Downloads under way",
    "connections_open": "Client connections open",
    "pages_sending_bytes": "Bytes of index pages on their way to clients, each page once",
    "pages_reading_bytes": "Bytes of index pages being read from upstream and processed",
    "store.size_bytes": "Bytes of files in the store",
    "store.free_bytes": "Free bytes on the store's disk",
    "store.disk_full": "1 when the store's disk has no room for new files",
}


def _upstream(u: Upstream | None, url: str | None, wall: float, mono: float) -> dict[str, Any]:
    view: dict[str, Any] = {"url": url, "state": "unknown", "last_error": None}
    if u is not None:
        view["state"], view["last_error"] = u.state.value, u.last_error
        if u.down_since is not None:
            view["down_since_at"] = iso(wall - (mono - u.down_since))
            view["retry_in_seconds"] = round(max(0.0, u.retry_at - mono), 1)
    return view


def section(mirror: Mirror, up: bool, connections_open: int) -> dict[str, Any]:
    wall, mono = time.time(), mirror.fetcher.clock()
    stats, store, settings = mirror.stats, mirror.store, mirror.settings
    known = {u.origin: u for u in mirror.health.all()}
    configured = {"pypi": settings.pypi, "opam": settings.opam, "npm": settings.npm}
    configured.update({f"apt/{name}": url for name, url in settings.apt.items()})
    upstreams = {
        name: _upstream(known.get(origin(url)) if url else None, url, wall, mono)
        for name, url in configured.items()
    }
    free = store.free_bytes()
    full = store.space.full(free)
    too_big = store.space.refused(free)
    warning = store.space.warning(free)
    warnings = [warning] if warning is not None else []
    for u in known.values():
        if u.state.value == "down":
            since = _upstream(u, None, wall, mono)["down_since_at"]
            warnings.append(
                f"upstream down: {u.origin} since {since} ({u.last_error});"
                " serving what the store holds"
            )
    for warner in mirror.warners:
        warnings += warner()
    check = store.check
    return {
        "up": up,
        "uptime_seconds": round(wall - mirror.started, 1),
        "connections_open": connections_open,
        "warnings": warnings,
        **stats.counters(),
        "hit_ratio": stats.hit_ratio,
        "downloads_in_progress": len(mirror.fetcher.inflight),
        "pages_sending_bytes": mirror.sending.bytes,
        "pages_reading_bytes": mirror.working.budget.used,
        "top_packages": stats.top_packages(),
        "upstreams": upstreams,
        "store": {
            "size_bytes": check.size_bytes,
            "free_bytes": free,
            "files": check.files,
            "max_size_bytes": settings.max_size,
            "disk_full": full,
            "too_big_bytes": too_big,
            "check": {"state": check.state, "checked": check.checked, "dropped": check.dropped},
        },
    }


class MirrorCollector(Collector):
    def __init__(self, status: Any) -> None:
        self.status = status  # () -> the section above

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self.status()
        if not s:
            return
        for name, help_text in COUNTERS.items():
            yield CounterMetricFamily(f"mirror_{name}", help_text, value=s[name])
        for path, help_text in GAUGES.items():
            value: Any = s
            for part in path.split("."):
                value = value[part]
            name = "mirror_" + path.replace(".", "_")
            yield GaugeMetricFamily(name, help_text, value=float(value))


MAX_ITEMS = 100  # in each list; the recent ones are bounded by the fetcher too


def admin_routes(mirror: Callable[[], Mirror | None]) -> list[web.RouteDef]:
    """`GET /mirror/fetches`; `mirror` gives the running mirror, or None before it starts."""

    async def fetches(request: web.Request) -> web.Response:
        running = mirror()
        if running is None:
            return web.json_response({"in_progress": [], "recent": []})
        lists = running.fetcher.fetches()
        return web.json_response({name: items[:MAX_ITEMS] for name, items in lists.items()})

    return [web.get("/mirror/fetches", fetches)]
