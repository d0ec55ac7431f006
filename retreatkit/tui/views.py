"""Each screen's figures as rows of plain strings (no Textual; escaped by the widgets)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from typing import Any

from retreatkit.tui import guests
from retreatkit.tui.fmt import (
    MAX_ROWS,
    NOT_REPORTED,
    count,
    duration,
    get,
    more,
    number,
    per_second,
    percent,
    plural,
    rate,
    size,
    spark,
)
from retreatkit.tui.state import SERVICES, DashboardState, EndpointState, warnings_of
from retreatkit.tui.times import ago, clock, clocks

Row = tuple[str, ...]


def _items(doc: Any, key: str) -> tuple[list[dict[str, Any]], int]:
    """The objects among the first MAX_ROWS items of doc[key], and how many items follow."""
    value = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(value, list):
        return [], 0
    return [x for x in value[:MAX_ROWS] if isinstance(x, dict)], max(len(value) - MAX_ROWS, 0)


def _more(hidden: int, width: int) -> list[Row]:
    """The last row of a list cut at MAX_ROWS, with how many more it had; none if none."""
    return [(more(hidden), *("",) * (width - 1))] if hidden > 0 else []


def _text(value: Any) -> str:
    if value is None:
        return NOT_REPORTED
    return value if isinstance(value, str) else str(value)


def overview_rows(state: DashboardState) -> list[Row]:
    """A row a service: its address is where attendees reach it; an endpoint that
    reported none is named by its admin endpoint, said so."""
    rows: list[Row] = []
    for e in state.endpoints.values():
        if not e.services():
            waiting = "unreachable" if e.error else "waiting"
            rows.append(("—", f"admin {e.name}", waiting, *(NOT_REPORTED,) * 3, ""))
        # an endpoint that stopped answering (or a guest not running): its last uptime,
        # connections and throughput are of a moment gone, so none are shown (as
        # process_rows shows no PID), only its state
        current = e.error is None and e.status is not None and not e.guest_down()
        for service in e.services():
            section = e.section(service) if current else {}
            shown = e.state_of(service)
            line = e.series.get(f"{service} throughput") if current else None
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
                    address_of(state, e, service),
                    shown,
                    duration(section.get("uptime_seconds")),
                    count(section.get("connections_open")),
                    throughput,
                    trend,
                )
            )
    return rows


def address_of(state: DashboardState, e: EndpointState, service: str) -> str:
    """Where attendees reach `service` of `e`, as its process says; a guest's as its
    supervisor says (the host side of qemu's forward, not the guest's own listen)."""
    if service not in SERVICES:
        return ""  # a supervisor's `vm`: attendees reach its guests, not it
    found = get(e.status, "process", "addresses", service)
    if isinstance(found, str) or e.guest_of is None:
        return found if isinstance(found, str) else NOT_REPORTED
    supervisor = state.endpoints.get(e.guest_of[0])
    told = get(supervisor.status, "process", "addresses", service) if supervisor else None
    # the supervisor's address for a service is that of `up`'s (its guest named after the
    # service, or the service it runs in-process): every guest of the image showed it
    own = e.guest.address if e.guest is not None else None
    if own is None:  # a supervisor that does not say each guest's
        named = e.guest_of[1] == service
        return told if isinstance(told, str) and named else NOT_REPORTED
    host, _, port = own.rpartition(":")
    if isinstance(told, str) and host == "0.0.0.0" and told.rpartition(":")[2] == port:
        return told  # forwarded from every address: the supervisor names the LAN's
    return own


def process_rows(state: DashboardState) -> list[Row]:
    rows: list[Row] = []
    for e in state.endpoints.values():
        # an endpoint that stopped answering: its last PID and uptime are a process that
        # may be gone (or another's by now), so none are shown
        found = get(e.status, "process") if e.error is None else None
        p = found if isinstance(found, dict) else {}
        memory = e.series.get("process memory") if e.error is None else None
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


def transfer_rows(doc: Any, key: str, now: float) -> list[Row]:
    items, hidden = _items(doc, key)
    rows: list[Row] = [
        (
            _text(t.get("nameplate")),
            size(t.get("bytes")),
            rate(t.get("rate_bytes_per_second")),
            duration(t.get("duration_seconds")),
            clock(t.get("started_at"), now),
            _text(t.get("ended", "active")),
        )
        for t in items
    ]
    return rows + _more(hidden, 6)


def mirror_summary(e: EndpointState) -> list[str]:
    s = e.section("mirror")
    found = s.get("store")
    store: dict[str, Any] = found if isinstance(found, dict) else {}
    return [
        f"hit ratio {percent(s.get('hit_ratio'))} · hits {count(s.get('hits'))} · misses "
        f"{count(s.get('misses'))} · downloads in progress {count(s.get('downloads_in_progress'))}",
        # bytes_from_upstream is what clients got of a file while it was fetched, not
        # what crossed the uplink: upstream_bytes (files) and upstream_index_bytes (pages)
        f"sent to clients from the store {size(s.get('bytes_from_cache'))} · as it was"
        f" fetched {size(s.get('bytes_from_upstream'))}",
        f"over the uplink: files {size(s.get('upstream_bytes'))} · index pages"
        f" {size(s.get('upstream_index_bytes'))} · saved {size(s.get('bytes_saved'))}",
        store_line(store, s),
        f"stale index pages {count(s.get('stale_served'))} · cached-only pages "
        f"{count(s.get('offline_pages'))} · verify failures {count(s.get('verify_failures'))}"
        f" · upstream errors {count(s.get('upstream_errors'))} · connections refused "
        f"{count(s.get('connections_refused'))}",
        *check_line(store.get("check")),
    ]


def store_line(store: dict[str, Any], s: dict[str, Any]) -> str:
    """The store against its limit (`max_size_bytes`, 0: the disk is the limit), what
    eviction removed to stay under it, and the disk."""
    held, limit = number(store.get("size_bytes")), number(store.get("max_size_bytes"))
    line = f"store {size(held)}"
    if limit is not None and limit > 0:
        line += f" of {size(limit)} allowed"
        line += f" ({percent(held / limit)})" if held is not None else ""
    elif limit == 0:
        line += " (no limit but the disk)"
    line += f" in {count(store.get('files'))} files · evicted {count(s.get('evicted'))} files"
    line += f" ({size(s.get('evicted_bytes'))}) · free disk {size(store.get('free_bytes'))}"
    return line + (" · DISK FULL" if store.get("disk_full") is True else "")


def check_line(check: Any) -> list[str]:
    """The re-hash of the store after a start, while it runs or when it dropped files."""
    if not isinstance(check, dict):
        return []
    state, dropped = check.get("state"), number(check.get("dropped"))
    if state == "done" and not dropped:
        return []
    return [
        f"store check after start: {_text(state)}, {count(check.get('checked'))} checked,"
        f" {count(dropped)} damaged files dropped"
    ]


def mirror_warnings(e: EndpointState, now: float) -> list[str]:
    return [clocks(w, now) for w in warnings_of(e.section("mirror"))]


def upstream_rows(e: EndpointState, now: float) -> list[Row]:
    """pypi, opam, npm and each apt archive (`apt/NAME`): where, up or down, for how
    long (`12 min ago`), when it is tried again, what failed last."""
    ups = e.section("mirror").get("upstreams")
    rows: list[Row] = []
    if isinstance(ups, dict):
        for ecosystem, u in islice(ups.items(), MAX_ROWS):
            if isinstance(u, dict):
                retry = number(u.get("retry_in_seconds"))
                rows.append(
                    (
                        str(ecosystem),
                        _text(u.get("url")),
                        _text(u.get("state")),
                        ago(u.get("down_since_at"), now) if u.get("down_since_at") else "",
                        # due (the first request after its backoff tries it): not "0s"
                        "" if retry is None else duration(retry) if retry >= 1 else "next request",
                        _text(u.get("last_error") or ""),
                    )
                )
            else:
                rows.append((str(ecosystem), _text(u), NOT_REPORTED, "", "", ""))
        rows += _more(len(ups) - MAX_ROWS, 6)
    return rows


def top_rows(value: Any) -> list[Row]:
    """`[[name, count], ...]` as rows; anything else as none."""
    if not isinstance(value, list):
        return []
    rows: list[Row] = [
        (_text(x[0]), count(x[1]))
        for x in value[:MAX_ROWS]
        if isinstance(x, list | tuple) and len(x) == 2
    ]
    return rows + _more(len(value) - MAX_ROWS, 2)


def fetch_rows(doc: Any, key: str, now: float) -> list[Row]:
    items, hidden = _items(doc, key)
    rows: list[Row] = [
        (
            _text(f.get("ecosystem")),
            _text(f.get("package")),
            _text(f.get("file")),
            size(f.get("bytes")),
            size(f.get("size_bytes")),
            clock(f.get("started_at"), now),
            _text(f.get("ended", "fetching")),
        )
        for f in items
    ]
    return rows + _more(hidden, 7)


def nameserver_summary(e: EndpointState, now: float) -> list[str]:
    s = e.section("nameserver")
    queries, blocked = number(s.get("queries")), number(s.get("blocked"))
    share = percent(blocked / queries) if queries and blocked is not None else NOT_REPORTED
    line = e.series.get("nameserver throughput")
    blocking = s.get("blocking")
    return [
        f"queries {per_second(line.rate() if line else None)} · total {count(queries)} · blocked "
        f"{share} · stale answers {count(s.get('stale_served'))} · cache hits "
        f"{count(s.get('cache_hits'))} · SERVFAIL {count(s.get('servfail'))}",
        f"blocking {clocks(_text(blocking), now)}",
    ]


def dns_upstream_rows(e: EndpointState) -> list[Row]:
    rows: list[Row] = []
    items, hidden = _items(e.section("nameserver"), "upstreams")
    for u in items:
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
    return rows + _more(hidden, 3)


def record_rows(doc: Any) -> list[Row]:
    """The local names, and a last row saying how many more there are."""
    items, hidden = _items(doc, "records")
    rows: list[Row] = [
        (_text(r.get("name")), _text(r.get("type")), _text(r.get("value"))) for r in items
    ]
    total = number(doc.get("total")) if isinstance(doc, dict) else None
    known = max(int(total or 0), len(rows) + hidden)
    return rows + _more(known - len(rows), 3)


def blocklist_rows(e: EndpointState, now: float) -> list[Row]:
    """Each source (`[{"source": ..., "entries": ...}, ...]`, docs/admin-api.md): what it
    gave, the lines it could not read, when it was last read, and what failed last."""
    items, hidden = _items(e.section("nameserver"), "blocklists")
    rows: list[Row] = [
        (
            _text(b.get("source")),
            count(b.get("entries")),
            count(b.get("bad_lines")),
            clock(b.get("loaded_at"), now) if b.get("loaded_at") else "never",
            _text(b.get("last_error") or ""),
        )
        for b in items
    ]
    return rows + _more(hidden, 5)


def no_blocklists(e: EndpointState) -> str:
    """What the Blocklists table says with no rows: each configured list is listed from the
    start (loaded `never` until it is read), so an empty list is none configured."""
    lists = e.section("nameserver").get("blocklists")
    return "none configured" if isinstance(lists, list) else "not reported"


def query_row(q: dict[str, Any], now: float) -> Row:
    ms = number(q.get("ms"))
    return (
        clock(q.get("at"), now, seconds=True),  # a live list: many share a minute
        _text(q.get("client")),
        _text(q.get("name")),
        _text(q.get("type")),
        answer_of(q),
        NOT_REPORTED if ms is None else f"{ms:.1f}",
    )


def answer_of(q: dict[str, Any]) -> str:
    """How a query was answered, with its response code unless that is NOERROR or says
    the same: a name the upstream says does not exist reads `forwarded NXDOMAIN`."""
    answer, rcode = _text(q.get("answer")), q.get("rcode")
    if not isinstance(rcode, str) or rcode in ("", "NOERROR") or rcode.lower() == answer:
        return answer
    return f"{answer} {_text(rcode)}"


def guest_rows(state: DashboardState) -> list[tuple[tuple[str, str], Row]]:
    """Every supervisor's guests: ((supervisor, name), the row). Memory and CPU time are
    qemu's, as the supervisor reads them; RAM is what the guest was given."""
    rows: list[tuple[tuple[str, str], Row]] = []
    for supervisor, g in state.guests():
        watched = state.watching(supervisor, g.name)
        parent = state.endpoints[supervisor]
        if watched is not None:
            admin = f"{watched.url.split('://', 1)[-1]} ({watched.state_of(g.service)})"
        elif not parent.named:
            admin = f"not watched: its supervisor was found on the LAN (--connect {parent.url})"
        elif g.state == "stopped":  # not watched while stopped: its state says so once
            admin = (guests.watch_url(parent.url, g.admin)[0] or "").split("://", 1)[-1]
        else:
            admin = (
                state.unwatched.get((supervisor, g.name))
                or guests.watch_url(parent.url, g.admin)[1]
            )
        row = (
            g.name,
            g.service,
            g.state,
            duration(g.uptime_seconds) if g.running else "",
            count(g.restarts),
            size(g.memory_bytes) if g.running else "",
            NOT_REPORTED if g.cpu_seconds is None else f"{g.cpu_seconds:,.1f} s",
            NOT_REPORTED if g.memory_mb is None else f"{g.memory_mb:,.0f} MB",
            admin,
            _text(g.last_exit or ""),
            supervisor,
        )
        rows.append(((supervisor, g.name), row))
    return rows


