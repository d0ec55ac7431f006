"""The relay as a real process on loopback: aborted handshakes leak nothing, limits hold.

Every wait for the relay to notice something is a poll of /status (or /proc) with a
deadline, never a fixed sleep. Clients are plain sockets (blocking, with timeouts) for the
one-at-a-time tests and asyncio streams for the storm of a thousand connections.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import socket
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from retreatkit.testing import RelayProcess, open_fds, rss_bytes, start_relay
from retreatkit.transfer.testing import RelayLines

pytestmark = pytest.mark.e2e

DEADLINE = 20.0  # seconds to wait for the relay to notice something; only ever a bound
IO_TIMEOUT = 10.0  # a client socket that waits longer than this has found a bug
TIMER_SLACK = 0.05  # the relay's loop keeps time in whole milliseconds, cached per iteration
OK = re.compile(rb"^ok ([0-9]{1,6})\n$")
PAIRED = re.compile(rb"^paired 127\.0\.0\.1:([0-9]+)\n$")
ENDINGS = (
    "completed", "key exchange failed", "idle timeout", "wait timeout", "sender left",
    "no sender", "refused", "busy", "bad request", "handshake timeout", "left early",
    "relay stopped",
)  # fmt: skip


# -- the relay process ----------------------------------------------------------------------


@contextmanager
def relay_with(tmp_path: Path, **limits: float) -> Iterator[RelayProcess]:
    """A `bob relay` started with a retreat.toml holding these [relay] limits."""
    lines = ["[relay]"]
    for key, value in limits.items():
        lines.append(f"{key} = {float(value) if key.endswith('timeout') else int(value)}")
    config = tmp_path / "retreat.toml"
    config.write_text("\n".join(lines) + "\n")
    proc = start_relay(config)
    try:
        yield proc
    finally:
        proc.stop()


def status(relay: RelayProcess) -> dict[str, Any]:
    """/status, read until the admin server closes the connection.

    Unlike urllib (which stops at Content-Length), reading to EOF means the admin
    server has closed its socket by the time we count the relay's descriptors, so an
    in-flight /status request is never mistaken for a leaked socket.
    """
    admin = urlsplit(relay.admin)
    assert admin.hostname is not None and admin.port is not None
    with socket.create_connection((admin.hostname, admin.port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    doc: dict[str, Any] = json.loads(body)
    relay_status: dict[str, Any] = doc["relay"]
    return relay_status


def poll(relay: RelayProcess, done: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """Poll /status until `done(status)`, failing after DEADLINE seconds."""
    deadline = time.monotonic() + DEADLINE
    while True:
        current = status(relay)
        if done(current):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"relay never reached {what}; last status {current}")


def quiet(relay: RelayProcess, fds: int | None = None) -> dict[str, Any]:
    """Wait until nothing is open or waiting (and, given `fds`, the descriptors are back)."""

    def done(current: dict[str, Any]) -> bool:
        settled = current["connections_open"] == 0 and current["waiting_senders"] == 0
        return settled and (fds is None or open_fds(relay.process.pid) == fds)

    return poll(relay, done, f"no connections, none waiting, {fds} descriptors")


def endings(current: dict[str, Any]) -> Counter[str]:
    """How connections ended so far; only the kinds that happened."""
    return Counter({key: int(n) for key, n in current["ended"].items() if n})


# -- a blocking client ----------------------------------------------------------------------


class Client(RelayLines):
    """One TCP connection to the relay, reading lines the way bob does."""

    def __init__(self, relay: RelayProcess) -> None:
        self.sock = socket.create_connection((relay.host, relay.port), timeout=IO_TIMEOUT)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def abort(self) -> None:
        """Close with a TCP RST instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"


@pytest.fixture
def clients() -> Iterator[Callable[[RelayProcess], Client]]:
    """Opens clients, and closes every one of them at the end of the test."""
    with ExitStack() as stack:

        def open_client(relay: RelayProcess) -> Client:
            client = Client(relay)
            stack.callback(client.close)
            return client

        yield open_client


