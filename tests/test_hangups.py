"""SIGHUPs as reloads (serve.Hangups), in process: one reload at a time, and a SIGHUP that
comes during one asks for exactly one more after it. Before, each SIGHUP started a reload
beside those under way, and a guest's copy of a list was written by two at once."""

from __future__ import annotations

import asyncio

from retreatkit.serve import Hangups


async def test_sighups_during_a_reload_make_one_more_after_it() -> None:
    release: list[asyncio.Event] = []
    running = 0
    most = 0

    async def reload() -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        gate = asyncio.Event()
        release.append(gate)
        await gate.wait()
        running -= 1

    hangups = Hangups(reload)
    for _ in range(3):  # the organiser sends SIGHUP three times in a row
        hangups()
    await asyncio.sleep(0)  # the first reload starts
    assert (len(release), len(hangups.tasks)) == (1, 1)
    release[0].set()
    while len(release) < 2:  # the one more, once the first has ended
        await asyncio.sleep(0)
    release[1].set()
    while hangups.tasks:
        await asyncio.sleep(0)
    assert (len(release), most) == (2, 1)


async def test_a_cancelled_reload_asks_for_none_after_it() -> None:
    started = 0

    async def reload() -> None:
        nonlocal started
        started += 1
        await asyncio.Event().wait()

    hangups = Hangups(reload)
    hangups()
    hangups()  # during it: one more is asked for
    await asyncio.sleep(0)
    for task in list(hangups.tasks):  # the services stop: the reload under way ends
        task.cancel()
    while hangups.tasks:
        await asyncio.sleep(0)
    assert started == 1


async def test_a_sighup_as_the_services_stop_starts_no_reload() -> None:
    started = 0

    async def reload() -> None:
        nonlocal started
        started += 1

    hangups = Hangups(reload)
    hangups.close()
    hangups()
    await asyncio.sleep(0)
    assert (started, hangups.tasks) == (0, set())
