"""A relay connection's life (request line, waiting, paired, closed): a pure machine.

The socket shell reports what happened (`connect`, `received`, `forwarded`, `lost`,
`expire`, `stop`) and performs the actions it gets back: write these bytes, close that
connection, wake me at this time. The clock is injected, so every timer and limit is
tested in process with exact times. How each connection ended is an `Ending`, decided
from the phase it was in, never from the text of a message.
"""

from __future__ import annotations

import enum
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from retreatkit.lognews import News
from retreatkit.peers import limited_as
from retreatkit.relay import wire
from retreatkit.relay.matching import (
    ATTACK_WINDOW,
    BESIEGED,
    FULL,
    Busy,
    Limits,
    Matcher,
    NoSender,
    Refusal,
)

# A bob/1 sender's first two frames, PAKE (4 + 33 bytes) and CONFIRM (4 + 32): it sends
# a byte more only after checking the receiver's confirmation (PROTOCOL.md 4), so a pair
# whose sender sent no more than this failed its key exchange.
HANDSHAKE_BYTES = 73
RECENT = 100  # ended transfers kept for the admin list
LISTED = 100  # active transfers listed at most
STOPPING = "it is stopping (its organiser stopped it)"  # to each connection not yet paired
# The relay is blind to PAKE results, but a pair that ends before the sender sent more
# than its key exchange failed it (or someone gave up within a round trip): this many
# from one joining address in ATTACK_WINDOW, and again at twice as many, are logged.
SPOILED = 3
FULL_LOGGED_AGAIN = 60.0  # seconds: connections turned away at the unpaired bound, logged


class Phase(enum.Enum):
    HANDSHAKE = "handshake"  # connected, no complete request line yet
    WAITING = "waiting"  # a sender holding its nameplate
    PAIRED = "paired"  # forwarding to and from a peer
    CLOSED = "closed"


UNPAIRED = (Phase.HANDSHAKE, Phase.WAITING)


class Ending(enum.Enum):
    """How a connection ended, in the words docs/operations.md explains."""

    COMPLETED = "completed"  # paired past the key exchange, then a peer closed
    KEY_EXCHANGE_FAILED = "key exchange failed"  # paired, closed before the key was confirmed
    IDLE_TIMEOUT = "idle timeout"  # paired, and no byte either way for idle_timeout
    WAIT_TIMEOUT = "wait timeout"  # a sender no receiver came for in wait_timeout
    SENDER_LEFT = "sender left"  # a sender that closed while it waited
    NO_SENDER = "no sender"  # a receiver that named a nameplate nobody holds
    REFUSED = "refused"  # turned away by a limit, or a nameplate in use
    BUSY = "busy"  # turned away for want of room (the waiting or the pairs limit), or a
    # pair the relay could not carry as it formed (out of open files)
    BAD_REQUEST = "bad request"  # not a bob/1 request line, or bytes before pairing
    HANDSHAKE_TIMEOUT = "handshake timeout"  # no request line within handshake_timeout
    LEFT_EARLY = "left early"  # closed before sending a whole request line
    RELAY_STOPPED = "relay stopped"


@dataclass(eq=False, slots=True)
class Transfer:
    """One pairing; what the admin list shows. Never anything but the public nameplate."""

    nameplate: str
    started: float
    started_at: float  # wall clock, for display only
    last: float  # the last byte either way
    bytes: int = 0
    confirmed: bool = False
    ended: Ending | None = None
    duration: float = 0.0


@dataclass(eq=False, slots=True)
class Conn:
    ip: str  # what per-address limits count it against (limited_as)
    address: str
    handle: object  # the shell's own object for this connection
    phase: Phase = Phase.HANDSHAKE
    sender: bool = False
    nameplate: str | None = None
    peer: Conn | None = None
    transfer: Transfer | None = None
    sent: int = 0  # bytes this side sent its peer
    deadline: float | None = None
    buf: bytes = b""
    admitted: bool = False
    ending: Ending | None = None


