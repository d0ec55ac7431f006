"""Admin endpoints advertised on the LAN as `_retreat-admin._tcp.local.` (no Textual).

An announcement lists every address of its host, its uplink's, Docker's and a VPN's
too, in an order that varies from one announcement to the next: the dashboard tries at
most MAX_ADDRESSES of them, those on a network of this machine's own first
(lanaddress.nearest), each STAGGER seconds after the one before or as soon as it failed,
and keeps the first whose endpoint answers, all within ANSWER seconds."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence

import aiohttp

from retreatkit import mdns
from retreatkit.admin.advertise import SERVICE_TYPE
from retreatkit.lanaddress import Network, nearest, networks

LISTEN = 1.5  # seconds to listen for answers
ANSWER = 3.0  # seconds for an announcement's addresses to answer (run.PROBE_TIMEOUT)
MAX_ADDRESSES = 4  # of one announcement, tried: anyone may announce hundreds
# seconds an address has to answer before the next one is tried beside it: on a LAN an
# answer takes a millisecond, unless it never comes
STAGGER = 0.25


async def discover(listen: float = LISTEN, answer: float = ANSWER) -> list[str]:
    """URLs of the admin endpoints announced on the LAN within `listen` seconds, each at
    the address that answered (`reached`)."""
    found: dict[str, mdns.Found] = {}
    for f in await mdns.browse(SERVICE_TYPE, listen):
        found.setdefault(f.name, f)
    if not found:
        return []
    ours = networks()
    timeout = aiohttp.ClientTimeout(total=answer)
    # no proxies from the environment: the admin endpoint is on this LAN
    async with aiohttp.ClientSession(trust_env=False, timeout=timeout) as session:
        urls = await asyncio.gather(*(reached(session, f, ours, answer) for f in found.values()))
    return list(dict.fromkeys(urls))


async def reached(
    session: aiohttp.ClientSession, found: mdns.Found, ours: Sequence[Network], answer: float
) -> str:
    """The URL of the first of the announcement's nearest addresses to answer within
    `answer` seconds; with none, the nearest's (the dashboard then says it cannot be read)."""
    urls = [url(host, found.port) for host in nearest(found.addresses, ours, MAX_ADDRESSES)]
    try:
        async with asyncio.timeout(answer):
            return await first_to_answer(session, urls) or urls[0]
    except TimeoutError:
        return urls[0]


async def first_to_answer(session: aiohttp.ClientSession, urls: list[str]) -> str | None:
    """The first of `urls` whose endpoint answers, each tried STAGGER seconds after the one
    before or at once when the last failed; None when none does."""
    tried: dict[asyncio.Task[bool], str] = {}
    pending: set[asyncio.Task[bool]] = set()
    try:
        while len(tried) < len(urls) or pending:
            if len(tried) < len(urls):
                task = asyncio.ensure_future(answers(session, urls[len(tried)]))
                tried[task] = urls[len(tried)]
                pending.add(task)
            more = len(tried) < len(urls)
            done, pending = await asyncio.wait(
                pending, timeout=STAGGER if more else None, return_when=asyncio.FIRST_COMPLETED
            )
            answered = [tried[task] for task in done if task.result()]
            if answered:
                return min(answered, key=urls.index)
        return None
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def answers(session: aiohttp.ClientSession, base: str) -> bool:
    """Whether an HTTP server answers at `base`: `GET /healthz` is answered without the
    token on loopback, and refused (401) beyond it; either is an answer."""
    try:
        async with session.get(f"{base}/healthz", allow_redirects=False):
            return True
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


def url(host: str, port: int) -> str:
    address = ipaddress.ip_address(host)
    return f"http://[{address}]:{port}" if address.version == 6 else f"http://{address}:{port}"