def guest_detail(columns: Sequence[str], row: Row) -> str:
    """A guest's row as one line: `relay: service relay · state running · ...`."""
    named = [f"{c.lower()} {v}" for c, v in zip(columns[1:], row[1:], strict=True) if v]
    return f"{row[0]}: " + " · ".join(named)


def supervisor_lines(state: DashboardState) -> list[str]:
    out = []
    for e in state.endpoints.values():
        if "vm" not in e.services():
            continue
        vm = e.section("vm")
        if e.ended:
            out.append(
                f"{e.name} ended with its last guest, as the supervisor `retreatkit vm start` "
                "leaves in the background does: `retreatkit vm start NAME` starts a guest again"
            )
            continue
        out.append(
            f"{e.name} supervises {plural(vm.get('guests'), 'guest', 'guests')}, "
            f"{count(vm.get('guests_running'))} running, "
            f"{plural(vm.get('restarts'), 'restart', 'restarts')} since it started"
        )
        if e.guests_error:
            out.append(f"guests not reported: {e.guests_error}")
    return out


def guest_lines(state: DashboardState) -> list[str]:
    """One line a guest, for the overview (the Guests screen has the rest)."""
    out = []
    for supervisor, g in state.guests():
        line = f"{g.name} ({g.service}) {g.state}"
        line += f" for {duration(g.uptime_seconds)}" if g.running else ""
        line += f" · {plural(g.restarts, 'restart', 'restarts')}"
        line += f" · last exit: {g.last_exit}" if g.last_exit and not g.running else ""
        out.append(line + (f" · on {supervisor}" if len(state.endpoints) > 1 else ""))
    return out
