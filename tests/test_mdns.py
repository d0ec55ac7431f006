"""A service listening on every address follows the machine's addresses on the LAN: the
decision without I/O, then `LanAdvert` with its looks, clock and zeroconf stood in for."""

from __future__ import annotations

import asyncio
import errno
import logging

import pytest

from retreatkit import mdns
from retreatkit.mdns import RELAY, Following, LanAdvert


def test_the_first_look_gives_the_addresses_to_announce_and_the_same_set_nothing() -> None:
    following = Following()
    assert following.look(["127.0.0.1", "fd00::2", "10.1.0.2", "nonsense", "10.1.0.2"]) == (
        "10.1.0.2",
    )
    assert following.look(["10.1.0.2", "127.0.0.1"]) is None


def test_another_set_is_announced_in_the_order_held_and_another_order_is_no_change() -> None:
    following = Following()
    following.look(["10.1.0.2"])
    assert following.look(["10.2.0.5", "10.1.0.2"]) == ("10.2.0.5", "10.1.0.2")
    assert following.look(["10.1.0.2", "10.2.0.5"]) is None
    assert following.look(["10.1.0.9"]) == ("10.1.0.9",)  # a new lease


def test_loopback_alone_is_nothing_to_announce_from_the_first_look_or_later() -> None:
    following = Following()
    assert following.look(["127.0.0.1"]) == ()
    assert following.look([]) is None
    assert following.look(["10.1.0.2"]) == ("10.1.0.2",)
    assert following.look(["127.0.0.1"]) == ()


class Fake:
    """A machine's addresses, its clock and zeroconf, for one `LanAdvert`: each pause waits
    for the test's next `step`, which returns once the advert has looked again."""

    def __init__(self) -> None:
        self.held: list[str] = ["127.0.0.1"]
        self.said: list[str] = []  # announcements and goodbyes, in order
        self.failing: OSError | None = None
        self.hold = asyncio.Event()  # cleared: probing lasts until it is set
        self.hold.set()
        self.probing = asyncio.Event()
        self._go: asyncio.Queue[None] = asyncio.Queue()
        self._looked: asyncio.Queue[None] = asyncio.Queue()

    def look(self) -> list[str]:
        return self.held

    async def pause(self) -> None:
        self._looked.put_nowait(None)
        await self._go.get()

    async def looked(self) -> None:
        await self._looked.get()

    async def step(self, *held: str) -> None:
        self.held = list(held)
        self._go.put_nowait(None)
        await self.looked()

    async def announce(
        self, service: str, instance: str, addresses: list[str], port: int, _: dict[str, str]
    ) -> Fake.Announced:
        self.probing.set()
        await self.hold.wait()
        if self.failing is not None:
            raise self.failing
        self.said.append(f"announce {instance!r} {service} {','.join(addresses)}:{port}")
        return Fake.Announced(self, addresses)

    class Announced:
        def __init__(self, fake: Fake, addresses: list[str]) -> None:
            self.fake, self.addresses = fake, addresses

        async def close(self) -> None:
            self.fake.said.append(f"goodbye {','.join(self.addresses)}")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Fake:
    monkeypatch.setattr(mdns, "host_label", lambda: "laptop")
    caplog.set_level(logging.INFO, logger="retreatkit.mdns")
    return Fake()


def advert_of(fake: Fake) -> LanAdvert:
    return LanAdvert(
        RELAY, "bob relay", {"kind": "relay"},
        look=fake.look, pause=fake.pause, announce=fake.announce,
    )  # fmt: skip


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.levelname} {r.getMessage()}" for r in caplog.records]


