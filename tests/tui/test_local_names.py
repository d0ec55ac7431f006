"""Adding a local name from the DNS screen: every form an organiser types is taken
(`NAME=ADDRESS` as dnsmasq's address= and --record, `NAME ADDRESS`, a hosts-file line, a
dnsmasq line), and a mistake is one line naming the part that is wrong, with nothing
sent."""

from __future__ import annotations

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from retreatkit.tui.localnames import BadEntry, parse
from retreatkit.tui.testing import TOKEN, FakeAdmin, actions_done, make_dashboard, settle
from retreatkit.tui.widgets import Lines


@pytest.mark.parametrize(
    ("typed", "name", "value"),
    [
        ("printer.retreat.lan=10.0.0.9", "printer.retreat.lan", "10.0.0.9"),
        ("printer.retreat.lan = 10.0.0.9", "printer.retreat.lan", "10.0.0.9"),
        ("  printer.retreat.lan=10.0.0.9  ", "printer.retreat.lan", "10.0.0.9"),
        ("printer.retreat.lan 10.0.0.9", "printer.retreat.lan", "10.0.0.9"),  # as before
        ("10.0.0.9 printer.retreat.lan", "printer.retreat.lan", "10.0.0.9"),  # /etc/hosts
        ("10.0.0.9\tprinter.retreat.lan", "printer.retreat.lan", "10.0.0.9"),
        ("address=/printer.retreat.lan/10.0.0.9", "printer.retreat.lan", "10.0.0.9"),
        ("wiki.retreat.lan=cname:www.retreat.lan", "wiki.retreat.lan", "cname:www.retreat.lan"),
        ("wiki.retreat.lan cname:www.retreat.lan", "wiki.retreat.lan", "cname:www.retreat.lan"),
        ("WIKI.retreat.lan=CNAME:www.retreat.lan.", "WIKI.retreat.lan", "cname:www.retreat.lan."),
        ("v6.retreat.lan=fd00::9", "v6.retreat.lan", "fd00::9"),
        ("v6.retreat.lan=[fd00::9]", "v6.retreat.lan", "fd00::9"),
        ("v6.retreat.lan=FD00:0:0::9", "v6.retreat.lan", "fd00::9"),
        ("fd00::9 v6.retreat.lan", "v6.retreat.lan", "fd00::9"),
        ("*.retreat.lan=10.0.0.2", "*.retreat.lan", "10.0.0.2"),
        ("_http._tcp.retreat.lan=10.0.0.2", "_http._tcp.retreat.lan", "10.0.0.2"),
        ("printer=10.0.0.9", "printer", "10.0.0.9"),
    ],
)
def test_each_form_an_organiser_types_is_taken(typed: str, name: str, value: str) -> None:
    assert parse(typed) == (name, value)


