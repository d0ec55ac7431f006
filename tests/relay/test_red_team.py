"""The red-team findings against the relay (issue 7, items 3 and 11), in process on a
clock the test turns. The real-process halves are in tests/e2e/test_red_team_cli.py."""

from __future__ import annotations

import itertools

import pytest

from retreatkit import config
from retreatkit.relay import status
from retreatkit.relay.hosted import relay_limits
from retreatkit.relay.lifecycle import HANDSHAKE_BYTES, Ending, RelayCore
from retreatkit.relay.matching import ATTACK_WINDOW, Limits, Matcher, NoSender, Refusal

SNIPER, VICTIM = "10.0.0.66", "10.0.0.7"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def matcher(clock: Clock, **limits: float) -> Matcher:
    plates = itertools.count(0)
    return Matcher(Limits(**limits), randbelow=lambda n: next(plates) % n, clock=clock)  # type: ignore[arg-type]


# -- 3. nameplate sniping ---------------------------------------------------------------------


def test_03_a_guesser_is_throttled_before_it_burns_a_nameplate() -> None:
    clock = Clock()
    m = matcher(clock)
    sender = object()
    plate = m.allocate(sender, VICTIM)
    guesses = [p for p in map(str, range(50, 99)) if p != plate]
    for guess in guesses[:8]:  # the burst a typo-prone user might need
        with pytest.raises(NoSender):
            m.join(guess, SNIPER)
    with pytest.raises(Refusal, match=rf"too many failed joins from {SNIPER}; try again in 15 s"):
        m.join(plate, SNIPER)  # throttled before the lookup: the nameplate is not burned
    assert m.join(plate, "10.0.0.8") is sender  # someone else still pairs with it
    clock.now += 15
    with pytest.raises(NoSender):
        m.join(guesses[8], SNIPER)  # one more guess each 15 s, no more
    with pytest.raises(Refusal, match="try again in 15 s"):
        m.join(guesses[9], SNIPER)


def test_03_one_guess_per_transfer_holds() -> None:
    m = matcher(Clock())
    plate = m.allocate(object(), VICTIM)
    m.join(plate, SNIPER)  # a wrong guess still pairs, and burns the nameplate
    with pytest.raises(NoSender):
        m.join(plate, VICTIM)


def test_03_a_failed_key_exchange_costs_the_joiner_and_a_good_one_does_not() -> None:
    clock = Clock()
    core = RelayCore(Limits(failed_joins=2), clock=clock)
    for ip, good in ((VICTIM, True), (SNIPER, False)):
        for _ in range(4):
            sender, _ = core.connect("10.0.0.1", "10.0.0.1:1", None)
            nameplate = core.received(sender, b"bob/1 send\n")[0].data.split()[1].decode()  # type: ignore[union-attr]
            receiver, _ = core.connect(ip, f"{ip}:2", None)
            actions = core.received(receiver, f"bob/1 recv {nameplate}\n".encode())
            if receiver.ending is Ending.REFUSED:
                assert ip == SNIPER  # the third try: two guesses spent
                break
            core.forwarded(sender, HANDSHAKE_BYTES + int(good))
            core.lost(receiver)
            assert actions
        else:
            assert good  # an honest receiver is never throttled
    assert core.handshakes_failed == 2 and core.transfers_completed == 4


def test_03_nameplates_widen_under_attack_and_shrink_after() -> None:
    clock = Clock()
    m = matcher(clock, failed_joins=10_000)
    assert m.span() == 100
    for i in range(20):
        with pytest.raises(NoSender):
            m.join(str(500_000 + i), SNIPER)
    assert m.span() == 10_000
    assert len(m.allocate(object(), VICTIM)) == 1  # the counter-based draw: 1 + 0
    for i in range(480):
        with pytest.raises(NoSender):
            m.join(str(600_000 + i), f"10.1.{i // 250}.{i % 250}")
    assert m.span() == 1_000_000
    clock.now += ATTACK_WINDOW + 1
    assert m.span() == 100


def test_03_the_organiser_is_warned_of_a_guesser() -> None:
    clock = Clock()
    core = RelayCore(Limits(failed_joins=100), clock=clock)
    for i in range(20):
        conn, _ = core.connect(SNIPER if i % 4 else VICTIM, "x:1", None)
        core.received(conn, b"bob/1 recv %d\n" % (100 + i))
    assert status.section(core)["warnings"] == [
        "20 failed joins in the last 10 minutes, 15 from 10.0.0.66: someone may be guessing"
        " nameplates; new nameplates are longer for now"
    ]
    clock.now += ATTACK_WINDOW + 1
    assert status.section(core)["warnings"] == []


def test_03_remembered_addresses_are_bounded() -> None:
    m = matcher(Clock())
    for i in range(70_000):
        with pytest.raises(NoSender):
            m.join("1", f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}")
    assert len(m._buckets) <= 65_536


# -- 11. the relay held full for an hour; the open-file limit ------------------------------------


def test_11_waiting_senders_are_capped_per_address() -> None:
    m = matcher(Clock(), waiting=1000, waiting_per_ip=20)
    for _ in range(20):
        m.allocate(object(), "10.0.0.17")
    with pytest.raises(Refusal, match=r"too many senders waiting from 10\.0\.0\.17"):
        m.allocate(object(), "10.0.0.17")
    with pytest.raises(Refusal, match="too many senders waiting"):
        m.claim(object(), "10.0.0.17", "4242")
    m.allocate(object(), "10.0.0.18")


def test_11_waiting_times_out_in_minutes_not_an_hour() -> None:
    assert config.DEFAULTS["relay"]["wait_timeout"] == 600.0
    limits = relay_limits(config.DEFAULTS["relay"])
    assert limits == Limits()
    assert limits.wait_timeout == 600.0 and limits.waiting_per_ip == 20
