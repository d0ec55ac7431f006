"""A nameserver guest's blocklists reloaded from this host's files (SIGHUP, the dashboard).

The guest boots with copies of the list files retreat.toml names (guestconfig.py) and
never reads the host's own: a reload asked of the guest alone read its boot copies again
and said it had reloaded, while the edited file stayed unused. Here the host reads each
file as an in-process reload reads it (a regular file, 256 MiB at most; 64 MiB in all, as
at boot, since the guest keeps them in its memory), hands the bytes to the guest's admin
endpoint with the guest's own token (`PUT /nameserver/blocklists/carried/NAME`), asks it
to reload, and names each source of its answer as retreat.toml names it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from retreatkit.image.guestconfig import MAX_FILES, guest_lists
from retreatkit.image.spec import FILES_DIR
from retreatkit.nameserver.errors import BadList
from retreatkit.nameserver.lists import is_url, read_bytes

TIMEOUT = 120.0  # seconds for the whole reload: 64 MiB to hand over, then the parse
MAX_ANSWER = 1 << 20  # bytes of the guest's answer read: a guest is not trusted further


class GuestListsError(Exception):
    """The guest could not be asked to reload: one line saying why."""


@dataclass
class Carried:
    source: str  # as retreat.toml names it
    guest: str  # as the guest names it
    data: bytes | None = None  # a file's bytes, read now
    problem: str = ""  # why this host has no new copy of it for the guest


def read_all(blocklists: list[str], folder: str = FILES_DIR) -> list[Carried]:
    """Each configured list with a file's bytes or why not (a URL the guest fetches
    itself); `folder`: where the guest keeps its copies."""
    out = []
    total = 0
    for source, guest in zip(blocklists, guest_lists(blocklists, folder), strict=True):
        item = Carried(source, guest)
        if not is_url(source):
            try:
                item.data = read_bytes(source)
            except BadList as exc:
                item.problem = str(exc)
            else:
                total += len(item.data)
                if total > MAX_FILES:
                    item.data = None
                    item.problem = "lists larger than 64 MiB in all cannot be carried to a guest"
        out.append(item)
    return out


def _plain(text: object, most: int = 200) -> str | None:
    """`text` as one printable line of at most `most` characters (None stays None)."""
    if text is None:
        return None
    cut = str(text)[:most]
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)


def answered(carried: list[Carried], answer: Any) -> list[dict[str, Any]]:
    """The guest's state of each list (its reload's answer), named as this host names it.
    A file this host could not read, or the guest would not take, shows that error: the
    guest kept its last copy, as an in-process reload keeps the last good one."""
    sources = answer.get("blocklists") if isinstance(answer, dict) else None
    if not isinstance(sources, list):
        raise GuestListsError("the guest's answer to the reload names no blocklists")
    by_guest = {c.guest: c for c in carried}
    out = []
    for state in sources:
        if not isinstance(state, dict):
            continue
        mine = by_guest.pop(str(state.get("source")), None)
        if mine is None:
            continue  # not a list this host carried: a guest's word alone is not logged
        # what the guest says reaches the host's log: numbers only as numbers, its error
        # on one line and cut, so a guest taken over cannot forge lines there
        item: dict[str, Any] = {"source": mine.source, "loaded_at": _plain(state.get("loaded_at"))}
        for key in ("entries", "bad_lines"):
            n = state.get(key)
            item[key] = n if type(n) is int and 0 <= n < 1 << 40 else 0
        error = mine.problem or state.get("last_error")
        item["last_error"] = _plain(error) if error else None
        out.append(item)
    for mine in by_guest.values():  # named in retreat.toml since the guest started
        why = "the guest started without it: restart the guest to add it"
        item = {"source": mine.source, "entries": 0, "bad_lines": 0, "loaded_at": None}
        out.append({**item, "last_error": why})
    return out


async def reload(
    admin: str, token: str, blocklists: list[str], folder: str = FILES_DIR
) -> list[dict[str, Any]]:
    """Hand the guest at `admin` this host's copies of its list files, then reload it."""
    import aiohttp  # the host's client, loaded when a reload is asked for

    carried = await asyncio.to_thread(read_all, blocklists, folder)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
            for item in carried:
                if item.data is None:
                    continue
                name = quote(item.guest.rsplit("/", 1)[-1], safe="")
                url = f"{admin}/nameserver/blocklists/carried/{name}"
                async with session.put(url, data=item.data) as response:
                    if response.status != 204:
                        said = await _said(response)
                        item.problem = f"the guest took no new copy: {said}"
            async with session.post(f"{admin}/nameserver/blocklists/reload") as response:
                if response.status != 200:
                    said = await _said(response)
                    raise GuestListsError(f"the guest refused the reload: {said}")
                body = await response.content.read(MAX_ANSWER + 1)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise GuestListsError(f"the guest's admin endpoint did not answer: {exc!s:.200}") from None
    if len(body) > MAX_ANSWER:
        raise GuestListsError("the guest's answer to the reload is too long")
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        raise GuestListsError("the guest's answer to the reload is not JSON") from None
    return answered(carried, answer)


async def _said(response: Any) -> str:
    """The first line of a refusal, short, as the guest wrote it (for a log line)."""
    text = (await response.content.read(400)).decode("utf-8", "replace").strip()
    first = text.splitlines()[0][:160] if text else ""
    return first or f"HTTP {response.status}"
