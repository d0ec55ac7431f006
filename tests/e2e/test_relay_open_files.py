"""The relay as a real process at its open-file limit: what peers get, what is logged, and
that every descriptor made is closed.

The limit is lowered on the running relay (prlimit) so that exactly the wanted number of
descriptors is left when the receiver comes. Waits are polls with a deadline, never sleeps.
"""

from __future__ import annotations

import resource
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from retreatkit.relay.matching import Limits, most_unpaired
from retreatkit.testing import RelayProcess, open_fds, start_relay
from retreatkit.transfer.testing import RelayLines
from tests.e2e.test_relay_limits import endings, status

pytestmark = pytest.mark.e2e

DEADLINE = 20.0  # seconds to wait for the relay to notice something; only ever a bound
IO_TIMEOUT = 10.0


def until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"never {what}")


def fd_numbers(pid: int) -> list[int]:
    return sorted(int(name.name) for name in Path(f"/proc/{pid}/fd").iterdir())


@contextmanager
def files_left(pid: int, left: int) -> Iterator[None]:
    """Lower the relay's soft open-file limit so that `left` more descriptors fit (the
    kernel hands out the lowest free number, and refuses one at the limit or above)."""
    before = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    numbers = fd_numbers(pid)
    limit = len(numbers)
    while limit - sum(n < limit for n in numbers) < left:
        limit += 1
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, before[1]))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, before)


class Client(RelayLines):
    """One TCP connection to the relay."""

    def __init__(self, relay: RelayProcess, stack: ExitStack) -> None:
        self.sock = stack.enter_context(
            socket.create_connection((relay.host, relay.port), timeout=IO_TIMEOUT)
        )
        self.buf = b""


@contextmanager
def relay_waiting(tmp_path: Path) -> Iterator[tuple[RelayProcess, Client, int, ExitStack]]:
    """A relay with a sender waiting on nameplate 777, and its descriptors before."""
    config = tmp_path / "retreat.toml"
    config.write_text("[relay]\n")
    relay = start_relay(config)
    try:
        with ExitStack() as stack:
            status(relay)
            baseline = open_fds(relay.process.pid)
            sender = Client(relay, stack)
            sender.sock.sendall(b"bob/1 send 777\n")
            assert sender.line() == b"ok 777\n"
            yield relay, sender, baseline, stack
    finally:
        relay.stop()


def log_lines(relay: RelayProcess) -> list[str]:
    """Every line the relay wrote to stderr, once it stopped."""
    relay.process.popen.terminate()
    _, lines = relay.process.finish()
    return lines


@pytest.mark.parametrize("left", [1, 2], ids=["first-dup-fails", "second-dup-fails"])
def test_a_pair_with_no_files_to_splice_is_copied_and_nothing_leaks(
    tmp_path: Path, left: int
) -> None:
    """Splicing a pair duplicates both sockets first: a duplicate that fails leaves the pair
    with its transports, forwarding as without splice; a duplicate made is closed."""
    with relay_waiting(tmp_path) as (relay, sender, baseline, stack):
        pid = relay.process.pid
        with files_left(pid, left):
            receiver = Client(relay, stack)
            receiver.sock.sendall(b"bob/1 recv 777\n")
            assert receiver.line().startswith(b"paired 127.0.0.1:")
            assert sender.line().startswith(b"paired 127.0.0.1:")
            up, down = bytes(range(256)) * 4, b"back" * 100
            sender.sock.sendall(up)
            receiver.sock.sendall(down)
            assert receiver.read(len(up)) == up
            assert sender.read(len(down)) == down
            relay.process.wait_for(r"relay WARNING a pair goes on without splice")
        sender.sock.close()
        assert receiver.rest() == b""  # the sender's end, passed on
        receiver.sock.close()  # as bob does on it: the pair ends once both have
        until(lambda: open_fds(pid) == baseline, f"back to {baseline} descriptors")
        assert endings(status(relay)) == {"completed": 2}
        lines = log_lines(relay)
    warned = [line for line in lines if " WARNING " in line]
    assert [line.split(" ", 2)[2] for line in warned] == [
        "retreatkit.relay WARNING a pair goes on without splice (copied through the relay),"
        " out of open files: [Errno 24] Too many open files"
    ]
    assert not [line for line in lines if "Traceback" in line]


