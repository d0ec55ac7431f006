"""The admin endpoint's gate: a few connections per address and a bound in all, both for
the LAN only; refusals logged once a minute, and told as what they are."""

from __future__ import annotations

import asyncio
import sys

import pytest
from aiohttp import web

from retreatkit.admin.gate import AdminGate
from retreatkit.httpserver import REFUSAL, REFUSAL_ALL, GuardedSite


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_each_address_holds_a_few_and_the_rest_of_its_64_is_others() -> None:
    gate = AdminGate(per_address=2, remote=10, clock=Clock())
    assert gate.admit("fd88::1") and gate.admit("fd88::1")
    assert not gate.admit("fd88::1")
    assert gate.admit("fd88::2")  # another attendee of the LAN's /64
    gate.release("fd88::1")
    assert gate.admit("fd88::1")
    assert gate.refused == 1


def test_the_lan_is_bounded_in_all_and_loopback_still_gets_in() -> None:
    gate = AdminGate(per_address=2, remote=3, clock=Clock())
    assert all(gate.admit(address) for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"))
    assert not gate.admit("10.0.0.4")
    # the dashboards on the host itself: neither bound holds them
    assert all(gate.admit(address) for address in ["127.0.0.1"] * 5 + ["::1"] * 5)
    gate.release("10.0.0.1")
    assert gate.admit("10.0.0.4")


def test_refusals_are_logged_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    gate = AdminGate(per_address=1, remote=1, clock=clock)
    gate.admit("10.0.0.1")
    for _ in range(5):
        gate.admit("10.0.0.1")
    clock.now += 59.9
    gate.admit("10.0.0.2")
    clock.now += 0.1
    gate.admit("10.0.0.2")
    assert [r.getMessage() for r in caplog.records if r.name == "retreatkit.admin"] == [
        "refused an admin connection: 10.0.0.1 holds 1, the most one address may"
        " (1 refused since the endpoint started)",
        "refused an admin connection: 1 are open from the LAN, the most in all"
        " (7 refused since the endpoint started)",
    ]


class Refuses:
    full = False

    def admit(self, address: str) -> bool:
        return False

    def release(self, address: str) -> None:
        raise AssertionError("never admitted")


async def refused_answer(gate: Refuses | None = None) -> bytes:
    runner = web.AppRunner(web.Application(), access_log=None)
    await runner.setup()
    site = GuardedSite(runner, "127.0.0.1", 0, gate or Refuses())
    await site.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        answer = await reader.read()
        writer.close()
        return answer
    finally:
        await runner.cleanup()


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop")
def test_a_refused_connection_is_told_why_on_uvloop_too() -> None:
    """The services run on uvloop, whose transports are not asyncio.WriteTransport."""
    import uvloop

    assert uvloop.run(refused_answer()) == REFUSAL
    assert REFUSAL.endswith(b"\r\n\r\ntoo many connections from your address\n")


def test_a_refusal_for_the_bound_in_all_says_so() -> None:
    """It said "too many connections from your address" to a client with one open."""
    gate = AdminGate(per_address=1, remote=2, clock=Clock())
    assert gate.admit("10.0.0.1") and not gate.admit("10.0.0.1")
    assert not gate.full  # the address's own bound
    assert gate.admit("10.0.0.2") and not gate.admit("10.0.0.3")
    assert gate.full  # the LAN's bound in all
    full = Refuses()
    full.full = True
    assert asyncio.run(refused_answer(full)) == REFUSAL_ALL
    assert REFUSAL_ALL.endswith(b"\r\n\r\ntoo many connections in all: try again in a moment\n")
    assert b"Content-Length: 51\r\n" in REFUSAL_ALL
