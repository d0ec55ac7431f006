"""Each screen's figures as rows of plain strings (no Textual; escaped by the widgets)."""

from __future__ import annotations

from typing import Any

from retreatkit.tui.fmt import (
    NOT_REPORTED,
    clock,
    count,
    duration,
    get,
    number,
    per_second,
    percent,
    rate,
    size,
    spark,
)
from retreatkit.tui.state import DashboardState, EndpointState

Row = tuple[str, ...]


def _items(doc: Any, key: str) -> list[dict[str, Any]]:
    value = doc.get(key) if isinstance(doc, dict) else None
    return [x for x in value if isinstance(x, dict)] if isinstance(value, list) else []


def _text(value: Any) -> str:
    if value is None:
        return NOT_REPORTED
    return value if isinstance(value, str) else str(value)


def overview_rows(state: DashboardState) -> list[Row]:
    rows: list[Row] = []
    for e in state.endpoints.values():
        if not e.services():
            rows.append(
                ("—", e.name, "unreachable" if e.error else "waiting", *(NOT_REPORTED,) * 3, "")
            )
        for service in e.services():
            section = e.section(service)
            up = e.is_up(service)
            shown = {True: "up", False: "DOWN", None: "unreachable"}[up]
            line = e.series.get(f"{service} throughput")
            speed = line.rate() if line else None
            throughput = (
                per_second(speed).replace("/s", " q/s")
                if service == "nameserver"
                else (rate(speed) if speed is not None else NOT_REPORTED)
            )
            trend = spark(line.rates(), 24) if line else ""
            rows.append(
                (
                    service,
                    e.name,
                    shown,
                    duration(section.get("uptime_seconds")),
                    count(section.get("connections_open")),
                    throughput,
                    trend,
                )
            )
    return rows


def process_rows(state: DashboardState) -> list[Row]:
    rows: list[Row] = []
    for e in state.endpoints.values():
        found = get(e.status, "process")
        p = found if isinstance(found, dict) else {}
        memory = e.series.get("process memory")
        rows.append(
            (
                e.name,
                _text(p.get("pid")),
                duration(p.get("uptime_seconds")),
                size(p.get("memory_bytes")),
                spark(memory.values(), 16, from_zero=False) if memory else "",
                count(p.get("open_files")),
                _text(p.get("log_level")),
                _text(p.get("version")),
            )
        )
    return rows


def attendee_lines(state: DashboardState) -> list[str]:
    out: list[str] = []
    for e in state.endpoints.values():
        lines = get(e.status, "process", "attendees")
        if isinstance(lines, list):
            out.extend(x for x in lines if isinstance(x, str))
    return out


def relay_summary(e: EndpointState) -> list[str]:
    s = e.section("relay")
    ended = s.get("ended")
    ends = (
        " · ".join(f"{k} {count(v)}" for k, v in ended.items())
        if isinstance(ended, dict)
        else NOT_REPORTED
    )
    return [
        f"transfers active {count(s.get('transfers_active'))} · completed "
        f"{count(s.get('transfers_completed'))} · waiting senders {count(s.get('waiting_senders'))}"
        f" · open connections {count(s.get('connections_open'))}",
        f"bytes relayed {size(s.get('bytes_relayed'))} · handshakes refused "
        f"{count(s.get('handshakes_refused'))} · failed {count(s.get('handshakes_failed'))}",
        f"how connections ended: {ends or 'none yet'}",
    ]


def transfer_rows(doc: Any, key: str) -> list[Row]:
    return [
        (
            _text(t.get("nameplate")),
            size(t.get("bytes")),
            rate(t.get("rate_bytes_per_second")),
            duration(t.get("duration_seconds")),
            clock(t.get("started_at")),
            _text(t.get("ended", "active")),
        )
        for t in _items(doc, key)
    ]


