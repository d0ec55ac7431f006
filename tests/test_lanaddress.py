"""The LAN address for our own names: configured, else the default route's interface."""

from __future__ import annotations

from pathlib import Path

import pytest

from retreatkit.lanaddress import choose, default_interface

ROUTES = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""


def test_the_default_route_with_the_lowest_metric(tmp_path: Path) -> None:
    routes = tmp_path / "route"
    routes.write_text(ROUTES)
    assert default_interface(routes) == "eth0"
    routes.write_text(ROUTES.splitlines()[0] + "\n")
    assert default_interface(routes) is None
    assert default_interface(tmp_path / "missing") is None


def test_a_configured_address_wins_and_is_checked() -> None:
    chosen = choose("10.0.0.2")
    assert (chosen.address, chosen.how, chosen.loopback) == ("10.0.0.2", "as configured", False)
    assert choose("127.0.1.1").loopback
    with pytest.raises(ValueError) as refused:
        choose("lan")
    # the key to change, as every other error of the configuration names it
    assert str(refused.value) == (
        "[nameserver] address (or --address): expected an IP address, got 'lan'"
    )