def pair(
    relay: RelayProcess, clients: Callable[[RelayProcess], Client], nameplate: str | None = None
) -> tuple[Client, Client]:
    sender = clients(relay)
    sender.send(b"bob/1 send\n" if nameplate is None else f"bob/1 send {nameplate}\n".encode())
    ok = OK.match(sender.line())
    assert ok is not None
    receiver = clients(relay)
    receiver.send(b"bob/1 recv " + ok[1] + b"\n")
    assert receiver.line() == f"paired {sender.address}\n".encode()
    assert sender.line() == f"paired {receiver.address}\n".encode()
    return sender, receiver


# -- 1. a thousand aborted handshakes leak nothing ----------------------------------------------


def rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def line(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readline(), IO_TIMEOUT)


async def until_eof(reader: asyncio.StreamReader) -> bytes:
    """Read until the relay closes; a reset counts as closed too."""
    try:
        return await asyncio.wait_for(reader.read(), IO_TIMEOUT)
    except ConnectionResetError:
        return b""


class Storm:
    """Clients that give up at every stage of the handshake; each knows how it must end."""

    def __init__(self, host: str, port: int, round_: int) -> None:
        self.host, self.port = host, port
        self.round = round_
        self.expected: Counter[str] = Counter()  # how each connection must end
        self.made = 0  # connections the relay accepted
        self.claimed = 100_000 + 1000 * round_  # own nameplates, unique per sender and round

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self.made += 1
        try:
            yield reader, writer
        finally:
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()

    async def instant_close(self, i: int) -> None:
        async with self.connection():
            pass
        self.expected["left early"] += 1

    async def instant_rst(self, i: int) -> None:
        async with self.connection() as (_, writer):
            rst(writer)
        self.expected["left early"] += 1

    async def half_line(self, i: int) -> None:
        async with self.connection() as (_, writer):
            writer.write(b"bob/1 se")
            await writer.drain()
        self.expected["left early"] += 1

    async def overlong(self, i: int) -> None:
        async with self.connection() as (reader, writer):
            writer.write(b"bob/1 send " + b"7" * 300)
            assert await line(reader) == b"error handshake line too long\n"
            assert await until_eof(reader) == b""
        self.expected["bad request"] += 1

    GARBAGE = (
        (b"\x00\xff\xfe\x80 garbage\n", b"error not a bob/1 request\n"),
        (b"bob/2 send\n", b"error not a bob/1 request\n"),
        (b"bob/1 send 1234567\n", b"error not a bob/1 request\n"),
        (b"bob/1 recv\n", b"error recv needs a nameplate\n"),
        (b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n", b"error send nothing until paired\n"),
    )

    async def garbage(self, i: int) -> None:
        sent, answer = self.GARBAGE[i % len(self.GARBAGE)]
        async with self.connection() as (reader, writer):
            writer.write(sent)
            assert await line(reader) == answer
            assert await until_eof(reader) == b""
        self.expected["bad request"] += 1

    async def lonely(self, i: int) -> None:
        async with self.connection() as (reader, writer):
            writer.write(b"bob/1 send\n")
            assert OK.match(await line(reader))
            if i % 2:
                rst(writer)
        self.expected["sender left"] += 1

    async def early_talker(self, i: int) -> None:
        async with self.connection() as (reader, writer):
            writer.write(b"bob/1 send\n")
            assert OK.match(await line(reader))
            writer.write(b"hello before anyone came")
            assert await line(reader) == b"error send nothing until paired\n"
            assert await until_eof(reader) == b""
        self.expected["bad request"] += 1

    async def jilted(self, i: int) -> None:
        # 900000 and up: never allocated (spans stay below 10_000 here), never claimed
        nameplate = 900_000 + 1000 * self.round + i
        async with self.connection() as (reader, writer):
            writer.write(f"bob/1 recv {nameplate}\n".encode())
            expected = f"error no sender is waiting on nameplate {nameplate}\n".encode()
            assert await line(reader) == expected
            assert await until_eof(reader) == b""
        self.expected["no sender"] += 1

    async def silent(self, i: int) -> None:
        async with self.connection() as (reader, _):
            assert await line(reader) == b"error handshake timed out\n"
            assert await until_eof(reader) == b""
        self.expected["handshake timeout"] += 1

    async def _paired(self, i: int, body: Callable[..., Awaitable[None]], ending: str) -> None:
        async with self.connection() as (s_reader, s_writer):
            if i % 2:  # half the senders bring their own nameplate
                self.claimed += 1
                s_writer.write(f"bob/1 send {self.claimed}\n".encode())
            else:
                s_writer.write(b"bob/1 send\n")
            answer = await line(s_reader)
            ok = OK.match(answer)
            assert ok is not None, answer
            async with self.connection() as (r_reader, r_writer):
                r_writer.write(b"bob/1 recv " + ok[1] + b"\n")
                assert PAIRED.match(await line(r_reader))
                assert PAIRED.match(await line(s_reader))
                await body(i, (s_reader, s_writer), (r_reader, r_writer))
        self.expected[ending] += 2  # the sender said more than a key exchange, or did not

    async def pair_then_close(self, i: int) -> None:
        async def body(i: int, *sides: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
            (a_reader, a_writer), (b_reader, _) = sides[i % 2], sides[1 - i % 2]
            payload = os.urandom(1000 + i)
            a_writer.write(payload)
            assert await asyncio.wait_for(b_reader.readexactly(len(payload)), IO_TIMEOUT) == payload
            a_writer.write(b"some bytes nobody waits for")
            a_writer.close()  # FIN mid-stream: the relay must close the other side too
            await until_eof(b_reader)
            await until_eof(a_reader)

        # a sender that spoke got past a key exchange, for all the relay can tell
        await self._paired(i, body, "key exchange failed" if i % 2 else "completed")

    async def pair_then_rst(self, i: int) -> None:
        async def body(i: int, *sides: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
            (_, a_writer), (b_reader, b_writer) = sides[i % 2], sides[1 - i % 2]
            b_writer.write(os.urandom(20_000))  # in flight towards the side that resets
            payload = os.urandom(5000)
            a_writer.write(payload)
            assert await asyncio.wait_for(b_reader.readexactly(5000), IO_TIMEOUT) == payload
            rst(a_writer)  # RST mid-stream: the relay must close the other side too
            await until_eof(b_reader)

        await self._paired(i, body, "completed")

    async def run(self, per_kind: int, pairs_per_kind: int, concurrency: int) -> None:
        singles: list[Callable[[int], Awaitable[None]]] = [
            self.instant_close, self.instant_rst, self.half_line, self.overlong,
            self.garbage, self.lonely, self.early_talker, self.jilted, self.silent,
        ]  # fmt: skip
        doubles: list[Callable[[int], Awaitable[None]]] = [self.pair_then_close, self.pair_then_rst]
        jobs = [(kind, i) for kind in singles for i in range(per_kind)] + [
            (kind, i) for kind in doubles for i in range(pairs_per_kind)
        ]
        random.Random(self.round).shuffle(jobs)  # every stage at once, in a fixed order
        gate = asyncio.Semaphore(concurrency)

        async def one(kind: Callable[[int], Awaitable[None]], i: int) -> None:
            async with gate:
                await kind(i)

        await asyncio.gather(*(one(kind, i) for kind, i in jobs))


def storm(relay: RelayProcess, round_: int) -> tuple[int, Counter[str]]:
    """1000 connections: 9 single-connection stages x 80, 2 kinds of pair x 70 x 2."""
    clients = Storm(relay.host, relay.port, round_)
    asyncio.run(clients.run(per_kind=80, pairs_per_kind=70, concurrency=100))
    assert clients.made == 1000
    assert sum(clients.expected.values()) == clients.made
    return clients.made, clients.expected


def test_thousand_aborted_handshakes_leak_nothing(tmp_path: Path) -> None:
    limits = {
        "per_ip": 10_000,
        "waiting_per_ip": 10_000,
        "handshake_timeout": 0.5,
        "failed_joins": 100_000,
    }
    with relay_with(tmp_path, **limits) as relay:
        pid = relay.process.pid
        before_warmup = quiet(relay)
        fds_at_start = open_fds(pid)

        # warm-up: the first round grows the interpreter's arenas, uvloop's handle pools
        # and the prometheus label children to their working size
        made, expected = storm(relay, round_=0)
        warm = quiet(relay, fds=fds_at_start)  # the warm-up leaked no descriptor either
        assert endings(warm) - endings(before_warmup) == expected
        baseline_fds, baseline_rss = open_fds(pid), rss_bytes(pid)

        started = time.monotonic()
        made, expected = storm(relay, round_=1)
        elapsed = time.monotonic() - started
        after = quiet(relay, fds=baseline_fds)

        # every connection made was closed exactly once, in the way its stage implies
        closed = endings(after) - endings(warm)
        assert sum(closed.values()) == made == 1000
        assert closed == expected
        assert set(closed) <= set(ENDINGS) == set(after["ended"])
        pairs = after["transfers_completed"] + after["handshakes_failed"]
        assert pairs - warm["transfers_completed"] - warm["handshakes_failed"] == 2 * 70
        assert after["transfers_active"] == 0
        assert open_fds(pid) == baseline_fds

        # RSS is not exact: pymalloc keeps freed arenas, glibc keeps freed heap pages and
        # the /status requests churn, so the same work twice can land some pages apart (the
        # warm-up round grows RSS by ~120 KiB; measured rounds after it grew by 0 here).
        # A leak of 1 KiB per connection would add ~1 MiB over 1000 connections, so allow
        # just under 1 MiB over the warmed-up baseline.
        growth = rss_bytes(pid) - baseline_rss
        assert growth < 1000 * 1024, f"RSS grew {growth} bytes over 1000 connections"
        assert elapsed < 30, f"1000 connections took {elapsed:.1f}s"


# -- 2. limits, with their exact words ---------------------------------------------------------


def test_per_ip_limit_refuses_the_extra_connection(
    tmp_path: Path, clients: Callable[[RelayProcess], Client]
) -> None:
    with relay_with(tmp_path, per_ip=2) as relay:
        first, second = clients(relay), clients(relay)
        poll(relay, lambda s: s["connections_open"] == 2, "two connections open")
        third = clients(relay)
        assert third.line() == b"error too many connections from 127.0.0.1\n"
        assert third.rest() == b""
        after = poll(relay, lambda s: s["connections_open"] == 2, "the third refused")
        assert endings(after) == {"refused": 1}

        # a closed connection frees its place for the next one
        first.close()
        poll(relay, lambda s: s["connections_open"] == 1, "the first one gone")
        fourth = clients(relay)
        fourth.send(b"bob/1 send\n")
        assert OK.match(fourth.line())
        second.send(b"bob/1 send\n")
        assert OK.match(second.line())


def test_second_sender_on_a_nameplate_in_use_is_turned_away(
    tmp_path: Path, clients: Callable[[RelayProcess], Client]
) -> None:
    with relay_with(tmp_path) as relay:
        first = clients(relay)
        first.send(b"bob/1 send 4242\n")
        assert first.line() == b"ok 4242\n"
        second = clients(relay)
        second.send(b"bob/1 send 4242\n")
        assert second.line() == b"error nameplate 4242 is in use; choose another passphrase\n"
        assert second.rest() == b""

        # the first sender still holds it: a receiver pairs with the first
        receiver = clients(relay)
        receiver.send(b"bob/1 recv 4242\n")
        assert receiver.line() == f"paired {first.address}\n".encode()
        assert first.line() == f"paired {receiver.address}\n".encode()

        # pairing burned the nameplate, so it is free for a new sender
        third = clients(relay)
        third.send(b"bob/1 send 4242\n")
        assert third.line() == b"ok 4242\n"


def test_waiting_limit_says_the_relay_is_full(
    tmp_path: Path, clients: Callable[[RelayProcess], Client]
) -> None:
    with relay_with(tmp_path, waiting=2) as relay:
        waiting = []
        for command in (b"bob/1 send\n", b"bob/1 send 777\n"):
            sender = clients(relay)
            sender.send(command)
            ok = OK.match(sender.line())
            assert ok is not None
            waiting.append(ok[1].decode())
        for command in (b"bob/1 send\n", b"bob/1 send 778\n"):
            extra = clients(relay)
            extra.send(command)
            assert extra.line() == b"busy the relay is full; try again later\n"
            assert extra.rest() == b""
        full = poll(relay, lambda s: s["connections_open"] == 2, "the extras closed")
        assert full["waiting_senders"] == 2
        assert endings(full) == {"busy": 2}

        # a receiver is not a waiter: it still pairs when the relay is full, and frees a place
        receiver = clients(relay)
        receiver.send(f"bob/1 recv {waiting[0]}\n".encode())
        assert PAIRED.match(receiver.line())
        poll(relay, lambda s: s["waiting_senders"] == 1, "one waiting after a pairing")
        another = clients(relay)
        another.send(b"bob/1 send\n")
        assert OK.match(another.line())


def test_handshake_timeout_closes_silent_and_slow_clients(
    tmp_path: Path, clients: Callable[[RelayProcess], Client]
) -> None:
    with relay_with(tmp_path, handshake_timeout=0.3) as relay:
        started = time.monotonic()  # before the relay can arm its timers
        silent, slow = clients(relay), clients(relay)
        slow.send(b"bob/1 se")  # half a line does not buy more time
        for client in (silent, slow):
            assert client.line() == b"error handshake timed out\n"
            assert client.rest() == b""
        assert time.monotonic() - started >= 0.3 - TIMER_SLACK
        done = quiet(relay)
        assert endings(done) == {"handshake timeout": 2}


def test_a_receiver_that_stops_reading_cannot_keep_a_socket(
    tmp_path: Path, clients: Callable[[RelayProcess], Client]
) -> None:
    """Closing flushes what the relay holds for a client, but not for ever.

    Once a connection is closed it no longer counts towards per_ip, so a client that never
    reads again must not be able to hold the relay's socket (and its buffer) past a bound.
    """
    with relay_with(tmp_path, idle_timeout=0.5) as relay:
        baseline_fds = open_fds(relay.process.pid)
        sender, receiver = pair(relay, clients)
        # the receiver reads nothing more; the sender writes until the buffers on the way
        # are full, the relay stops reading from it, and the idle timeout ends the pair
        chunk = b"x" * (1 << 20)
        with pytest.raises(OSError):  # reset by the relay, when the idle timeout fires
            for _ in range(1000):
                sender.send(chunk)
        done = quiet(relay, fds=baseline_fds)  # while the receiver is still connected
        assert endings(done) == {"idle timeout": 2}
        with suppress(OSError):
            receiver.rest()


# -- 3. blind forwarding --------------------------------------------------------------------


def test_pair_forwards_bytes_both_ways_unchanged_and_counts_them(
    tmp_path: Path, clients: Callable[[RelayProcess], Client]
) -> None:
    with relay_with(tmp_path) as relay:
        sender, receiver = pair(relay, clients, nameplate="31337")
        # every byte value, lines that look like the handshake, and a lot of noise: both
        # ways at once, more than the relay buffers, so flow control has to work
        tricky = bytes(range(256)) + b"\nbob/1 send\nerror x\nok 1\npaired 1.2.3.4:5\n\r\n"
        up = tricky + os.urandom(3 << 20) + tricky
        down = tricky[::-1] + os.urandom(2 << 20)

        async def both_ways() -> tuple[bytes, bytes]:
            loop = asyncio.get_running_loop()
            for client in (sender, receiver):
                client.sock.setblocking(False)

            async def recv(client: Client, n: int) -> bytes:
                chunks, got = [], 0
                while got < n:
                    chunk = await loop.sock_recv(client.sock, 65536)
                    assert chunk, f"EOF after {got} of {n} bytes"
                    chunks.append(chunk)
                    got += len(chunk)
                return b"".join(chunks)

            _, _, got_down, got_up = await asyncio.wait_for(
                asyncio.gather(
                    loop.sock_sendall(sender.sock, up),
                    loop.sock_sendall(receiver.sock, down),
                    recv(sender, len(down)),
                    recv(receiver, len(up)),
                ),
                30,
            )
            return got_down, got_up

        got_down, got_up = asyncio.run(both_ways())
        assert got_up == up
        assert got_down == down

        receiver.close()
        sender.sock.setblocking(True)
        sender.sock.settimeout(IO_TIMEOUT)
        assert sender.rest() == b""  # the receiver's end, passed on
        sender.close()  # as bob does on it: the pair ends once both have
        done = quiet(relay)
        assert done["bytes_relayed"] == len(up) + len(down)
        assert done["transfers_completed"] == 1
        assert endings(done) == {"completed": 2}


def test_pairs_past_the_limit_are_told_busy_and_the_organiser_is_told_who(
    tmp_path: Path, clients: Callable[[RelayProcess], Client]
) -> None:
    """Each pair costs the relay two sockets and two splice threads: past `pairs`, a new
    sender or receiver is told `busy` (bob's sender then meets its receiver on the LAN),
    and /status names the addresses holding the most."""

    def client(relay: RelayProcess, source: str) -> Client:
        made = clients(relay)
        made.sock.close()
        made.sock = socket.create_connection(
            (relay.host, relay.port), timeout=IO_TIMEOUT, source_address=(source, 0)
        )
        return made

    with relay_with(tmp_path, pairs=2, waiting=4) as relay:
        for receiver_address in ("127.0.0.2", "127.0.0.3"):
            sender = client(relay, "127.0.0.1")
            sender.send(b"bob/1 send\n")
            ok = OK.match(sender.line())
            assert ok is not None
            receiver = client(relay, receiver_address)
            receiver.send(b"bob/1 recv " + ok[1] + b"\n")
            assert receiver.line().startswith(b"paired ")
        for line in (b"bob/1 send\n", b"bob/1 recv 5\n"):
            late = client(relay, "127.0.0.4")
            late.send(line)
            assert (
                late.line() == b"busy the relay carries as many transfers as it may (2);"
                b" try again later\n"
            )
            assert late.rest() == b""
        done = poll(relay, lambda s: s["ended"]["busy"] == 2, "two told busy")
        assert done["pairs_limit"] == 2
        assert done["warnings"] == [
            "2 transfers are paired and the limit is 2: new ones are turned away when it is"
            " reached (raise [relay] pairs); most connections from 127.0.0.1 (2),"
            " 127.0.0.2 (1), 127.0.0.3 (1)"
        ]


def test_a_full_relay_names_the_addresses_holding_the_most_waiting(
    tmp_path: Path, clients: Callable[[RelayProcess], Client]
) -> None:
    with relay_with(tmp_path, waiting=10, waiting_per_ip=10) as relay:
        for source, n in (("127.0.0.5", 2), ("127.0.0.6", 5), ("127.0.0.7", 1), ("127.0.0.8", 1)):
            for _ in range(n):
                sender = clients(relay)
                sender.sock.close()
                sender.sock = socket.create_connection(
                    (relay.host, relay.port), timeout=IO_TIMEOUT, source_address=(source, 0)
                )
                sender.send(b"bob/1 send\n")
                assert OK.match(sender.line())
        assert status(relay)["warnings"] == [
            "9 senders are waiting and the limit is 10: new senders are turned away when it is"
            " reached (raise [relay] waiting); most from 127.0.0.6 (5), 127.0.0.5 (2),"
            " 127.0.0.7 (1)"
        ]
