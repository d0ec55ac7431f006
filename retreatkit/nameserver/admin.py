"""The nameserver's lists and actions on the admin endpoint (docs/admin-api.md).

Access (the token, loopback) is the admin endpoint's business, not this module's.
Every action that changes the policy applies to the very next query, cached or not.
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from retreatkit.httpserver import body_text
from retreatkit.nameserver import status
from retreatkit.nameserver.blocklist import normalize
from retreatkit.nameserver.errors import BadRecord, CnameLoop
from retreatkit.nameserver.lists import MAX_LIST
from retreatkit.nameserver.local import API_FORM, LocalNames, Record, make_record

if TYPE_CHECKING:
    from retreatkit.nameserver.service import Nameserver

log = logging.getLogger("retreatkit.nameserver")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_PAUSE_MINUTES = 24 * 60


def routes(ns: Nameserver) -> list[web.RouteDef]:
    async def queries(request: web.Request) -> web.Response:
        after = _int(request.query.get("after", "-1"), "after", -1)
        limit = _int(request.query.get("limit", str(DEFAULT_LIMIT)), "limit", 1)
        next_seq, items = ns.resolver.stats.since(
            after, min(limit, MAX_LIMIT), lambda when: status.at(ns, when)
        )
        return web.json_response({"next": next_seq, "queries": items})

    async def reload(request: web.Request) -> web.Response:
        before = len(ns.resolver.policy.blocklist)
        if not ns.sources.sources:
            _did(request, "blocklists reloaded: none configured")
        else:
            after = await ns.reload(quiet=True)
            _did(request, f"blocklists reloaded: {after} domains (was {before})")
        return web.json_response({"blocklists": status.blocklists(ns)})

    async def carried(request: web.Request) -> web.Response:
        """A new copy of a list file the host carried to this guest at its boot: the host
        reads its file and hands the bytes over, the guest never reaches the host's files.
        Only a copy it was booted with is replaced; the next reload reads it."""
        if not ns.settings.carried:
            raise web.HTTPNotFound(text="this nameserver reads its own list files\n")
        name = request.match_info["name"]
        path = Path(ns.settings.carried) / name
        if "/" in name or name.startswith(".") or str(path) not in ns.sources.sources:
            raise web.HTTPNotFound(text=f"no list carried as {name!r:.80}\n")
        size = request.content_length
        if size is not None and size > MAX_LIST:  # refused before a byte is read
            raise web.HTTPRequestEntityTooLarge(MAX_LIST, size, text="list larger than 256 MiB\n")
        # a name of its own: two copies handed over at once (a SIGHUP and the dashboard's
        # reload) each write their own file, and the last replace wins
        partial = path.with_name(f".{name}.{secrets.token_hex(8)}.partial")
        written = 0
        try:
            with partial.open("wb") as out:
                async for chunk in request.content.iter_chunked(1 << 16):
                    written += len(chunk)
                    if written > MAX_LIST:
                        raise web.HTTPRequestEntityTooLarge(
                            MAX_LIST, written, text="list larger than 256 MiB\n"
                        )
                    out.write(chunk)
            partial.replace(path)
        except OSError as exc:  # the guest's memory, which holds its files, is full
            raise web.HTTPInsufficientStorage(
                text=f"cannot keep the list: {exc.strerror or exc}\n"
            ) from None
        finally:
            partial.unlink(missing_ok=True)
        _did(request, f"blocklist {path} replaced by the host's copy ({written} bytes)")
        return web.Response(status=204)

    async def pause(request: web.Request) -> web.Response:
        body = await _json(request, '{"minutes": N} (0 resumes)')
        minutes = body.get("minutes") if isinstance(body, dict) else None
        if (
            not isinstance(minutes, int | float)
            or isinstance(minutes, bool)
            or not (0 <= minutes <= MAX_PAUSE_MINUTES)
        ):
            raise _bad(f'expected {{"minutes": N}} with N from 0 to {MAX_PAUSE_MINUTES}')
        before = status.blocking(ns)
        ns.resolver.pause(float(minutes) * 60)
        if minutes:
            until = status.at(ns, ns.resolver.paused_until)
            was = f" (was {before})" if before != "on" else ""
            _did(request, f"blocking paused for {minutes:g} min, until {until}{was}")
        else:
            _did(request, "blocking resumed" + (" (it was not paused)" if before == "on" else ""))
        return web.json_response({"blocking": status.blocking(ns)})

    async def records(request: web.Request) -> web.Response:
        limit = _int(request.query.get("limit", str(MAX_LIMIT)), "limit", 1)
        every = sorted(ns.resolver.policy.local.all(), key=lambda r: (r.name, r.rtype, r.value))
        shown = [_record(r) for r in every[: min(limit, MAX_LIMIT)]]
        return web.json_response({"total": len(every), "records": shown})

    async def put_record(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await _json(request, '{"value": "10.0.0.9"} or {"value": "cname:TARGET"}')
        value = body.get("value") if isinstance(body, dict) else None
        if not isinstance(value, str):
            raise _bad('expected {"value": "10.0.0.9"} or {"value": "cname:TARGET"}')
        try:
            record = make_record(name, value, API_FORM)
        except BadRecord as exc:
            raise _bad(str(exc)) from None
        local = ns.resolver.policy.local
        replaced = [r for r in local.all() if _replaced(r, record)]
        records = [*(r for r in local.all() if not _replaced(r, record)), record]
        try:
            LocalNames(records, local.zones).check_loops()
        except CnameLoop as exc:
            raise _bad(f"{exc}: {record.name} not set") from None
        ns.set_records(records)
        was = f"was {_values(replaced)}" if replaced else "new"
        _did(request, f"local name {record.name} set: {_values([record])} ({was})")
        return web.json_response(_record(record))

    async def delete_record(request: web.Request) -> web.Response:
        name = request.match_info["name"].strip().rstrip(".").lower()
        current = ns.resolver.policy.local.all()
        kept = [r for r in current if r.name != name]
        if len(kept) == len(current):
            raise web.HTTPNotFound(text=f"no local record named {name}\n")
        ns.set_records(kept)
        _did(request, f"local name {name} removed (was {_values(current, name)})")
        return web.Response(status=204)

    async def flush(request: web.Request) -> web.Response:
        body = await _json(request, '{"name": "example.org"}')
        raw = body.get("name") if isinstance(body, dict) else None
        name = normalize(raw) if isinstance(raw, str) else None
        if name is None:
            raise _bad('expected {"name": "example.org"}')
        dropped = ns.resolver.flush(name)
        _did(request, f"cache flushed for {name}: {dropped} answer{'s' * (dropped != 1)} dropped")
        return web.json_response({"name": name, "dropped": dropped})

    return [
        web.get("/nameserver/queries", queries),
        web.post("/nameserver/blocklists/reload", reload),
        web.put("/nameserver/blocklists/carried/{name}", carried),
        web.post("/nameserver/blocking/pause", pause),
        web.get("/nameserver/records", records),
        web.put("/nameserver/records/{name}", put_record),
        web.delete("/nameserver/records/{name}", delete_record),
        web.post("/nameserver/cache/flush", flush),
    ]


def _did(request: web.Request, what: str) -> None:
    """One line in the organiser's log per action that changes DNS state: who, and what
    changed (a refused request changes nothing and says nothing)."""
    log.info("admin (%s): %s", request.remote, what)


def _values(records: list[Record], name: str | None = None) -> str:
    """`A 10.0.0.9, AAAA fd00::9`: the data of `records` (of those named `name`, if given)."""
    return ", ".join(f"{r.rtype} {r.value}" for r in records if name in (None, r.name))


def _replaced(old: Record, new: Record) -> bool:
    """A CNAME replaces everything at its name; an address replaces its own type and a
    CNAME (a name with a CNAME has no other data, RFC 1034 3.6.2)."""
    if old.name != new.name:
        return False
    return new.rtype == "CNAME" or old.rtype in (new.rtype, "CNAME")


def _record(record: Record) -> dict[str, str]:
    return {"name": record.name, "type": record.rtype, "value": record.value}


def _int(text: str, what: str, lowest: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _bad(f"{what} must be a whole number") from None
    if value < lowest:
        raise _bad(f"{what} must be at least {lowest}")
    return value


async def _json(request: web.Request, expected: str) -> Any:
    try:
        return json.loads(await body_text(request) or "null")
    except (ValueError, RecursionError):  # nested deeper than Python recurses, as 4 KB can be
        raise _bad(f"expected JSON: {expected}") from None


def _bad(text: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=text.rstrip("\n") + "\n")