def mirror_summary(e: EndpointState) -> list[str]:
    s = e.section("mirror")
    found = s.get("store")
    store: dict[str, Any] = found if isinstance(found, dict) else {}
    full = " · DISK FULL" if store.get("disk_full") is True else ""
    return [
        f"hit ratio {percent(s.get('hit_ratio'))} · hits {count(s.get('hits'))} · misses "
        f"{count(s.get('misses'))} · downloads in progress {count(s.get('downloads_in_progress'))}",
        f"served from cache {size(s.get('bytes_from_cache'))} · fetched upstream "
        f"{size(s.get('bytes_from_upstream'))} · saved {size(s.get('bytes_saved'))}",
        f"store {size(store.get('size_bytes'))} in {count(store.get('files'))} files · free disk "
        f"{size(store.get('free_bytes'))}{full}",
    ]


def upstream_rows(e: EndpointState) -> list[Row]:
    ups = e.section("mirror").get("upstreams")
    rows: list[Row] = []
    if isinstance(ups, dict):
        for ecosystem, u in ups.items():
            if isinstance(u, dict):
                rows.append(
                    (
                        str(ecosystem),
                        _text(u.get("url")),
                        _text(u.get("state")),
                        _text(u.get("last_error") or ""),
                    )
                )
            else:
                rows.append((str(ecosystem), _text(u), NOT_REPORTED, ""))
    return rows


def top_rows(value: Any) -> list[Row]:
    """`[[name, count], ...]` as rows; anything else as none."""
    if not isinstance(value, list):
        return []
    return [
        (_text(x[0]), count(x[1])) for x in value if isinstance(x, list | tuple) and len(x) == 2
    ]


def fetch_rows(doc: Any, key: str) -> list[Row]:
    return [
        (
            _text(f.get("ecosystem")),
            _text(f.get("package")),
            _text(f.get("file")),
            size(f.get("bytes")),
            size(f.get("size_bytes")),
            clock(f.get("started_at")),
            _text(f.get("ended", "fetching")),
        )
        for f in _items(doc, key)
    ]


def nameserver_summary(e: EndpointState) -> list[str]:
    s = e.section("nameserver")
    queries, blocked = number(s.get("queries")), number(s.get("blocked"))
    share = percent(blocked / queries) if queries and blocked is not None else NOT_REPORTED
    line = e.series.get("nameserver throughput")
    blocking = s.get("blocking")
    return [
        f"queries {per_second(line.rate() if line else None)} · total {count(queries)} · blocked "
        f"{share} · stale answers {count(s.get('stale_served'))} · cache hits "
        f"{count(s.get('cache_hits'))} · SERVFAIL {count(s.get('servfail'))}",
        f"blocking {_text(blocking)}",
    ]


def dns_upstream_rows(e: EndpointState) -> list[Row]:
    rows: list[Row] = []
    for u in _items(e.section("nameserver"), "upstreams"):
        state = u.get("state")
        if state is None and isinstance(u.get("healthy"), bool):
            state = "up" if u["healthy"] else "down"
        latency = number(u.get("latency_ms"))
        rows.append(
            (
                _text(u.get("address")),
                _text(state),
                NOT_REPORTED if latency is None else f"{latency:.1f} ms",
            )
        )
    return rows


def blocklist_rows(e: EndpointState) -> list[Row]:
    lists = e.section("nameserver").get("blocklists")
    if not isinstance(lists, dict):
        return []
    return [
        (
            str(source),
            count(b.get("entries")),
            count(b.get("bad_lines")),
            clock(b.get("loaded_at")),
            _text(b.get("last_error") or ""),
        )
        for source, b in lists.items()
        if isinstance(b, dict)
    ]


def query_row(q: dict[str, Any]) -> Row:
    ms = number(q.get("ms"))
    return (
        clock(q.get("at")),
        _text(q.get("client")),
        _text(q.get("name")),
        _text(q.get("type")),
        _text(q.get("answer")),
        NOT_REPORTED if ms is None else f"{ms:.1f}",
    )


def answer_line(answer: Any) -> str:
    """An action's answer in one line: `key value` pairs, or the text."""
    if answer is None:
        return "done"
    if isinstance(answer, dict):
        return " · ".join(
            f"{k} {answer_line(v) if isinstance(v, dict) else _text(v)}"
            for k, v in list(answer.items())[:8]
        )
    return _text(answer).splitlines()[0] if _text(answer).strip() else "done"