def test_a_pair_with_no_files_for_its_pipes_is_closed_and_counted_busy(tmp_path: Path) -> None:
    """The sockets are duplicated, their transports dropped, and the pipes cannot be made:
    both peers get EOF after `paired` (no line can follow it), no join counts as failed."""
    with relay_waiting(tmp_path) as (relay, sender, baseline, stack):
        pid = relay.process.pid
        with files_left(pid, 3):
            receiver = Client(relay, stack)
            receiver.sock.sendall(b"bob/1 recv 777\n")
            assert receiver.line().startswith(b"paired 127.0.0.1:")
            assert sender.line().startswith(b"paired 127.0.0.1:")
            assert receiver.rest() == b""
            assert sender.rest() == b""
        until(lambda: open_fds(pid) == baseline, f"back to {baseline} descriptors")
        done = status(relay)
        assert endings(done) == {"busy": 2}
        assert (done["handshakes_failed"], done["transfers_active"]) == (0, 0)
        lines = log_lines(relay)
    warned = [line for line in lines if " WARNING " in line]
    assert [line.split(" ", 2)[2] for line in warned] == [
        "retreatkit.relay WARNING a pair closed as it formed, out of open files or pipes:"
        " [Errno 24] Too many open files"
    ]
    assert not [line for line in lines if "Traceback" in line]


LOW = 200  # an open-file limit, soft and hard, that the relay cannot raise


def test_idle_connections_from_a_few_addresses_cannot_take_every_file(tmp_path: Path) -> None:
    """Four addresses, each under its 64, could hold every file of a relay limited to 200:
    new clients and the admin endpoint were reset, nothing logged. Connections not yet
    paired are bounded in all: past the bound they are told `busy`, said in the log."""
    bound = most_unpaired(LOW, Limits().pairs)
    config = tmp_path / "retreat.toml"
    config.write_text("[relay]\nhandshake_timeout = 120.0\n")
    relay = start_relay(config, wrapper=("prlimit", f"--nofile={LOW}:{LOW}", "--"))
    try:
        with ExitStack() as stack:
            held = []
            for i in range(LOW + 20):
                sock = stack.enter_context(socket.socket())
                sock.settimeout(IO_TIMEOUT)
                sock.bind((f"127.0.2.{10 + i // 60}", 0))
                sock.connect((relay.host, relay.port))
                held.append(sock)
            for sock in held[bound:]:
                assert sock.recv(100) == b"busy the relay is full; try again later\n"
                assert sock.recv(100) == b""
            until(lambda: status(relay)["connections_open"] == bound, f"{bound} open")
            late = Client(relay, stack)
            late.sock.sendall(b"bob/1 send\n")
            assert late.line() == b"busy the relay is full; try again later\n"
            with urllib.request.urlopen(f"{relay.admin}/healthz", timeout=IO_TIMEOUT) as answer:
                assert answer.read() == b"ok\n"
            for sock in held:
                sock.close()
            until(lambda: status(relay)["connections_open"] == 0, "the idle ones gone")
            fresh = Client(relay, stack)
            fresh.sock.sendall(b"bob/1 send\n")
            assert fresh.line().startswith(b"ok ")
            assert status(relay)["ended"]["busy"] == LOW + 20 - bound + 1
    finally:
        lines = log_lines(relay)
    warned = [line for line in lines if " WARNING " in line]
    assert [line.split(" ", 2)[2] for line in warned] == [
        f"retreatkit.relay WARNING {bound} connections are not yet paired, the most the"
        " open-file limit leaves room for: new ones are told busy (raise the limit,"
        f" ulimit -n); most from 127.0.2.10 ({bound})"
    ]
    assert not [line for line in lines if "Traceback" in line]
