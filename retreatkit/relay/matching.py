"""Who pairs with whom, and the relay's limits: a pure machine behind the socket shell."""

from __future__ import annotations

import math
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

# Nameplates under attack: this many failed joins in WINDOW seconds make new nameplates
# 4 digits long, and the second count 6 digits, so a guesser's odds fall a hundredfold each.
ATTACK_WINDOW = 600.0
ATTACKED = 20
BESIEGED = 500
_MAX_BUCKETS = 65_536  # addresses whose failed joins are remembered
# The open files a relay keeps for its own use: stdio, the loop, its listening sockets, its
# log, the admin endpoint with the dashboards' requests and log streams, mDNS (~15 idle).
RESERVED_FILES = 64
PAIR_FILES = 6  # a spliced pair's: its two sockets and two pipes (two ends each)
FULL = "the relay is full; try again later"  # `busy`, to one past a limit on room


class Refusal(Exception):
    """The relay will not do what was asked; the text goes back to the client."""


class NoSender(Refusal):
    """A receiver named a nameplate that no sender holds."""


class Busy(Refusal):
    """No room for anyone (the waiting limit, the pairs limit): a `busy` line, which a
    sender takes as no relay at all, and meets its receiver on the LAN instead."""


@dataclass(frozen=True, slots=True)
class Limits:
    per_ip: int = 64  # open connections from one address
    waiting: int = 1000  # senders waiting, in all
    waiting_per_ip: int = 20  # senders waiting from one address
    handshake_timeout: float = 10.0
    wait_timeout: float = 600.0
    idle_timeout: float = 300.0
    failed_joins: int = 8  # joins an address may fail in a burst ...
    failed_join_wait: float = 15.0  # ... then one more each this many seconds
    # pairs forwarding at once, in all: each holds two sockets, two pipes and (spliced)
    # two threads, so this bounds the threads and files a crowd of addresses can make
    pairs: int = 256