async def test_a_wildcard_listener_is_announced_when_an_address_comes_and_again_at_each_change(
    fake: Fake, caplog: pytest.LogCaptureFixture
) -> None:
    advert = advert_of(fake)
    advert.start("0.0.0.0", 9000)
    await fake.looked()
    assert fake.said == []  # loopback only: nobody else could reach it
    await fake.step("127.0.0.1", "10.1.0.2")  # plugged into the switch
    await fake.step("10.1.0.2", "127.0.0.1")
    await fake.step("10.1.0.2", "10.2.0.5")  # the Wi-Fi joins too
    await fake.step("10.2.0.5")  # the cable is pulled
    await fake.step()
    await fake.step("10.1.0.7")  # plugged in again, a new lease
    await advert.stop()
    name = "'bob relay on laptop port 9000' _retreat-relay._tcp.local."
    assert fake.said == [
        f"announce {name} 10.1.0.2:9000",
        "goodbye 10.1.0.2",
        f"announce {name} 10.1.0.2,10.2.0.5:9000",
        "goodbye 10.1.0.2,10.2.0.5",
        f"announce {name} 10.2.0.5:9000",
        "goodbye 10.2.0.5",
        f"announce {name} 10.1.0.7:9000",
        "goodbye 10.1.0.7",
    ]
    assert logged(caplog) == [
        "INFO bob relay announced on the LAN as bob relay on laptop port 9000",
        "INFO bob relay announced on the LAN again: 10.1.0.2, 10.2.0.5",
        "INFO bob relay announced on the LAN again: 10.2.0.5",
        "INFO bob relay no longer announced on the LAN: no address but loopback",
        "INFO bob relay announced on the LAN again: 10.1.0.7",
    ]


async def test_a_failed_announcement_is_logged_once_and_tried_again_at_the_next_change(
    fake: Fake, caplog: pytest.LogCaptureFixture
) -> None:
    fake.held = ["10.1.0.2"]
    fake.failing = OSError(19, "No such device")
    advert = advert_of(fake)
    advert.start("0.0.0.0", 9000)
    await fake.looked()
    await fake.step("10.1.0.2")
    await fake.step("10.1.0.2")
    fake.failing = None
    await fake.step("10.1.0.2", "10.2.0.5")
    await advert.stop()
    name = "'bob relay on laptop port 9000' _retreat-relay._tcp.local."
    assert fake.said == [f"announce {name} 10.1.0.2,10.2.0.5:9000", "goodbye 10.1.0.2,10.2.0.5"]
    assert logged(caplog) == [
        "WARNING cannot announce bob relay on the LAN: [Errno 19] No such device",
        "INFO bob relay announced on the LAN as bob relay on laptop port 9000",
    ]


async def test_stopped_while_probing_it_leaves_nothing_announced_or_running(fake: Fake) -> None:
    fake.held = ["10.1.0.2"]
    fake.hold.clear()
    advert = advert_of(fake)
    advert.start("0.0.0.0", 9000)
    await fake.probing.wait()
    await advert.stop()
    assert advert._task is not None and advert._task.done()
    assert advert._advert is None
    assert fake.said == []


async def test_a_listener_on_one_address_is_announced_there_once_and_never_looks(
    fake: Fake, caplog: pytest.LogCaptureFixture
) -> None:
    def look() -> list[str]:
        raise AssertionError("a listener on one address looked at the machine's addresses")

    advert = LanAdvert(RELAY, "bob relay", {}, look=look, pause=fake.pause, announce=fake.announce)
    advert.start("10.1.0.2", 9000)
    assert advert._task is not None
    await advert._task
    await advert.stop()
    assert fake.said == [
        "announce 'bob relay on laptop port 9000' _retreat-relay._tcp.local. 10.1.0.2:9000",
        "goodbye 10.1.0.2",
    ]
    assert logged(caplog) == [
        "INFO bob relay announced on the LAN as bob relay on laptop port 9000"
    ]


async def test_a_listener_on_loopback_is_never_announced(fake: Fake) -> None:
    advert = advert_of(fake)
    advert.start("127.0.0.1", 9000)
    await advert.stop()
    assert advert._task is None and fake.said == []


@pytest.mark.parametrize("gone", [errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.ENODEV])
def test_a_send_through_a_link_gone_is_no_warning_at_any_time_and_other_failures_are(
    caplog: pytest.LogCaptureFixture, gone: int
) -> None:
    """An announcement is still repeated, or an answer still delayed, when the link goes:
    zeroconf's send fails then, outside any goodbye. Nobody is left there to hear it."""
    said = logging.getLogger("zeroconf")
    with caplog.at_level(logging.WARNING, logger="zeroconf"):
        said.warning("Error with socket 8: %s", "x", exc_info=OSError(gone, "gone"))
        assert caplog.records == []
        said.warning("Error with socket 8: %s", "x", exc_info=OSError(errno.EACCES, "no"))
        assert [r.levelname for r in caplog.records] == ["WARNING"]