@dataclass(frozen=True, slots=True)
class Write:
    conn: Conn
    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection (flushing what is buffered); `conn.ending` says why."""

    conn: Conn


@dataclass(frozen=True, slots=True)
class Arm:
    """Call `expire(conn)` at `at` (on the core's clock); None cancels."""

    conn: Conn
    at: float | None


@dataclass(frozen=True, slots=True)
class Warn:
    """Log this for the organiser, at WARNING (about `conn`'s address)."""

    conn: Conn
    text: str


Action = Write | Close | Arm | Warn


class RelayCore:
    """Every connection of one relay, the matcher and the counts /status shows."""

    def __init__(
        self,
        limits: Limits,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        randbelow: Callable[[int], int] = secrets.randbelow,
        unpaired: int | None = None,
    ) -> None:
        """`unpaired`: connections not yet paired, at most, in all (None: no bound); the
        shell sets it from its open-file limit (`matching.most_unpaired`)."""
        self.limits = limits
        self.unpaired_limit = unpaired
        self.full = News(FULL_LOGGED_AGAIN, most=1)
        self.clock = clock
        self.wall = wall
        self.matcher = Matcher(limits, randbelow, clock)
        self.conns: set[Conn] = set()
        self.active: dict[Transfer, None] = {}  # insertion-ordered: oldest first
        self.recent: deque[Transfer] = deque(maxlen=RECENT)
        self.ended: Counter[Ending] = Counter()
        self.bytes_relayed = 0
        self.handshakes_refused = 0
        self.handshakes_failed = 0
        self.transfers_completed = 0
        # (when, joining address) of pairings that ended in their key exchange
        self.spoiled: deque[tuple[float, str]] = deque(maxlen=BESIEGED)
        self.started = clock()

    # -- what the shell reports -------------------------------------------------------

    def connect(self, ip: str, address: str, handle: object) -> tuple[Conn, list[Action]]:
        """`ip` as the socket gives it; the connection counts against it (limited_as)."""
        unpaired = self.unpaired
        conn = Conn(limited_as(ip), address, handle)
        self.conns.add(conn)
        try:
            self.matcher.admit(conn.ip)
        except Refusal as exc:
            return conn, self._refuse(conn, str(exc), Ending.REFUSED)
        conn.admitted = True
        if self.unpaired_limit is not None and unpaired >= self.unpaired_limit:
            # each connection holds an open file: past this, those a pair or the admin
            # endpoint needs (a few addresses' 64 each took them all)
            return conn, self._full(conn, unpaired)
        return conn, [self._arm(conn, self.clock() + self.limits.handshake_timeout)]

    @property
    def unpaired(self) -> int:
        """Connections open and not paired: before their request line, or waiting."""
        return len(self.conns) - 2 * len(self.active)

    def received(self, conn: Conn, data: bytes) -> list[Action]:
        """Bytes from a connection that is not paired (paired ones go to `forwarded`)."""
        if conn.phase is Phase.CLOSED:
            return []
        if conn.phase is Phase.PAIRED:
            assert conn.peer is not None
            self.forwarded(conn, len(data))
            return [Write(conn.peer, data)]
        if conn.phase is Phase.WAITING:
            return self._refuse(conn, "send nothing until paired", Ending.BAD_REQUEST)
        conn.buf += data
        line, newline, rest = conn.buf.partition(b"\n")
        if not newline:
            if len(conn.buf) >= wire.MAX_LINE:
                return self._refuse(conn, "handshake line too long", Ending.BAD_REQUEST)
            return []
        if rest:
            return self._refuse(conn, "send nothing until paired", Ending.BAD_REQUEST)
        conn.buf = b""
        try:
            request = wire.parse_request(line + newline)
        except wire.WireError as exc:
            return self._refuse(conn, str(exc), Ending.BAD_REQUEST)
        if len(self.active) >= self.limits.pairs:
            # before the join: a receiver turned away costs no token and burns no
            # nameplate; a sender turned away meets its receiver on the LAN instead
            busy = f"the relay carries as many transfers as it may ({self.limits.pairs})"
            return self._busy(conn, f"{busy}; try again later")
        try:
            if request.role is wire.Role.SEND:
                return self._wait(conn, request.nameplate, request.key)
            assert request.nameplate is not None
            sender = self.matcher.join(request.nameplate, conn.ip)
        except NoSender as exc:
            return self._refuse(conn, str(exc), Ending.NO_SENDER)
        except Busy as exc:
            return self._busy(conn, str(exc))
        except Refusal as exc:
            return self._refuse(conn, str(exc), Ending.REFUSED)
        assert isinstance(sender, Conn)
        return self._pair(sender, conn, request.nameplate)

    def forwarded(self, conn: Conn, count: int, at: float | None = None) -> None:
        """The shell passed `count` bytes from `conn` to its peer (the hot path), the last
        of them at clock() time `at` when it reports them later, else now."""
        transfer = conn.transfer
        if transfer is None:
            return
        conn.sent += count
        transfer.bytes += count
        transfer.last = self.clock() if at is None else max(transfer.last, at)
        self.bytes_relayed += count
        if not transfer.confirmed and conn.sender and conn.sent > HANDSHAKE_BYTES:
            transfer.confirmed = True
            assert conn.peer is not None
            self.matcher.confirmed(conn.peer.ip)

    def lost(self, conn: Conn) -> list[Action]:
        """The connection closed or reset on the client's side."""
        phase = conn.phase
        if phase is Phase.CLOSED:
            return []
        if phase is Phase.PAIRED:
            return self._unpair(conn, Ending.COMPLETED)
        ending = Ending.SENDER_LEFT if phase is Phase.WAITING else Ending.LEFT_EARLY
        return self._close(conn, ending)

    def no_room(self, conn: Conn) -> list[Action]:
        """The shell could not carry the pair `conn` just joined (out of open files): both
        closed. Nobody guessed anything: no failed join, and the join's token back."""
        if conn.phase is not Phase.PAIRED:
            return []
        return self._unpair(conn, Ending.BUSY)

    def expire(self, conn: Conn) -> list[Action]:
        """A timer the shell armed fired (perhaps a little early: then it is re-armed)."""
        if conn.phase is Phase.CLOSED or conn.deadline is None:
            return []
        now = self.clock()
        if conn.phase is Phase.PAIRED:
            assert conn.transfer is not None
            due = conn.transfer.last + self.limits.idle_timeout
            if now < due:  # bytes flowed since the timer was armed
                return [self._arm(conn, due)]
            return self._unpair(conn, Ending.IDLE_TIMEOUT)
        if now < conn.deadline:
            return [self._arm(conn, conn.deadline)]
        if conn.phase is Phase.WAITING:
            return self._refuse(conn, "nobody came for this nameplate", Ending.WAIT_TIMEOUT)
        return self._refuse(conn, "handshake timed out", Ending.HANDSHAKE_TIMEOUT)

    def stop(self) -> list[Action]:
        """Every connection closed; one not yet paired is told why first (a sender waiting
        for its receiver said only that the relay closed the connection). A pair's bytes
        are the peers' own, so a pair is only cut."""
        actions: list[Action] = []
        for conn in list(self.conns):
            if conn.phase is Phase.PAIRED:
                actions += self._unpair(conn, Ending.RELAY_STOPPED)
            elif conn.phase is not Phase.CLOSED:  # (a pair's other half, closed with it)
                actions.append(Write(conn, wire.reply("error", STOPPING)))
                actions += self._close(conn, Ending.RELAY_STOPPED)
        return actions

    # -- transitions ------------------------------------------------------------------

    def _wait(self, conn: Conn, nameplate: str | None, key: str | None) -> list[Action]:
        if nameplate is None:
            conn.nameplate = self.matcher.allocate(conn, conn.ip, key)
        else:
            conn.nameplate = self.matcher.claim(conn, conn.ip, nameplate, key)
        conn.phase, conn.sender = Phase.WAITING, True
        deadline = self.clock() + self.limits.wait_timeout
        return [Write(conn, wire.reply("ok", conn.nameplate)), self._arm(conn, deadline)]

    def _pair(self, sender: Conn, receiver: Conn, nameplate: str) -> list[Action]:
        now = self.clock()
        transfer = Transfer(nameplate, now, self.wall(), now)
        self.active[transfer] = None
        for side, peer in ((sender, receiver), (receiver, sender)):
            side.phase, side.peer, side.transfer = Phase.PAIRED, peer, transfer
        return [
            Write(sender, wire.reply("paired", receiver.address)),
            Write(receiver, wire.reply("paired", sender.address)),
            self._arm(sender, None),  # one idle timer per pair: the receiver's
            self._arm(receiver, now + self.limits.idle_timeout),
        ]

    def _unpair(self, conn: Conn, ending: Ending) -> list[Action]:
        warned: list[Action] = []
        transfer, peer = conn.transfer, conn.peer
        assert transfer is not None and peer is not None
        if ending is Ending.BUSY:  # the relay's want, not the peers' doing
            self.matcher.confirmed(peer.ip if conn.sender else conn.ip)
        elif not transfer.confirmed and ending is not Ending.RELAY_STOPPED:
            # a join whose key exchange failed was a guess (or a typo): it counts
            # towards widening the nameplates, and its token stays spent
            receiver = peer if conn.sender else conn
            self.matcher.failed(receiver.ip)
            self.handshakes_failed += 1
            if ending is Ending.COMPLETED:
                ending = Ending.KEY_EXCHANGE_FAILED
                warned = self._spoiled(receiver)
        elif ending is Ending.COMPLETED:
            self.transfers_completed += 1
        transfer.ended = ending
        transfer.duration = self.clock() - transfer.started
        self.active.pop(transfer, None)
        self.recent.appendleft(transfer)
        return warned + self._close(conn, ending) + self._close(peer, ending)

    def _spoiled(self, receiver: Conn) -> list[Action]:
        """One more pairing ended in its key exchange, joined from `receiver.ip`: said at
        SPOILED such pairings from that address in the window, then at 2x, 4x..."""
        now = self.clock()
        self.spoiled.append((now, receiver.ip))
        while self.spoiled and self.spoiled[0][0] < now - ATTACK_WINDOW:
            self.spoiled.popleft()
        count = sum(ip == receiver.ip for _, ip in self.spoiled)
        times, rest = divmod(count, SPOILED)
        if rest or not times or times & (times - 1):
            return []
        return [
            Warn(
                receiver,
                f"{receiver.ip} joined {count} waiting offers in {ATTACK_WINDOW / 60:g} minutes"
                " whose key exchange then failed, and each ended that offer: a wrong"
                " passphrase, or someone there guessing nameplates",
            )
        ]

    def paired_by_ip(self) -> Counter[str]:
        """Paired connections per address."""
        return Counter(c.ip for c in self.conns if c.phase is Phase.PAIRED)

    def _full(self, conn: Conn, unpaired: int) -> list[Action]:
        warned: list[Action] = []
        if self.full.news("", self.clock()):
            holding = Counter(c.ip for c in self.conns if c.phase in UNPAIRED and c is not conn)
            top = sorted(holding.items(), key=lambda item: (-item[1], item[0]))[:3]
            most = ", ".join(f"{address} ({count})" for address, count in top)
            warned.append(
                Warn(
                    conn,
                    f"{unpaired} connections are not yet paired, the most the open-file limit"
                    " leaves room for: new ones are told busy (raise the limit, ulimit -n);"
                    f" most from {most}",
                )
            )
        return warned + self._busy(conn, FULL)

    def _busy(self, conn: Conn, reason: str) -> list[Action]:
        self.handshakes_refused += 1
        return [Write(conn, wire.reply("busy", reason)), *self._close(conn, Ending.BUSY)]

    def _refuse(self, conn: Conn, reason: str, ending: Ending) -> list[Action]:
        if ending is not Ending.WAIT_TIMEOUT:
            self.handshakes_refused += 1
        return [Write(conn, wire.reply("error", reason)), *self._close(conn, ending)]

    def _close(self, conn: Conn, ending: Ending) -> list[Action]:
        if conn.phase is Phase.CLOSED:
            return []
        if conn.phase is Phase.WAITING:
            self.matcher.leave(conn, conn.nameplate)
        conn.phase, conn.ending, conn.deadline, conn.peer = Phase.CLOSED, ending, None, None
        if conn.admitted:
            self.matcher.release(conn.ip)
        self.conns.discard(conn)
        self.ended[ending] += 1
        return [Close(conn)]

    def _arm(self, conn: Conn, at: float | None) -> Arm:
        conn.deadline = at
        return Arm(conn, at)
