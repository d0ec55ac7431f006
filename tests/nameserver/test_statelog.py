"""What the organiser's log says of upstream state changes, with a manual clock: one line
per change, and a flapping upstream held to its budget."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import dns.message
import dns.rcode
import pytest

from retreatkit.nameserver import wire
from retreatkit.nameserver.errors import UpstreamFailed
from retreatkit.nameserver.fakes import SILENT, FakeTransport, Hold, ManualClock, Zone, make_query
from retreatkit.nameserver.loops import Loops
from retreatkit.nameserver.statelog import BURST, REFILL, StateLog
from retreatkit.nameserver.upstream import Upstream, UpstreamSet

ZONE = Zone("$TTL 60\n@ SOA ns.test. h.test. 1 3600 600 86400 60\n*.www A 198.51.100.7\n")
UP = ("192.0.2.1", 53)
INFO, WARNING = logging.INFO, logging.WARNING


class Lines(list[tuple[int, str]]):
    def __call__(self, level: int, line: str) -> None:
        self.append((level, line))


def key(name: str) -> bytes:
    query = wire.parse(make_query(name).to_wire())
    assert query is not None
    return query.key


def made(zone: str = "") -> tuple[UpstreamSet, FakeTransport, ManualClock, StateLog, Lines]:
    clock, lines = ManualClock(), Lines()
    states = StateLog(lines)
    transport = FakeTransport({UP: ZONE.answer})
    group = UpstreamSet([Upstream(*UP)], transport, clock, zone=zone, note=states.note)
    return group, transport, clock, states, lines


async def test_an_outage_and_its_end_are_four_lines() -> None:
    group, transport, clock, _, lines = made()
    await group.ask(key("a.www.test"))
    await group.ask(key("b.www.test"))  # still up: no line
    transport.scripts[UP] = lambda q: SILENT
    for _ in range(3):
        with pytest.raises(UpstreamFailed):
            await group.ask(key("a.www.test"))
    (up,) = group.servers
    clock.advance(30)
    assert not await group.check_again(up)  # the check fails: down it stays, no line
    clock.advance(30)
    transport.scripts[UP] = ZONE.answer
    assert await group.check_again(up)
    await group.ask(key("a.www.test"))
    assert lines == [
        (INFO, "upstream 192.0.2.1:53 is up"),
        (INFO, "upstream 192.0.2.1:53 is failing (was up): no answer in time"),
        (WARNING, "upstream 192.0.2.1:53 is down (was failing): no answer in time, "
                  "3 failures in a row; next check in 30 s"),
        (INFO, "upstream 192.0.2.1:53 is up (was down)"),
    ]  # fmt: skip


async def test_a_change_past_the_budget_comes_late_as_a_line_of_its_own() -> None:
    """Four changes spent the budget; the fifth is held, and said once a token is back,
    as the change it is (before: `...; 1 changes in between not logged`, of a change the
    line itself told)."""
    group, transport, clock, states, lines = made()
    refused = dns.message.make_response(make_query("a.www.test"))
    refused.set_rcode(dns.rcode.REFUSED)
    for script in (ZONE.answer, lambda q: SILENT, ZONE.answer, lambda q: refused):
        transport.scripts[UP] = script
        with contextlib.suppress(UpstreamFailed):
            await group.ask(key("a.www.test"))
    transport.scripts[UP] = ZONE.answer
    await group.ask(key("a.www.test"))
    assert len(lines) == BURST  # up, failing, up, failing; then up, held
    clock.advance(REFILL)
    states.tick(clock())
    assert lines[BURST - 1 :] == [
        (INFO, "upstream 192.0.2.1:53 is failing (was up): REFUSED"),
        (INFO, "upstream 192.0.2.1:53 is up (was failing)"),
    ]


async def test_queries_failing_together_say_each_change_once() -> None:
    group, transport, _, _, lines = made(zone="venue.example")
    await group.ask(key("a.www.test"))
    hold = Hold(SILENT)
    transport.scripts[UP] = lambda q: hold
    asking = [asyncio.ensure_future(group.ask(key(f"{n}.www.test"))) for n in range(5)]
    await asyncio.sleep(0)
    hold.released.set()
    assert all(
        isinstance(r, UpstreamFailed) for r in await asyncio.gather(*asking, return_exceptions=True)
    )
    assert [line for _, line in lines] == [
        "upstream 192.0.2.1:53 for venue.example is up",
        "upstream 192.0.2.1:53 for venue.example is failing (was up): no answer in time",
        "upstream 192.0.2.1:53 for venue.example is down (was failing): no answer in time, "
        "3 failures in a row; next check in 30 s",
    ]


async def test_a_flapping_upstream_is_held_to_its_budget() -> None:
    group, transport, clock, states, lines = made()
    answers = iter([ZONE.answer, lambda q: SILENT] * 100)
    for _ in range(200):  # up, failing, up, failing ... one change per query, in 20 s
        transport.scripts[UP] = next(answers)
        with contextlib.suppress(UpstreamFailed):
            await group.ask(key("a.www.test"))
        clock.advance(0.1)
        states.tick(clock())
    # four changes at once (the burst: up, failing, up, failing), then a line when a
    # token is back 15 s on, for the 146 changes held meanwhile
    assert BURST == 4 and REFILL == 15
    assert len(lines) == 5
    assert lines[4] == (
        INFO, "upstream 192.0.2.1:53 is failing: no answer in time; "
              "146 changes in between not logged",
    )  # fmt: skip
    transport.scripts[UP] = ZONE.answer
    await group.ask(key("a.www.test"))  # it settles: up (the 201st change)
    clock.advance(REFILL)
    states.tick(clock())
    assert lines[5] == (
        INFO,
        "upstream 192.0.2.1:53 is up (was failing); 50 changes in between not logged",
    )
    clock.advance(3600)
    states.tick(clock())  # nothing held: nothing more to say
    assert len(lines) == 6


async def test_a_loop_and_its_end_are_a_line_each() -> None:
    group, transport, clock, states, lines = made()
    (up,) = group.servers
    loops = Loops([("", up)], entropy=lambda n: bytes(n))
    (probe,) = loops.due(clock())
    loops.came_back(probe.key)  # the question came back to us: a loop
    states.note(up, "", clock())
    for _ in range(5):  # its questions in flight time out meanwhile: no line
        up.failed(clock(), "no answer in time")
        states.note(up, "", clock())
    loops.answered(probe, 3, 0.01)
    clock.advance(30)
    (probe,) = loops.due(clock())
    assert loops.answered(probe, 3, 0.01)  # answered, and it never came back
    states.note(up, "", clock())
    assert lines == [
        (WARNING, "upstream 192.0.2.1:53 is looping: our question to it came back to us (it "
                  "forwards to this nameserver); not asked until that ends, checked every 30 s"),
        (INFO, "upstream 192.0.2.1:53 is up (was looping)"),
    ]  # fmt: skip
    assert transport.asked() == 0
