"""A relay that is also a hostile sender, against the real `bob recv` on loopback: the
address its `paired` line names is the only one besides the receiver's own networks that
the receiver's direct connections may reach, and loopback only when that address is
loopback too (PROTOCOL.md 6, hints and direct connections)."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
from pathlib import Path

import pytest

from retreatkit.testing import bob_argv
from retreatkit.transfer.codes import Code
from retreatkit.transfer.hints import Hint
from retreatkit.transfer.offer import Offer
from retreatkit.transfer.testing import IO_TIMEOUT, fake_relay, sender_over

pytestmark = pytest.mark.e2e
CODE = Code("7", ("alpha", "abandon"))
TIMEOUT = 60.0


def receive_text_from_a_hostile_relay(
    paired: str, home: dict[str, str], out: Path, wait_for_dial: bool
) -> tuple[subprocess.CompletedProcess[bytes], int]:
    """`bob recv` through a relay that says `paired PAIRED` and then plays the sender,
    hinting only a listener of this test on 127.0.0.1; the relay is on loopback too.
    Returns the receive and how many connections reached the listener. With
    `wait_for_dial`, the sender offers nothing until the receiver dialled the listener."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(IO_TIMEOUT)
    trap = Hint(ipaddress.ip_address("127.0.0.1"), listener.getsockname()[1])
    dialled: list[socket.socket] = []

    def serve(conn: socket.socket, request: bytes) -> None:
        conn.sendall(f"paired {paired}\n".encode())
        session = sender_over(conn, CODE, hinted=[trap])
        if wait_for_dial:
            dialled.append(listener.accept()[0])
        conn.sendall(session.send_offer(Offer(text="hello")))
        while session.next_event() is None:  # the answer
            session.receive_data(conn.recv(4096))
        conn.sendall(session.send_path(None) + session.end())
        while session.next_event() is None:  # DONE
            session.receive_data(conn.recv(4096))

    try:
        with fake_relay(serve) as relay:
            got = subprocess.run(
                [*bob_argv("recv", "--relay", relay.address, "-o", str(out)), str(CODE)],
                capture_output=True,
                timeout=TIMEOUT,
                env={**os.environ, **home},
            )
        # the receiver has exited: a connect it made is in the listener's queue by now
        listener.settimeout(0)
        try:
            while True:
                dialled.append(listener.accept()[0])
        except BlockingIOError:
            pass
        return got, len(dialled)
    finally:
        for sock in dialled:
            sock.close()
        listener.close()


def test_the_receiver_dials_a_loopback_hint_when_the_relay_saw_the_peer_on_loopback(
    home: dict[str, str], tmp_path: Path
) -> None:
    got, dialled = receive_text_from_a_hostile_relay("127.0.0.1:40000", home, tmp_path, True)
    assert got.returncode == 0, got.stderr
    assert got.stdout == b"hello\n"
    assert dialled == 1


@pytest.mark.parametrize("paired", ["10.9.9.9:40000", "relay.retreat.lan:40000", "nonsense"])
def test_a_paired_line_naming_another_address_never_opens_our_loopback(
    paired: str, home: dict[str, str], tmp_path: Path
) -> None:
    """The relay is on this computer, but says the peer came from elsewhere (or says no
    address at all): the peer's loopback hint is not tried, so a hostile peer cannot make
    us connect to a port of our own computer."""
    got, dialled = receive_text_from_a_hostile_relay(paired, home, tmp_path, False)
    assert got.returncode == 0, got.stderr
    assert got.stdout == b"hello\n"
    assert "Path: relay" in got.stderr.decode().splitlines()
    assert dialled == 0
