from __future__ import annotations

import pytest

from retreatkit.relay import wire
from retreatkit.relay.matching import Limits, Matcher, NoSender, Refusal, most_unpaired

IP = "10.0.0.1"


def counter() -> Matcher:
    values = iter(range(1000))
    return Matcher(Limits(per_ip=2, waiting=3), randbelow=lambda n: next(values) % n)


def test_allocate_join_burns_the_nameplate() -> None:
    m = counter()
    a, b = object(), object()
    plate = m.allocate(a, IP)
    assert plate == "1" and m.waiting == 1
    assert m.join(plate, IP) is a
    with pytest.raises(Refusal, match="no sender is waiting on nameplate 1"):
        m.join(plate, IP)
    assert m.allocate(b, IP) == "2"


def test_claim_in_use_and_room() -> None:
    m = counter()
    m.claim(object(), IP, "7")
    with pytest.raises(Refusal, match="nameplate 7 is in use; choose another passphrase"):
        m.claim(object(), IP, "7")
    m.allocate(object(), IP)
    m.allocate(object(), IP)
    with pytest.raises(Refusal, match="the relay is full; try again later"):
        m.allocate(object(), IP)


def test_leave_only_frees_own_nameplate() -> None:
    m = counter()
    a = object()
    m.claim(a, IP, "5")
    m.leave(object(), "5")
    assert m.waiting == 1
    m.leave(a, "5")
    assert m.waiting == 0


def test_per_ip_limit() -> None:
    m = counter()
    m.admit("10.0.0.1")
    m.admit("10.0.0.1")
    with pytest.raises(Refusal, match=r"too many connections from 10\.0\.0\.1"):
        m.admit("10.0.0.1")
    m.admit("10.0.0.2")
    m.release("10.0.0.1")
    m.admit("10.0.0.1")
    assert m.open_connections == 3


@pytest.mark.parametrize(
    ("line", "role", "plate"),
    [
        (b"bob/1 send\n", "send", None),
        (b"bob/1 send 12\n", "send", "12"),
        (b"bob/1 recv 3", "recv", "3"),
        (b"bob/1 recv 0", "recv", "0"),
        (b"bob/1 send 100000", "send", "100000"),
    ],
)
def test_parse_request(line: bytes, role: str, plate: str | None) -> None:
    request = wire.parse_request(line)
    assert (request.role.value, request.nameplate) == (role, plate)
    assert wire.parse_request(request.encode()) == request


@pytest.mark.parametrize(
    "line",
    [
        *(b"bob/1 recv\n", b"bob/2 send\n", b"bob/1 send abc\n", b"\xff\n"),
        *(b"bob/1 send 1234567\n", b"bob/1 send 0555\n", b"bob/1 recv 00\n"),
        b"bob/1 send 5" + b"\r" * 116 + b"\n",  # 129 bytes as received
    ],
)
def test_parse_request_rejects(line: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.parse_request(line)


def test_reply_is_one_bounded_line() -> None:
    line = wire.reply("error", "x\ny" * 100)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and len(line) <= wire.MAX_LINE


def test_a_sender_s_key_queues_more_connections_on_its_nameplate() -> None:
    """`bob send --count N` keeps several connections waiting on one nameplate, tied by a
    key only that sender knows; anyone else claiming the nameplate is refused."""
    m = Matcher(Limits(), randbelow=lambda n: 41)
    first, second, third = object(), object(), object()
    plate = m.allocate(first, "10.0.0.1", key="k" * 32)
    assert m.claim(second, "10.0.0.1", plate, key="k" * 32) == plate
    for squatter_key in (None, "e" * 32):  # a neighbour without the key, or with another
        with pytest.raises(Refusal, match=f"nameplate {plate} is in use"):
            m.claim(object(), "10.0.0.66", plate, key=squatter_key)
    m.claim(third, "10.0.0.1", plate, key="k" * 32)
    assert m.waiting == 3
    assert [m.join(plate, "10.0.0.2") for _ in range(2)] == [first, second]
    m.leave(third, plate)  # the sender closes the rest (a failed key exchange, say)
    assert m.waiting == 0
    with pytest.raises(NoSender):
        m.join(plate, "10.0.0.2")


def test_an_unkeyed_nameplate_still_pairs_once() -> None:
    m = Matcher(Limits(), randbelow=lambda n: 41)
    plate = m.allocate(object(), "10.0.0.1")
    with pytest.raises(Refusal, match="in use"):
        m.claim(object(), "10.0.0.1", plate, key="k" * 32)  # no key to match: in use
    m.join(plate, "10.0.0.2")
    with pytest.raises(NoSender):
        m.join(plate, "10.0.0.2")


def test_connections_not_yet_paired_leave_the_pairs_and_the_relay_their_files() -> None:
    assert most_unpaired(524_288, 256) == 524_288 - 64 - 256 * 6
    assert most_unpaired(4096, 256) == 4096 - 64 - 256 * 6
    # the pairs limit asks for more than there is: a quarter beyond the relay's own
    assert most_unpaired(1024, 256) == (1024 - 64) // 4
    assert most_unpaired(200, 256) == 34
    assert most_unpaired(64, 256) == most_unpaired(10, 256) == 1
