"""[nameserver] and its flags read into settings: upstream names looked up once, at start,
and every value that cannot work named by its key."""

from __future__ import annotations

import collections
import copy
import ipaddress
import socket
from pathlib import Path
from typing import Any

import pytest

from retreatkit import config, loop, serve
from retreatkit.cli import main as cli
from retreatkit.nameserver import hosted
from retreatkit.nameserver.hosted import dns_server, nameserver_settings, problems
from retreatkit.nameserver.local import Record
from retreatkit.nameserver.service import Nameserver, Settings


def section(**values: Any) -> dict[str, Any]:
    out: dict[str, Any] = copy.deepcopy(config.DEFAULTS["nameserver"])
    out.update(values)
    return out


def lookup_failure(host: str) -> str:
    """What this machine's resolver says about `host`: the reason a refusal quotes."""
    with pytest.raises(socket.gaierror) as failed:
        socket.getaddrinfo(host, 53, type=socket.SOCK_DGRAM)
    return str(failed.value.strerror)


def test_an_upstream_name_becomes_its_address_once() -> None:
    host, port = dns_server("localhost:5353")
    assert ipaddress.ip_address(host).is_loopback and port == 5353
    assert dns_server("192.0.2.1") == ("192.0.2.1", 53)
    assert dns_server("2001:db8::1") == ("2001:db8::1", 53)
    assert dns_server("[2001:db8::1]:5300") == ("2001:db8::1", 5300)
    settings = nameserver_settings(section(upstreams=["localhost:5353"]), {})
    (address,) = settings.upstreams
    assert ipaddress.ip_address(address[0]).is_loopback  # what the sockets connect to


def test_upstreams_and_forwards_that_cannot_work_are_named() -> None:
    why = lookup_failure("bogus.invalid")
    assert problems(
        section(upstreams=["bogus.invalid", "127.0.0.1:99999"], forward={"venue.example": 5})
    ) == [
        ("upstreams", f"cannot resolve 'bogus.invalid' ({why}): give its address"),
        ("upstreams", "expected HOST:PORT, got '127.0.0.1:99999'"),
        ("forward", "expected DOMAIN = \"SERVER[:PORT]\", got 'venue.example'"),
    ]
    with pytest.raises(ValueError) as refused:
        nameserver_settings(section(forward={"venue.example": "router.bogus.invalid"}), {})
    assert str(refused.value) == (
        f"[nameserver] forward: cannot resolve 'router.bogus.invalid' "
        f"({lookup_failure('router.bogus.invalid')}): give its address"
    )


def test_records_and_block_mode_that_cannot_work_are_named() -> None:
    loop = {"loopa.retreat.lan": "cname:loopb.retreat.lan",
            "loopb.retreat.lan": "cname:loopa.retreat.lan"}  # fmt: skip
    assert problems(
        section(
            block_mode="sinkhole",
            records={
                "printer.retreat.lan": "10",
                "a=b.retreat.lan": "10.0.0.1",
                "pad.retreat.lan": 10,
                **loop,
            },
            record_flags=["wiki.retreat.lan=10.0.0.9", "nowhere", "v6.retreat.lan=fe80::1%eth0"],
        )
    ) == [
        ("records", "expected an IP address or cname:TARGET for printer.retreat.lan, got '10'"),
        (
            "records",
            'not a name: \'a=b.retreat.lan\' (expected "NAME" = "ADDRESS" in [nameserver.records])',
        ),
        ("records", "expected an IP address or cname:TARGET for pad.retreat.lan, got 10"),
        ("records", "expected NAME=ADDRESS, got 'nowhere'"),
        # an interface's scope means nothing to the machine that asks
        ("records", "expected an IP address without %eth0 for v6.retreat.lan, got 'fe80::1%eth0'"),
        ("records", "CNAME loop: loopa.retreat.lan -> loopb.retreat.lan -> loopa.retreat.lan"),
        ("block_mode", "expected null or nxdomain, got 'sinkhole'"),
    ]
    for bad, message in (
        (section(block_mode="sinkhole"),
         "[nameserver] block_mode: expected null or nxdomain, got 'sinkhole'"),
        (section(records=loop),
         "[nameserver] records: CNAME loop: loopa.retreat.lan -> loopb.retreat.lan ->"
         " loopa.retreat.lan"),
    ):  # fmt: skip
        with pytest.raises(ValueError) as refused:  # a guest's settings: no check before
            nameserver_settings(bad, {})
        assert str(refused.value) == message


