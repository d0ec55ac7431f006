"""A guest sees every client at 10.0.2.2 (qemu's user networking), so its bounds "per
client" are bounds for the whole LAN. The configuration a guest is given must let a LAN's
worth of attendees through, built the way the guest builds its services from it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from retreatkit import config
from retreatkit.image import guestconfig, network
from retreatkit.image import spec as specs
from retreatkit.image.vmservice import exposure_warning, guests_for_up
from retreatkit.mirror import hosted, memshare
from retreatkit.mirror.hosted import MirrorService
from retreatkit.mirror.server import Gate
from retreatkit.mirror.service import Settings
from retreatkit.mirror.stats import Stats
from retreatkit.relay.hosted import relay_limits
from retreatkit.relay.matching import Matcher, NoSender, Refusal

LAN = specs.HOST_FROM_GUEST  # every attendee, as a guest sees them


def guest_section(service: str, keeps_clients: bool = False, **mine: object) -> dict[str, object]:
    cfg = copy.deepcopy(config.DEFAULTS)
    cfg[service].update(mine)
    doc = guestconfig.render(service, cfg, "t", disk=False, keeps_clients=keeps_clients)
    section: dict[str, object] = doc.config[service]
    return section


def test_a_relay_guest_carries_a_lans_transfers_and_typos() -> None:
    clock = [0.0]
    matcher = Matcher(relay_limits(guest_section("relay")), clock=lambda: clock[0])
    for _ in range(200):  # 100 transfers at once: each a sender and a receiver connection
        matcher.admit(LAN)
    for n in range(60):  # senders waiting for their receivers
        matcher.claim(object(), LAN, str(1000 + n))
    for n in range(30):  # attendees mistyping nameplates, at once
        with pytest.raises(NoSender):
            matcher.join(str(n + 1), LAN)
    assert matcher.join("1000", LAN) is not None  # the next attendee still gets through


def test_a_relay_guest_still_bounds_guessing_and_connections() -> None:
    clock = [0.0]
    matcher = Matcher(relay_limits(guest_section("relay")), clock=lambda: clock[0])
    refused = 0
    for n in range(100):  # a guesser: 64 at once, then one a second
        try:
            matcher.join(str(n + 1), LAN)
        except NoSender:
            pass
        except Refusal as exc:
            assert str(exc) == f"too many failed joins from {LAN}; try again in 1 s"
            refused += 1
    assert refused == 100 - 64
    clock[0] += 5.0
    for n in range(5):
        with pytest.raises(NoSender):
            matcher.join(str(n + 1), LAN)
    with pytest.raises(Refusal):
        matcher.join("1", LAN)
    for _ in range(256):
        matcher.admit(LAN)
    with pytest.raises(Refusal, match=f"^too many connections from {LAN}$"):
        matcher.admit(LAN)


def test_an_organisers_larger_relay_bounds_are_kept_in_a_guest() -> None:
    section = guest_section("relay", per_ip=1000, failed_joins=500, failed_join_wait=0.5)
    assert (section["per_ip"], section["failed_joins"], section["failed_join_wait"]) == (
        1000,
        500,
        0.5,
    )


def test_a_mirror_guest_lets_a_lans_installers_connect_at_once() -> None:
    section = guest_section("mirror")
    section["store"] = "/nonexistent"  # never opened: only the settings are built
    settings = MirrorService.from_config(section, announce=False).settings
    gate = Gate(settings.server.per_address, 4000, Stats())
    assert all(gate.admit(LAN) for _ in range(10 * 50))  # ten attendees' uv at once


def test_a_mirror_guests_memory_bounds_fit_its_memory(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A guest of 128 MB (the default) kept up to 128 MB of small files and 64 MB of pages:
    a room's npm installs (thousands of tarballs under 1 MB, each kept) would fill its
    memory, and a guest out of memory panics."""
    caplog.set_level("INFO", "retreatkit.mirror")
    section = guest_section("mirror")
    section["store"] = "/nonexistent"
    pages = {"SC_PHYS_PAGES": 128 * 256, "SC_PAGE_SIZE": 4096}  # 128 MiB, as the guest sees it
    monkeypatch.setattr(hosted.os, "sysconf", pages.__getitem__)
    settings = MirrorService.from_config(section, announce=False).settings
    memory = 128 * 1024 * 1024
    assert (settings.hot_bytes, settings.page_bytes) == (memory // 16, memory // 32)
    assert (settings.max_pages_sending, settings.max_pages_reading) == (memory // 16,) * 2
    # the four together: under a quarter of the guest's memory
    assert settings.hot_bytes + settings.page_bytes + 2 * settings.max_pages_sending < memory / 4
    assert caplog.messages == [
        "mirror: memory bounds fitted to this machine's 134 MB: hot_bytes 134 -> 8.4 MB,"
        " page_bytes 67 -> 4.2 MB, max_pages_sending 268 -> 8.4 MB,"
        " max_pages_reading 67 -> 8.4 MB"
    ]


def test_a_mirror_with_memory_to_spare_keeps_its_bounds() -> None:
    defaults = Settings(store=Path("/nonexistent"), pypi=None, opam=None)
    bounds = {name: getattr(defaults, name) for name in memshare.SHARES}
    assert memshare.fitted(bounds, 24 * 1024**3) == (bounds, [])  # this kind of machine
    bigger = {**bounds, "max_pages_sending": 2 * 1024**3}  # an organiser's choice
    fitted, lowered = memshare.fitted(bigger, 24 * 1024**3)
    assert fitted == {**bounds, "max_pages_sending": 24 * 1024**3 // 16}
    assert lowered == ["max_pages_sending 2147 -> 1610.6 MB"]


@pytest.mark.parametrize(
    ("listen", "warned"),
    [("0.0.0.0:5300", True), ("8.8.4.4:53", True),
     ("192.168.1.10:53", False), ("127.0.0.1:5300", False)],  # a name: refused (test_plans)
)  # fmt: skip
def test_up_warns_when_a_nameserver_guest_answers_the_world(
    listen: str, warned: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(network.shutil, "which", lambda _: None)  # passt not installed
    cfg = copy.deepcopy(config.DEFAULTS)
    cfg["images"]["run"] = ["nameserver"]
    cfg["nameserver"]["listen"] = listen
    guest = guests_for_up(cfg, None, "192.168.1.10").autostart[0]
    host, port = config.host_port(listen)
    expected = (
        f"Guest nameserver: forwarded from {host}:{port}, it answers anyone who reaches this "
        "host (a guest cannot tell the LAN from the internet); set [nameserver] listen to a "
        "LAN address of this host, or install passt"
    )
    assert exposure_warning(guest, "user") == (expected if warned else None)
    assert exposure_warning(guest, "passt") is None  # passt keeps the world's addresses


def test_behind_passt_a_guest_keeps_its_bounds_per_client() -> None:
    # passt shows the guest each client's own address: the bounds are per attendee again
    defaults = config.DEFAULTS
    relay = guest_section("relay", keeps_clients=True)
    assert {k: relay[k] for k in guestconfig.GUEST_RELAY} == {
        k: defaults["relay"][k] for k in guestconfig.GUEST_RELAY
    }
    assert guest_section("mirror", keeps_clients=True)["per_address"] == 256
    assert guest_section("nameserver", keeps_clients=True)["rate_limit"] == 1000
    assert guest_section("nameserver")["rate_limit"] == 0


def test_up_refuses_a_mirror_disk_it_cannot_make_before_any_guest_boots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mke2fs's own words came only as the mirror's guest started, five times over,
    after the relay's and the nameserver's guests had booted; `up` ran on regardless."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    cfg = copy.deepcopy(config.DEFAULTS)
    cfg["images"]["run"] = ["relay", "mirror"]

    def refused(disk: str, size: str) -> str:
        cfg["images"].update(disk=disk, disk_size=size)
        with pytest.raises(config.ConfigError) as got:
            guests_for_up(cfg, None, "192.168.1.10")
        return str(got.value)

    gone = tmp_path / "nonexistent" / "m.disk"
    assert refused(str(gone), "4G") == (
        f"[images] the disk {gone} cannot be made: {gone.parent} is not a folder"
    )
    for size in ("lots", "4", "0G", "16M", "-1G", "4 G"):
        assert refused("", size) == (
            f"[images] disk_size = {size!r} is not a size from 64M up (a number and K, M, G or T)"
        )
    not_ext4 = tmp_path / "notes.txt"
    not_ext4.write_bytes(bytes(4096))
    # a disk_size that is no size is refused whether or not the disk is made already
    # (every [images] key is checked); a good one is not what refuses a disk made already
    assert refused(str(not_ext4), "4G") == (
        f"[images] the disk {not_ext4} holds no ext4 file system: name a file that does not"
        " exist yet, and one is made there"
    )
    cfg["images"].update(disk="", disk_size="64m")  # the default place, made if missing
    [mirror] = [d for d in guests_for_up(cfg, None, "192.168.1.10").autostart if d.disk]
    assert mirror.disk == str(tmp_path / "data" / "retreatkit" / "mirror.disk")
    assert (tmp_path / "data" / "retreatkit").is_dir()


def test_up_refuses_a_kernel_it_does_not_know_before_any_guest_is_built() -> None:
    """It was refused only once `up` had started, building the first image."""
    cfg = copy.deepcopy(config.DEFAULTS)
    cfg["images"].update(run=["relay"], kernel="foo")
    with pytest.raises(config.ConfigError) as got:
        guests_for_up(cfg, None, "192.168.1.10")
    assert str(got.value) == "[images] kernel must be one of auto, own, debian, not 'foo'"
