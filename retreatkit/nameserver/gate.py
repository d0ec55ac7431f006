"""Who may ask, and how fast: the LAN's networks, a per-client rate; refusals and floods
logged once, so the organiser learns which address it is without a line per query."""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections import Counter
from collections.abc import Callable

from retreatkit.lognews import News

log = logging.getLogger("retreatkit.nameserver")

LAN = ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
       "100.64.0.0/10", "::1/128", "fc00::/7", "fe80::/10")  # fmt: skip
MAX_KNOWN = 65536  # addresses whose verdict is remembered
MAX_LOGGED = 4096  # networks whose first refusal was logged
REFUSALS_LOGGED = 16  # networks whose first refusal is a line, per LOG_AGAIN seconds
LOG_AGAIN = 600  # seconds before the same address's flood is a line in the log again


WIDE = 1 << 24  # addresses: a public network this big is no LAN (a /8, or ::/0)


def too_open(networks: list[str]) -> str | None:
    """The warning for `networks` that let much of the internet ask (`0.0.0.0/0`), or
    None. Such a resolver is an open one, an amplifier for anyone's attack, as soon as
    its port is reachable from outside; a venue's public /16 is not warned of."""
    wide = [
        n for n in map(ipaddress.ip_network, networks)
        if n.num_addresses >= WIDE and not n.is_private
    ]  # fmt: skip
    if not wide:
        return None
    return (
        f"networks in [nameserver] holds {', '.join(map(str, wide))}: anyone who reaches"
        " this host may ask, an open resolver others can use to flood a victim with"
        " answers; name the LAN's networks instead"
    )


class Gate:
    """An open resolver is an amplifier for anyone's attack: only the LAN's networks get
    answers. Over the rate limit a UDP client gets an empty truncated answer (it retries
    over TCP, which cannot be spoofed), so a NAT full of people is slowed, not cut off
    (the RRL "slip")."""

    def __init__(
        self, networks: list[str], rate: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.networks = [ipaddress.ip_network(n) for n in networks]
        self.rate = rate
        self.clock = clock
        self._budget = REFUSALS_LOGGED  # network lines left in this stretch of time
        self._budget_since = -math.inf
        self.known: dict[str, bool] = {}  # read inline by the servers: a dict lookup per query
        self.logged: set[str] = set()
        self.floods = News(LOG_AGAIN, MAX_LOGGED)
        self._window = 0
        self._counts: Counter[str] = Counter()

    def allowed(self, ip: str) -> bool:
        known = self.known.get(ip)
        if known is None:
            try:
                address = ipaddress.ip_address(ip.split("%")[0])
            except ValueError:
                return False
            if address.version == 6 and address.ipv4_mapped:
                address = address.ipv4_mapped
            known = any(address in net for net in self.networks if net.version == address.version)
            if len(self.known) >= MAX_KNOWN:
                self.known.clear()
            self.known[ip] = known
            if not known:
                self._log_refusal(address)
        return known

    def _log_refusal(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        """The first refusal per network, once: a LAN outside the default private ranges
        otherwise gets REFUSED with nothing to say why."""
        prefix = 24 if address.version == 4 else 64
        network = str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
        if network in self.logged or len(self.logged) >= MAX_LOGGED:
            return
        # a scan, or a flood from spoofed sources, comes from thousands of networks: a
        # few lines say what is happening, thousands would bury the rest of the log
        now = self.clock()
        if now - self._budget_since >= LOG_AGAIN:
            self._budget, self._budget_since = REFUSALS_LOGGED, now
        if self._budget <= 0:
            return
        self._budget -= 1
        self.logged.add(network)
        log.warning(
            "refusing queries from %s (%s): not in the LAN's networks; to answer it, add"
            ' "%s" to networks in [nameserver] of retreat.toml',
            network, address, network,
        )  # fmt: skip
        if not self._budget:
            log.warning(
                "refusing queries from more networks outside the LAN (a scan, or spoofed"
                " sources?): the next ones are not logged for 10 minutes; /status counts"
                " every refusal (refused)"
            )

    def over_limit(self, ip: str, window: int) -> bool:
        if window != self._window:
            self._window = window
            self._counts.clear()
        counts = self._counts
        counts[ip] += 1
        if counts[ip] <= self.rate:
            return False
        if counts[ip] == self.rate + 1 and self.floods.news(ip, window):
            log.warning(
                "%s asks more than %d queries a second: its UDP answers come truncated (it"
                " asks again over TCP); the limit is rate_limit in [nameserver] of retreat.toml",
                ip, self.rate,
            )  # fmt: skip
        return True