def most_unpaired(open_files: int, pairs: int) -> int:
    """The connections not yet paired (before their request line, or waiting) a relay may
    hold with `open_files` descriptors: what is left once its own and `pairs` spliced
    pairs' are set aside, so a crowd of idle connections cannot take the files a pair
    or the admin endpoint needs. At least a quarter of what is beyond its own: where the
    pairs limit asks for more files than there are, pairs are bounded by them anyway."""
    room = max(0, open_files - RESERVED_FILES)
    return max(1, room // 4, room - pairs * PAIR_FILES)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


@dataclass(slots=True)
class _Hold:
    """A nameplate's waiting senders: one, or several tied by the sender's own key."""

    key: str | None
    queue: list[tuple[object, str]]  # (sender, address), first come first paired


class Matcher:
    """Nameplate -> waiting sender; a nameplate pairs once, then it is burned.

    Every join costs its address a token, refunded once the pair's key exchange succeeded
    (`confirmed`): a join that named no sender, or whose key exchange failed, is a guess
    at someone's nameplate. An address out of tokens is refused before its join touches a
    nameplate, so throttling a guesser never burns a waiting sender's nameplate.
    """

    def __init__(
        self,
        limits: Limits,
        randbelow: Callable[[int], int] = secrets.randbelow,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self._randbelow = randbelow
        self._clock = clock
        self._waiting: dict[str, _Hold] = {}
        self._count = 0  # waiting connections, over every nameplate
        self._waiting_by_ip: Counter[str] = Counter()
        self._by_ip: Counter[str] = Counter()
        self._buckets: dict[str, _Bucket] = {}
        self._failures: deque[tuple[float, str]] = deque(maxlen=BESIEGED)

    # -- connections ----------------------------------------------------------------

    def admit(self, ip: str) -> None:
        if self._by_ip[ip] >= self.limits.per_ip:
            raise Refusal(f"too many connections from {ip}")
        self._by_ip[ip] += 1

    def release(self, ip: str) -> None:
        self._by_ip[ip] -= 1
        if self._by_ip[ip] <= 0:
            del self._by_ip[ip]

    @property
    def open_connections(self) -> int:
        return sum(self._by_ip.values())

    # -- nameplates -------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Waiting sender connections."""
        return self._count

    def span(self) -> int:
        """Nameplates are drawn below this: short while few wait and nobody guesses."""
        waiting = len(self._waiting)
        span = 100 if waiting < 30 else 10_000 if waiting < 3000 else 1_000_000
        failures = self.recent_failures()
        if failures >= BESIEGED:
            return 1_000_000
        if failures >= ATTACKED:
            return max(span, 10_000)
        return span

    def allocate(self, who: object, ip: str, key: str | None = None) -> str:
        """A fresh nameplate for a sender."""
        self._check_room(ip)
        span = self.span()
        for _ in range(64):
            nameplate = str(1 + self._randbelow(span - 1))
            if nameplate not in self._waiting:
                self._hold(nameplate, who, ip, key)
                return nameplate
        raise Refusal("no free nameplate; try again")

    def claim(self, who: object, ip: str, nameplate: str, key: str | None = None) -> str:
        """A sender brought its own passphrase, so its own nameplate; or, with the key
        its first connection gave, another connection waiting on it (`bob send --count`)."""
        self._check_room(ip)
        held = self._waiting.get(nameplate)
        if held is not None and (key is None or held.key != key):
            raise Refusal(f"nameplate {nameplate} is in use; choose another passphrase")
        self._hold(nameplate, who, ip, key)
        return nameplate

    def join(self, nameplate: str, ip: str) -> object:
        """A receiver: pair with the first sender connection waiting on `nameplate`. The
        nameplate is burned with its last waiting connection; a sender that keeps more
        waiting (several receivers) closes them all after a failed key exchange, so the
        passphrase still allows one guess."""
        now = self._clock()
        self._take(ip, now)
        held = self._waiting.get(nameplate)
        if held is None:
            self.failed(ip)
            raise NoSender(f"no sender is waiting on nameplate {nameplate}")
        who, sender_ip = held.queue.pop(0)
        if not held.queue:
            del self._waiting[nameplate]
        self._unhold(sender_ip)
        return who

    def confirmed(self, ip: str) -> None:
        """The pair that `ip` joined got past its key exchange: the join was no guess."""
        bucket = self._buckets.get(ip)
        if bucket is not None:
            bucket.tokens = min(float(self.limits.failed_joins), bucket.tokens + 1)

    def failed(self, ip: str) -> None:
        """A join that named no sender, or whose key exchange failed."""
        self._failures.append((self._clock(), ip))

    def recent_failures(self) -> int:
        horizon = self._clock() - ATTACK_WINDOW
        while self._failures and self._failures[0][0] < horizon:
            self._failures.popleft()
        return len(self._failures)

    def top_guesser(self) -> tuple[str, int] | None:
        """The address with the most recent failed joins, if any."""
        self.recent_failures()
        counts = Counter(ip for _, ip in self._failures)
        return counts.most_common(1)[0] if counts else None

    def waiting_by_ip(self) -> Counter[str]:
        """Waiting sender connections per address."""
        return Counter(self._waiting_by_ip)

    def leave(self, who: object, nameplate: str | None) -> None:
        held = self._waiting.get(nameplate) if nameplate is not None else None
        if held is None:
            return
        for i, (sender, ip) in enumerate(held.queue):
            if sender is who:
                del held.queue[i]
                self._unhold(ip)
                break
        if not held.queue:
            del self._waiting[nameplate]  # type: ignore[arg-type]

    # -- internals ----------------------------------------------------------------------

    def _check_room(self, ip: str) -> None:
        if self._count >= self.limits.waiting:
            raise Busy(FULL)
        if self._waiting_by_ip[ip] >= self.limits.waiting_per_ip:
            raise Refusal(f"too many senders waiting from {ip}")

    def _hold(self, nameplate: str, who: object, ip: str, key: str | None) -> None:
        held = self._waiting.setdefault(nameplate, _Hold(key, []))
        held.queue.append((who, ip))
        self._count += 1
        self._waiting_by_ip[ip] += 1

    def _unhold(self, ip: str) -> None:
        self._count -= 1
        self._waiting_by_ip[ip] -= 1
        if self._waiting_by_ip[ip] <= 0:
            del self._waiting_by_ip[ip]

    def _take(self, ip: str, now: float) -> None:
        """A token bucket per address: `failed_joins` at once, then one per wait."""
        cap, wait = float(self.limits.failed_joins), self.limits.failed_join_wait
        bucket = self._buckets.get(ip)
        if bucket is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._forget(now)
            bucket = self._buckets[ip] = _Bucket(cap, now)
        elif wait > 0:
            bucket.tokens = min(cap, bucket.tokens + (now - bucket.stamp) / wait)
        else:
            bucket.tokens = cap
        bucket.stamp = now
        if bucket.tokens < 1:
            seconds = math.ceil((1 - bucket.tokens) * wait)
            raise Refusal(f"too many failed joins from {ip}; try again in {seconds} s")
        bucket.tokens -= 1

    def _forget(self, now: float) -> None:
        """Drop the buckets that have refilled (they hold nothing a fresh one would not);
        if none has, the oldest half: memory stays bounded whatever the flood."""
        cap, wait = float(self.limits.failed_joins), self.limits.failed_join_wait
        full = [
            ip
            for ip, b in self._buckets.items()
            if wait <= 0 or b.tokens + (now - b.stamp) / wait >= cap
        ]
        if not full:
            oldest = sorted(self._buckets, key=lambda ip: self._buckets[ip].stamp)
            full = oldest[: len(oldest) // 2]
        for ip in full:
            del self._buckets[ip]