def test_start_up_looks_each_name_up_and_parses_each_record_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`retreatkit nameserver` as main runs it, up to serving: the start-up check and the
    settings share one reading of [nameserver]."""
    monkeypatch.setenv("HOME", str(tmp_path))
    looked_up: collections.Counter[str] = collections.Counter()
    real_lookup = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        if str(host).endswith(".retreat.test"):  # names only this test knows
            looked_up[host] += 1
            return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("192.0.2.53", port))]
        return real_lookup(host, port, *args, **kw)

    parsed: collections.Counter[str] = collections.Counter()
    real_parse, real_table = hosted.parse_record, hosted.table_record

    def parse_record(text: str) -> Record:
        parsed[text] += 1
        return real_parse(text)

    def table_record(pair: tuple[str, Any]) -> Record:
        parsed["=".join(pair)] += 1
        return real_table(pair)

    built: list[Settings] = []
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(hosted, "parse_record", parse_record)
    monkeypatch.setattr(hosted, "table_record", table_record)
    monkeypatch.setattr(Nameserver, "__init__", lambda self, settings: built.append(settings))
    monkeypatch.setattr(loop, "run", lambda start: 0)  # the services are built; none serves
    monkeypatch.setattr(serve, "setup_logging", lambda *args, **kw: None)
    toml = tmp_path / "retreat.toml"
    toml.write_text(
        '[nameserver]\nupstreams = ["dns1.retreat.test", "dns2.retreat.test:5300"]\n'
        '[nameserver.records]\n"wiki.retreat.lan" = "10.0.0.9"\n'
        '[nameserver.forward]\n"corp.example" = "router.retreat.test"\n'
    )
    argv = ["--config", str(toml), "nameserver", "--listen", "127.0.0.1:0", "--admin",
            "127.0.0.1:0", "--record", "pad.retreat.lan=10.0.0.8"]  # fmt: skip
    assert cli.main(argv) == 0
    assert looked_up == {"dns1.retreat.test": 1, "dns2.retreat.test": 1, "router.retreat.test": 1}
    assert parsed == {"wiki.retreat.lan=10.0.0.9": 1, "pad.retreat.lan=10.0.0.8": 1}
    (settings,) = built
    assert settings.upstreams == [("192.0.2.53", 53), ("192.0.2.53", 5300)]
    assert settings.forward == {"corp.example": [("192.0.2.53", 53)]}
    assert [r.name for r in settings.records] == ["wiki.retreat.lan", "pad.retreat.lan"]


def test_a_records_table_gives_a_name_several_values() -> None:
    """A TOML table holds a key once: a list is how one name gets an A and an AAAA."""
    reading = hosted.read(section(records={"wiki.retreat.lan": ["10.0.0.9", "fd00::9"]}))
    assert reading.problems == []
    assert [(r.name, r.rtype, r.value) for r in reading.records] == [
        ("wiki.retreat.lan", "A", "10.0.0.9"),
        ("wiki.retreat.lan", "AAAA", "fd00::9"),
    ]


def test_no_rate_limit_is_no_bound_per_address_on_questions_either() -> None:
    """Behind qemu's user networking (rate_limit 0) every client is one address: 256
    questions in progress would be the whole LAN's."""
    settings = nameserver_settings(section(upstreams=["192.0.2.1"]), {})
    assert Nameserver(settings).resolver.per_client == 256
    settings = nameserver_settings(section(upstreams=["192.0.2.1"], rate_limit=0), {})
    assert Nameserver(settings).resolver.per_client == 0
