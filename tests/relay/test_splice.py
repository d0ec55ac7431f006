"""The relay's kernel forwarding (a thread per direction splicing through a pipe) on real
TCP connections over loopback, in process: bytes both ways unchanged and counted, a reader
that stops holding the writer back, either side ending its writing (passed on, the other
still heard, nothing lost), a reset, the relay's own close, and no thread to be had; after
each, no descriptor is left open."""

from __future__ import annotations

import asyncio
import os
import select
import socket
import struct
import threading
from collections.abc import AsyncIterator

import pytest

from retreatkit.relay import splice

pytestmark = pytest.mark.skipif(not splice.AVAILABLE, reason="splice(2) is Linux only")

WAIT = 10.0  # seconds; only ever a bound on a wait for something that must happen
NOW = 1234.5  # the injected clock's one reading


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A TCP connection on loopback: (the client's end, the relay's end)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        relay_end, _ = server.accept()
    client.setblocking(False)
    return client, relay_end


class Pair:
    """Two clients, a and b, and the Splice between the relay's ends of them."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.a, a_relay = tcp_pair()
        self.b, b_relay = tcp_pair()
        self.relay_ends = [(s.fileno(), os.fstat(s.fileno()).st_ino) for s in (a_relay, b_relay)]
        self.moved = [0, 0]
        self.at: set[float] = set()
        self.ended: list[int] = []
        self.over: asyncio.Future[int] = self.loop.create_future()
        self.splice = splice.Splice(
            a_relay.detach(), b_relay.detach(), self.count, self.end, clock=lambda: NOW
        )

    def count(self, side: int, n: int, at: float) -> None:
        self.moved[side] += n
        self.at.add(at)

    def end(self, side: int) -> None:
        self.ended.append(side)
        self.over.set_result(side)

    async def recv_all(self, sock: socket.socket) -> bytes:
        """Everything until the end of the stream."""
        got = bytearray()
        while chunk := await asyncio.wait_for(self.loop.sock_recv(sock, 1 << 20), WAIT):
            got += chunk
        return bytes(got)

    async def join(self) -> None:
        """Both threads are out."""
        for thread in self.splice.threads:
            await asyncio.to_thread(thread.join, WAIT)
            assert not thread.is_alive()
        await asyncio.sleep(0)  # what the last one posted has run

    def relay_ends_closed(self) -> bool:
        for fd, ino in self.relay_ends:
            try:
                if os.fstat(fd).st_ino == ino:
                    return False
            except OSError:
                pass  # closed, as it should be
        return True


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    p = Pair()
    try:
        yield p
    finally:
        p.splice.close()
        await p.join()
        p.a.close()
        p.b.close()


async def test_bytes_cross_both_ways_unchanged_and_counted(pair: Pair) -> None:
    data = os.urandom(8 << 20)  # more than the pipe and the buffers on the way hold
    reader = asyncio.ensure_future(pair.recv_all(pair.b))
    await asyncio.wait_for(pair.loop.sock_sendall(pair.a, data), WAIT)
    await pair.loop.sock_sendall(pair.b, b"back")
    assert await asyncio.wait_for(pair.loop.sock_recv(pair.a, 10), WAIT) == b"back"
    pair.a.shutdown(socket.SHUT_WR)
    assert await reader == data
    pair.b.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(pair.over, WAIT) == 0  # a's writing ended first
    assert pair.moved == [len(data), 4]  # final once the end is reported
    assert pair.at == {NOW}
    assert pair.relay_ends_closed()


async def test_counts_reach_the_loop_while_bytes_flow_unasked(pair: Pair) -> None:
    await pair.loop.sock_sendall(pair.b, b"key exchange")
    assert await asyncio.wait_for(pair.loop.sock_recv(pair.a, 100), WAIT) == b"key exchange"
    async with asyncio.timeout(WAIT):  # nobody calls collect(): the thread's nudge does
        while pair.moved[1] != len(b"key exchange"):
            await asyncio.sleep(0.01)
    assert pair.at == {NOW}


@pytest.mark.parametrize("side", [0, 1])
async def test_a_side_that_ends_its_writing_is_passed_on_and_still_hears_the_other(
    pair: Pair, side: int
) -> None:
    ending, other = (pair.a, pair.b) if side == 0 else (pair.b, pair.a)
    await pair.loop.sock_sendall(ending, b"last words")
    ending.shutdown(socket.SHUT_WR)
    assert await pair.recv_all(other) == b"last words"  # then the end of the stream
    await pair.loop.sock_sendall(other, b"reply")
    other.shutdown(socket.SHUT_WR)
    assert await pair.recv_all(ending) == b"reply"
    assert await asyncio.wait_for(pair.over, WAIT) == side  # the side that ended first
    assert pair.moved[side] == len(b"last words")
    assert pair.moved[1 - side] == len(b"reply")
    assert pair.relay_ends_closed()


async def test_the_side_still_sending_gets_every_byte_of_the_side_that_ended(pair: Pair) -> None:
    # b sends more than a reads for now, so the relay holds b's bytes unread when a ends:
    # closing b's socket then would reset b, and the kernel would drop what it still held
    # of a's last megabyte for b (bob's ABORT, sent as a side gives up, is such a tail)
    theirs, last = os.urandom(16 << 20), os.urandom(1 << 20)
    sending = asyncio.ensure_future(pair.loop.sock_sendall(pair.b, theirs))
    await asyncio.wait_for(pair.loop.sock_sendall(pair.a, last), WAIT)
    pair.a.shutdown(socket.SHUT_WR)
    assert await pair.recv_all(pair.b) == last
    reader = asyncio.ensure_future(pair.recv_all(pair.a))
    await asyncio.wait_for(sending, WAIT)
    pair.b.shutdown(socket.SHUT_WR)
    assert await reader == theirs
    assert await asyncio.wait_for(pair.over, WAIT) == 0
    assert pair.moved == [len(last), len(theirs)]
    assert pair.relay_ends_closed()


async def test_a_reader_that_stops_holds_the_writer_back_and_loses_nothing(pair: Pair) -> None:
    data = os.urandom(96 << 20)
    view, sent = memoryview(data), 0
    while sent < len(data):  # b reads nothing: a must come to a stop
        try:
            sent += pair.a.send(view[sent : sent + (1 << 20)])
        except BlockingIOError:
            _, writable, _ = select.select([], [pair.a], [], 0.5)
            if not writable:
                break  # held back (were it not, all of data would go)
    assert sent < len(data), sent
    reader = asyncio.ensure_future(pair.recv_all(pair.b))
    await asyncio.wait_for(pair.loop.sock_sendall(pair.a, view[sent:]), 60)
    pair.a.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(reader, 60) == data
    pair.b.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(pair.over, WAIT) == 0
    assert pair.moved == [len(data), 0]


async def test_a_peer_that_resets_ends_the_pair(pair: Pair) -> None:
    await pair.loop.sock_sendall(pair.b, b"hello")
    assert await asyncio.wait_for(pair.loop.sock_recv(pair.a, 10), WAIT) == b"hello"
    pair.a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    pair.a.close()  # RST
    assert await asyncio.wait_for(pair.over, WAIT) == 0
    assert await pair.recv_all(pair.b) == b""
    assert pair.moved == [0, 5]
    assert pair.relay_ends_closed()


async def test_closing_from_the_relay_wakes_both_threads_and_reports_no_end(pair: Pair) -> None:
    await pair.loop.sock_sendall(pair.a, b"one")
    assert await asyncio.wait_for(pair.loop.sock_recv(pair.b, 10), WAIT) == b"one"
    pair.splice.close()  # both threads are blocked, reading
    await pair.join()
    assert await pair.recv_all(pair.a) == b""
    assert await pair.recv_all(pair.b) == b""
    assert pair.ended == []
    assert pair.moved == [3, 0]
    assert pair.relay_ends_closed()


async def test_with_no_thread_to_be_had_the_pair_ends_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    start = threading.Thread.start
    started: list[threading.Thread] = []

    def second_fails(thread: threading.Thread) -> None:
        if started and thread.name == "relay-splice":
            raise RuntimeError("can't start new thread")
        started.append(thread)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", second_fails)
    p = Pair()
    try:
        assert await asyncio.wait_for(p.over, WAIT) == 1
        assert await p.recv_all(p.a) == b""
        assert await p.recv_all(p.b) == b""
        await p.join()
        assert p.relay_ends_closed()
    finally:
        p.a.close()
        p.b.close()


@pytest.mark.parametrize(
    ("memory_mb", "pipe_kib"),
    [(48, 64), (64, 64), (200, 128), (1024, 1024), (24 * 1024, 1024)],
)
def test_a_stalled_directions_pipe_fits_the_machines_memory(memory_mb: int, pipe_kib: int) -> None:
    # 256 stalled connections in a 48 MiB guest pin 256 pipes: 16 MiB, not 256
    assert splice.pipe_size(memory_mb << 20) == pipe_kib * 1024
