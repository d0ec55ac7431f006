"""Every screen at 80x24 (a normal terminal), 60x20 and 250x50, scrolled through: a state
and an address are shown whole, never cut with an ellipsis (`unreach…`, `[2001:db8…`
said nothing an organiser could act on). Where even a terminal's width is too narrow for
an address, it is folded onto the next line, still whole."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from retreatkit.tui.app import Dashboard
from retreatkit.tui.testing import (
    FakeAdmin,
    canned,
    guest,
    lists,
    make_dashboard,
    screen_lines,
    scrolled_through,
    serve,
    settle,
)

V6 = "2001:db8:4f2a:7c00:a1b2:c3d4:e5f6:789a"  # a laptop's SLAAC address
ADDRESSES = {
    "relay": "[2001:db8:10::2]:9000",
    "mirror": "192.168.100.200:8000",
    "nameserver": f"[{V6}]:53",
}
GONE = "192.168.100.201:8000"  # the mirror of an endpoint that stopped answering
DNS_UPSTREAM = "[2001:4860:4860::8888]:53"


def lan_status() -> dict[str, Any]:
    status = canned("numpy")
    status["process"]["addresses"] = ADDRESSES
    status["nameserver"]["upstreams"] = [
        {"address": DNS_UPSTREAM, "state": "unreachable", "latency_ms": 12.5},
        {"address": "192.168.100.254:53", "state": "up", "latency_ms": 1.5},
    ]
    status["nameserver"]["top_clients"] = [[V6, 120], ["192.168.100.123", 99]]
    return status


def lan_lists() -> dict[str, Any]:
    found = lists("numpy")
    query = found["/nameserver/queries"]["queries"][0]
    query.update(client=V6, answer="forwarded", rcode="NXDOMAIN")
    found["/nameserver/records"]["records"].append(
        {"name": "v6.retreat.lan", "type": "AAAA", "value": V6}
    )
    return found


@pytest.fixture
def lan() -> Iterator[tuple[FakeAdmin, FakeAdmin]]:
    """An endpoint hosting the three services at LAN addresses (IPv6 among them) and
    supervising two guests, and one whose mirror stops answering."""
    gone = canned("numpy")
    gone["process"] = {**gone["process"], "services": ["mirror"], "addresses": {"mirror": GONE}}
    with (
        serve(FakeAdmin(status=lan_status(), lists=lan_lists())) as up,
        serve(FakeAdmin(status=gone)) as down,
    ):
        up.guests = [
            guest("relay", "relay", None),
            {**guest("nameserver", "nameserver", None), "state": "restarting"},
        ]
        yield up, down


# what each screen shows whole: states, and addresses attendees and the organiser use
WHOLE = {
    "1": [*ADDRESSES.values(), GONE, "unreachable", "DOWN"],
    "2": ["completed", "active"],
    "3": ["apt/debian-security", "unknown", "2 min ago", "fetching"],
    "4": [V6, DNS_UPSTREAM, "unreachable", "192.168.100.254:53", "forwarded NXDOMAIN"],
    "6": ["restarting", "running", "nameserver"],
}


def folded_or_whole(lines: list[str], word: str) -> bool:
    """`word` on one line, or folded at one width onto the lines under it, each piece
    in the same column (a table's cell too narrow for it)."""
    if any(word in line for line in lines):
        return True
    for width in range(1, len(word)):
        pieces = [word[i : i + width] for i in range(0, len(word), width)]
        for row, line in enumerate(lines[: -len(pieces) + 1]):
            for found in re.finditer(re.escape(pieces[0]), line):
                col = found.start()
                under = lines[row + 1 : row + len(pieces)]
                if all(u[col : col + len(p)] == p for u, p in zip(under, pieces[1:], strict=True)):
                    return True
    return False


async def walk(app: Dashboard, size: tuple[int, int], down: FakeAdmin) -> dict[str, list[str]]:
    """Each screen's lines, scrolled through, once the second endpoint stopped answering."""
    seen = {}
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        down.mode = "garbage"
        await app.poll(list(app.clients)[1])
        for key in WHOLE:
            await pilot.press(key)
            await settle(pilot)
            seen[key] = await scrolled_through(pilot)
    return seen


@pytest.mark.parametrize("size", [(80, 24), (250, 50)])
async def test_states_and_addresses_are_whole_on_one_line(
    lan: tuple[FakeAdmin, FakeAdmin], size: tuple[int, int]
) -> None:
    up, down = lan
    seen = await walk(make_dashboard(up.url, down.url), size, down)
    for key, words in WHOLE.items():
        text = "\n".join(seen[key])
        for word in words:
            assert word in text, f"screen {key} at {size}: {word!r} not whole in\n{text}"
    services = "\n".join(seen["1"])
    assert re.search(rf"^ +mirror +{re.escape(GONE)} +unreachable ", services, re.M)
    assert re.search(rf"^ +nameserver +{re.escape(ADDRESSES['nameserver'])} +DOWN ", services, re.M)


async def test_at_60_columns_an_address_too_wide_is_folded_never_cut(
    lan: tuple[FakeAdmin, FakeAdmin],
) -> None:
    up, down = lan
    seen = await walk(make_dashboard(up.url, down.url), (60, 20), down)
    for key, words in WHOLE.items():
        for word in words:
            assert folded_or_whole(seen[key], word), f"{word!r} cut on screen {key}:\n" + (
                "\n".join(seen[key])
            )
    # the services' states and the shorter addresses still on one line
    services = "\n".join(seen["1"])
    assert re.search(rf"^ +mirror +{re.escape(GONE)} +unreachable ", services, re.M)
    assert re.search(r"^ +relay +\[2001:db8:10::2\]:9000 +up ", services, re.M)


async def test_the_title_names_whole_endpoints_and_how_many_more(
    lan: tuple[FakeAdmin, FakeAdmin],
) -> None:
    """An endpoint's address in the title is whole, or counted: at 60 columns two do not
    fit beside the screen's name and the alarms."""
    up, down = lan
    app = make_dashboard(up.url, down.url)
    async with app.run_test(size=(60, 20)) as pilot:
        await pilot.press("2")
        await settle(pilot)
        title = screen_lines(app)[0].strip()
        assert title == f"retreatkit · Relay · 6 alarms · {up.url[7:]} and 1 more"
        await pilot.resize_terminal(150, 40)
        await settle(pilot)
        title = screen_lines(app)[0].strip()
        assert title == f"retreatkit · Relay · 6 alarms · {up.url[7:]}, {down.url[7:]}"
