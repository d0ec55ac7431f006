from __future__ import annotations

from pathlib import Path

import pytest

from retreatkit import config
from retreatkit.nameserver.hosted import forward_rules


def test_defaults_without_a_file() -> None:
    cfg = config.load(None)
    assert cfg["relay"]["listen"] == "0.0.0.0:9000"
    assert cfg["admin"]["listen"] == "127.0.0.1:8080"


def test_file_overrides(tmp_path: Path) -> None:
    path = tmp_path / "retreat.toml"
    path.write_text("[relay]\nper_ip = 3\nidle_timeout = 5\n")
    cfg = config.load(path)
    assert cfg["relay"]["per_ip"] == 3
    assert cfg["relay"]["idle_timeout"] == 5
    assert config.DEFAULTS["relay"]["per_ip"] == 64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[nope]\n", "unknown section [nope]"),
        ("[relay]\nbogus = 1\n", "unknown key 'bogus' in [relay]"),
        (
            "[relay]\nper_ip = 'many'\n",
            '[relay] per_ip should be a whole number, like 64; got "many"',
        ),
        (
            "[mirror]\nmax_size_bytes = '2G'\n",
            '[mirror] max_size_bytes should be a whole number, like 0; got "2G"',
        ),
        (
            "[mirror]\nindex_ttl = true\n",
            "[mirror] index_ttl should be a number, like 600.0; got true",
        ),
        (
            "[nameserver]\nupstreams = '10.0.0.1'\n",
            '[nameserver] upstreams should be a list; got "10.0.0.1"',
        ),
        (
            "[admin]\nlisten = 8080\n",
            '[admin] listen should be a string, like "127.0.0.1:8080"; got 8080',
        ),
        ("[mirror]\nstore = ['/srv']\n", "[mirror] store should be a string; got a list"),
        ("[relay\n", "is not valid TOML"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "retreat.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config.load(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9000", ("127.0.0.1", 9000)),
        ("[::1]:53", ("::1", 53)),
        ("relay.lan", ("relay.lan", 9000)),
    ],
)
def test_host_port(text: str, expected: tuple[str, int]) -> None:
    assert config.host_port(text, default_port=9000) == expected


@pytest.mark.parametrize("text", ["nohost", ":80", "h:99999", "h:x"])
def test_host_port_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        config.host_port(text)


def test_forward_rules_and_dns_servers() -> None:
    rules = forward_rules(
        {"venue.example": "192.168.1.1", "Lab.Example.": ["fd00::53", "[fd00::54]:5353"]},
        ["168.192.in-addr.arpa=192.168.1.1:5353"],
    )
    assert rules == {
        "venue.example": [("192.168.1.1", 53)],
        "lab.example": [("fd00::53", 53), ("fd00::54", 5353)],
        "168.192.in-addr.arpa": [("192.168.1.1", 5353)],
    }
    with pytest.raises(ValueError, match=r"expected --forward DOMAIN=SERVER, got 'venue\.example'"):
        forward_rules({}, ["venue.example"])