@pytest.mark.parametrize(
    ("typed", "said"),
    [
        ("printer.retreat.lan", "expected NAME=ADDRESS (e.g. printer.retreat.lan=10.0.0.9), "
         "got: printer.retreat.lan"),
        ("printer.retreat.lan=", "expected NAME=ADDRESS (e.g. printer.retreat.lan=10.0.0.9), "
         "got: printer.retreat.lan="),
        ("=10.0.0.9", "expected NAME=ADDRESS (e.g. printer.retreat.lan=10.0.0.9), got: =10.0.0.9"),
        ("10.0.0.9 printer lp.retreat.lan", "expected NAME=ADDRESS (e.g. "
         "printer.retreat.lan=10.0.0.9), got: 10.0.0.9 printer lp.retreat.lan"),
        ("printer.retreat.lan=10.0.0.999", "not an IP address: 10.0.0.999"),
        ("printer.retreat.lan=10.0.0.9:631",
         "a name points at an address, not a port: 10.0.0.9:631"),
        ("printer.retreat.lan=[fd00::9]:631",
         "a name points at an address, not a port: [fd00::9]:631"),
        ("wiki.retreat.lan=www.retreat.lan",
         "not an IP address: www.retreat.lan (an alias: wiki.retreat.lan=cname:www.retreat.lan)"),
        ("wiki.retreat.lan=cname:", "not a name to alias wiki.retreat.lan to: nothing"),
        ("wiki.retreat.lan=cname:*.retreat.lan",
         "not a name to alias wiki.retreat.lan to: *.retreat.lan"),
        ("10.0.0.9=printer.retreat.lan",
         "10.0.0.9 is an address: the name comes first, e.g. printer.retreat.lan=10.0.0.9"),
        ("10.0.0.9 10.0.0.8",
         "10.0.0.9 is an address: the name comes first, e.g. printer.retreat.lan=10.0.0.9"),
        ("my printer=10.0.0.9", "not a name: my printer (letters, digits and hyphens between"
         " dots, e.g. printer.retreat.lan)"),
        ("printer..retreat.lan=10.0.0.9", "not a name: printer..retreat.lan (letters, digits and"
         " hyphens between dots, e.g. printer.retreat.lan)"),
        ("-printer.retreat.lan=10.0.0.9", "not a name: -printer.retreat.lan (letters, digits and"
         " hyphens between dots, e.g. printer.retreat.lan)"),
        (f"{'a' * 64}.retreat.lan=10.0.0.9",
         f"not a name: {'a' * 64}.retreat.lan (a part between dots has 63 at most)"),
        ("v6.retreat.lan=fe80::1%eth0", "an address without %eth0, please: fe80::1%eth0"),
        ("address=/printer.retreat.lan/", "expected NAME=ADDRESS (e.g. "
         "printer.retreat.lan=10.0.0.9), got: address=/printer.retreat.lan/"),
        ("address=/a/b/10.0.0.9", "expected address=/NAME/ADDRESS, got: address=/a/b/10.0.0.9"),
    ],
)  # fmt: skip
def test_a_mistake_is_one_line_naming_the_wrong_part(typed: str, said: str) -> None:
    with pytest.raises(BadEntry) as caught:
        parse(typed)
    assert str(caught.value) == said


def test_what_is_shown_back_is_bounded() -> None:
    with pytest.raises(BadEntry) as caught:
        parse("printer.retreat.lan=" + "9" * 100_000)
    assert len(str(caught.value)) < 700 and "\n" not in str(caught.value)


async def add(pilot: Pilot[int], typed: str) -> list[str]:
    """The result lines once `typed` is given to the add-a-name question."""
    app = pilot.app
    await pilot.press("a")
    await pilot.pause()
    app.screen.query_one(Input).value = typed  # typing it is slow, not different
    await pilot.press("enter")
    await actions_done(pilot)
    return str(app.screen.query_one("#result", Lines).render()).splitlines()


async def test_the_dns_screen_sends_what_each_form_means(fake: FakeAdmin) -> None:
    app = make_dashboard(fake.url)

    def sent() -> list[tuple[str, str, str | None, str]]:
        return [s for s in fake.seen if s[0] != "GET"]

    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        await settle(pilot)
        await pilot.press("a")
        await pilot.pause()
        assert app.screen.query_one(Input).placeholder == "e.g. printer.retreat.lan=10.0.0.9"
        await pilot.press("escape")
        await actions_done(pilot)
        for typed in (
            "printer.retreat.lan=10.0.0.9",
            "10.0.0.9 printer.retreat.lan",
            "address=/printer.retreat.lan/10.0.0.9",
        ):
            assert await add(pilot, typed) == ["added printer.retreat.lan"]
        assert await add(pilot, "v6.retreat.lan=[fd00::9]") == ["added v6.retreat.lan"]
        assert sent() == [
            *[("PUT", "/nameserver/records/printer.retreat.lan", f"Bearer {TOKEN}",
               '{"value": "10.0.0.9"}')] * 3,
            ("PUT", "/nameserver/records/v6.retreat.lan", f"Bearer {TOKEN}",
             '{"value": "fd00::9"}'),
        ]  # fmt: skip
        fake.seen.clear()
        assert await add(pilot, "printer.retreat.lan=10.0.0.999") == [
            "not an IP address: 10.0.0.999"
        ]
        assert await add(pilot, "printer.retreat.lan") == [
            "expected NAME=ADDRESS (e.g. printer.retreat.lan=10.0.0.9), got: printer.retreat.lan"
        ]
        assert sent() == []  # a mistake sends nothing