class Cached:
    """What `mdns.heard` reads of a Zeroconf: its cache, filled here as answers fill it."""

    def __init__(self) -> None:
        from zeroconf import DNSCache

        self.cache = DNSCache()

    def srv(self, name: str, port: int, host: str) -> None:
        from zeroconf import DNSService

        self.cache.async_add_records([DNSService(name, 33, 1, 120, 0, 0, port, host)])

    def txt(self, name: str, *pairs: bytes) -> None:
        from zeroconf import DNSText

        text = b"".join(bytes([len(pair)]) + pair for pair in pairs)
        self.cache.async_add_records([DNSText(name, 16, 1, 120, text)])

    def a(self, host: str, *addresses: str) -> None:
        import socket

        from zeroconf import DNSAddress

        self.cache.async_add_records(
            [DNSAddress(host, 1, 1, 120, socket.inet_aton(a)) for a in addresses]
        )


NAME = f"bob sender 42.{RELAY}"


def test_a_name_answered_for_by_two_machines_is_heard_at_both() -> None:
    """A neighbour copies a sender's name and answers first: its records and the sender's
    are two places for one name (a browse that took the first alone never met the
    sender), each with the TXT records the name was given."""
    zc = Cached()
    zc.txt(NAME, b"kind=sender", b"nameplate=42")
    zc.srv(NAME, 7000, "neighbour.local.")
    zc.a("neighbour.local.", "10.78.0.3")
    assert mdns.heard(zc, NAME) == [  # type: ignore[arg-type]
        mdns.Found(NAME, ("10.78.0.3",), 7000, {"kind": "sender", "nameplate": "42"})
    ]
    zc.srv(NAME, 40000, "laptop-1a2b3c4d.local.")
    zc.a("laptop-1a2b3c4d.local.", "10.78.0.1", "172.17.0.1")
    assert [(f.addresses, f.port) for f in mdns.heard(zc, NAME)] == [  # type: ignore[arg-type]
        (("10.78.0.3",), 7000),
        (("10.78.0.1", "172.17.0.1"), 40000),
    ]


def test_what_a_name_is_heard_at_is_bounded() -> None:
    """However many SRV, TXT and address records a neighbour gives one name, a browse
    takes at most MAX_RECORDS of each kind (the first heard) and MAX_ADDRESSES of a host;
    no TXT record, no address or port 0 is no place at all."""
    zc = Cached()
    assert mdns.heard(zc, NAME) == []  # type: ignore[arg-type]
    zc.srv(NAME, 0, "h.local.")
    zc.a("h.local.", "10.0.0.1")
    assert mdns.heard(zc, NAME) == []  # type: ignore[arg-type]  # no TXT, and port 0
    zc.txt(NAME, b"kind=sender")
    assert mdns.heard(zc, NAME) == []  # type: ignore[arg-type]  # port 0
    zc.srv(NAME, 7000, "nowhere.local.")
    assert mdns.heard(zc, NAME) == []  # type: ignore[arg-type]  # no address
    for n in range(30):
        zc.txt(NAME, b"kind=sender", f"nameplate={n}".encode())
        zc.srv(NAME, 7001 + n, f"h{n}.local.")
        zc.a(f"h{n}.local.", *(f"10.0.{n}.{m}" for m in range(1, 40)))
    found = mdns.heard(zc, NAME)  # type: ignore[arg-type]
    # the first 8 SRV records heard: port 0 and nowhere's among them
    assert {f.port for f in found} == set(range(7001, 7001 + mdns.MAX_RECORDS - 2))
    assert len(found) == (mdns.MAX_RECORDS - 2) * mdns.MAX_RECORDS
    assert max(len(f.addresses) for f in found) == mdns.MAX_ADDRESSES


def test_txt_properties_take_the_first_of_a_key_and_escape_nothing_away() -> None:
    text = b"".join(bytes([len(p)]) + p for p in (b"kind=sender", b"kind=relay", b"flag", b"=x"))
    text += bytes([3]) + b"n=\xff"
    assert mdns.txt_properties(text) == {"kind": "sender", "flag": "", "n": "\ufffd"}
    assert mdns.txt_properties(bytes([200]) + b"k=v") == {"k": "v"}  # cut short: what is there
