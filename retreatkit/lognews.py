"""Whether a thing is news for the log: a line the first time, then not again for a while,
however often it happens. What a peer or a client controls (its address, a name it asks
for) is remembered for a bounded number of things at a time, so a flood of new ones costs
the log at most that many lines a while, and the memory a fixed amount (no I/O)."""

from __future__ import annotations


class News:
    """Says whether `key` is news: once per `again` seconds per key, for at most `most`
    keys at a time; past that, a new key is news only when an old one has aged out."""

    def __init__(self, again: float = 600.0, most: int = 4096) -> None:
        self.again = again
        self.most = most
        self.logged: dict[str, float] = {}

    def news(self, key: str, now: float) -> bool:
        last = self.logged.get(key)
        if last is not None and now - last < self.again:
            return False
        if last is None and len(self.logged) >= self.most:
            self.logged = {k: t for k, t in self.logged.items() if now - t < self.again}
            if len(self.logged) >= self.most:
                return False
        self.logged[key] = now
        return True
