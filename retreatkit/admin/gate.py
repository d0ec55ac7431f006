"""Who may hold a connection to the admin endpoint: a few per address, a bound in all.

aiohttp keeps a connection that never sends a request for its keep-alive timeout (3630 s
in aiohttp 3.14), and the token is only asked for once a request arrives: one attendee
held 8,000 silent connections to an endpoint bound beyond loopback, 8,000 of the
process's open files, until it had none left for the relay, the mirror or the nameserver
it hosts. Now each address holds PER_ADDRESS, the LAN holds
REMOTE in all, and an idle one is closed after IDLE_TIMEOUT seconds. Loopback is held
to neither (the host's own users, and `retreatkit tui --web` starts a dashboard per
browser), so a crowd on the LAN never locks out a dashboard on the host itself.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from retreatkit.lanaddress import is_loopback
from retreatkit.lognews import News
from retreatkit.peers import limited_as

PER_ADDRESS = 16  # a dashboard uses a few: its polls, its lists, its log stream
REMOTE = 48  # in all from beyond loopback: within the 64 files a relay sets aside
IDLE_TIMEOUT = 30.0  # seconds without a request; aiohttp's client drops its own at 15
LOGGED_AGAIN = 60.0  # seconds between two log lines about refused connections

log = logging.getLogger("retreatkit.admin")


class AdminGate:
    """Counts the admin endpoint's connections; `admit` says whether one more may open."""

    def __init__(
        self,
        per_address: int = PER_ADDRESS,
        remote: int = REMOTE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_address = per_address
        self.remote = remote
        self.clock = clock
        self.by_address: Counter[str] = Counter()
        self.remote_open = 0
        self.full = False  # the last refusal was for the LAN's bound in all
        self.refused = 0
        self._news = News(LOGGED_AGAIN, most=1)

    def admit(self, address: str) -> bool:
        if is_loopback(address):
            return True
        key = limited_as(address)
        if self.by_address[key] >= self.per_address:
            self.full = False
            return self._refuse(f"{key} holds {self.per_address}, the most one address may")
        if self.remote_open >= self.remote:
            self.full = True
            return self._refuse(f"{self.remote} are open from the LAN, the most in all")
        self.by_address[key] += 1
        self.remote_open += 1
        return True

    def release(self, address: str) -> None:
        if is_loopback(address):
            return
        key = limited_as(address)
        self.by_address[key] -= 1
        if self.by_address[key] <= 0:
            del self.by_address[key]
        self.remote_open -= 1

    def _refuse(self, why: str) -> bool:
        self.refused += 1
        if self._news.news("", self.clock()):
            log.warning(
                "refused an admin connection: %s (%d refused since the endpoint started)",
                why, self.refused,
            )  # fmt: skip
        return False
