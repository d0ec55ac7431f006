"""Test tools for bob: two Sessions joined in memory; hostile peers and relays on sockets.

A `Peer` speaks bob/1 through a real relay with blocking sockets and a real Session, and
then says whatever the test makes it say. A `FakeRelay` is a relay that lies. `Handed`
gives the asyncio sender connections the test made; `Heard` keeps what a user would see.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator, Sequence

from retreatkit.relay import wire
from retreatkit.transfer.codes import Code
from retreatkit.transfer.errors import RemoteProtocolError
from retreatkit.transfer.hints import Hint
from retreatkit.transfer.link import Link
from retreatkit.transfer.machine import (
    Answered,
    Confirmed,
    Event,
    Hinted,
    Offered,
    PathChosen,
    Session,
)
from retreatkit.transfer.offer import Offer
from retreatkit.transfer.pake import Side
from retreatkit.transfer.records import Kind
from retreatkit.transfer.rendezvous import Closed
from retreatkit.transfer.resume import NOTHING, Claim

CODE = Code("7", ("purple", "sofa"))


def connected_pair(sender_code: Code = CODE, receiver_code: Code = CODE) -> tuple[Session, Session]:
    """A sender and a receiver that have done the PAKE, confirmed their keys and told
    each other they listen nowhere (empty HINTS)."""
    sender, receiver = Session(Side.SENDER, sender_code), Session(Side.RECEIVER, receiver_code)
    receiver.receive_data(sender.start())
    sender.receive_data(receiver.start())
    if receiver.next_event() is not None or sender.next_event() is not None:
        raise RemoteProtocolError("an event before key confirmation")
    receiver.receive_data(sender.data_to_send())
    sender.receive_data(receiver.data_to_send())
    if not isinstance(receiver.next_event(), Confirmed):
        raise RemoteProtocolError("the receiver did not confirm")
    if not isinstance(sender.next_event(), Confirmed):
        raise RemoteProtocolError("the sender did not confirm")
    receiver.receive_data(sender.send_hints([]))
    sender.receive_data(receiver.send_hints([]))
    if receiver.next_event() != Hinted(()) or sender.next_event() != Hinted(()):
        raise RemoteProtocolError("no hints")
    return sender, receiver


def accepted_pair(offer: Offer, claim: Claim = NOTHING) -> tuple[Session, Session]:
    """A pair past the offer, a yes (holding nothing) and PATH: the data may flow."""
    sender, receiver = connected_pair()
    receiver.receive_data(sender.send_offer(offer))
    if not isinstance(receiver.next_event(), Offered):
        raise RemoteProtocolError("no offer")
    sender.receive_data(receiver.answer(True, claim))
    if sender.next_event() != Answered(True, claim):
        raise RemoteProtocolError("no answer")
    if claim == NOTHING:
        receiver.receive_data(sender.send_path(None))
        if receiver.next_event() != PathChosen(None):
            raise RemoteProtocolError("no path")
    return sender, receiver


IO_TIMEOUT = 30.0


class RelayLines:
    """A blocking connection to the relay, whose lines are read the way bob reads them."""

    sock: socket.socket
    buf: bytes

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError(f"relay closed; had {self.buf!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"relay closed after {len(self.buf)} of {n} bytes")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def rest(self) -> bytes:
        """Everything until the relay closes (EOF)."""
        chunks = [self.buf]
        self.buf = b""
        while chunk := self.sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


class Peer(RelayLines):
    """One side of a session through the relay, driven step by step by the test."""

    def __init__(
        self,
        relay: tuple[str, int],
        code: Code,
        side: Side = Side.SENDER,
        source: str | None = None,
    ) -> None:
        self.sock = socket.socket()
        self.sock.settimeout(IO_TIMEOUT)
        if source is not None:
            self.sock.bind((source, 0))  # another loopback address is another host here
        self.sock.connect(relay)
        role = wire.Role.SEND if side is Side.SENDER else wire.Role.RECV
        self.sock.sendall(wire.Request(role, code.nameplate).encode())
        self.session = Session(side, code)
        self.buf = b""

    def event(self) -> Event:
        if self.buf:
            self.session.receive_data(self.buf)
            self.buf = b""
        while True:
            event = self.session.next_event()
            self.sock.sendall(self.session.data_to_send())
            if event is not None:
                return event
            self.session.receive_data(self.sock.recv(65536))

    def handshake(self) -> None:
        """The key exchange and empty HINTS both ways (this peer listens nowhere)."""
        self.sock.sendall(self.session.start())
        assert isinstance(self.event(), Confirmed)
        self.sock.sendall(self.session.send_hints([]))
        assert isinstance(self.event(), Hinted)

    def offer(self, offer: Offer) -> bool:
        """Offer; on a yes that holds nothing, choose to stay on this connection."""
        self.sock.sendall(self.session.send_offer(offer))
        answer = self.event()
        assert isinstance(answer, Answered)
        if answer.accepted and answer.claim == NOTHING:
            self.sock.sendall(self.session.send_path(None))
        return answer.accepted

    def receive_offer(self) -> Offer:
        event = self.event()
        assert isinstance(event, Offered)
        return event.offer

    def seal(self, kind: Kind, body: bytes) -> None:
        """A record the session would not send: its type and body are the test's, even
        after a final record."""
        sealer = self.session._sealer
        assert sealer is not None
        sealer.closed = False
        self.sock.sendall(sealer.seal(kind, body))

    def close(self) -> None:
        self.sock.close()


class FakeRelay:
    """A listening socket that hands each connection to `serve` in a thread."""

    def __init__(self, serve: Callable[[socket.socket, bytes], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.serve = serve
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                conn.settimeout(IO_TIMEOUT)
                with conn, contextlib.suppress(OSError, EOFError):
                    request = b""
                    while not request.endswith(b"\n"):
                        chunk = conn.recv(1)
                        if not chunk:
                            raise EOFError
                        request += chunk
                    self.serve(conn, request)

    def close(self) -> None:
        self.listener.close()


@contextlib.contextmanager
def fake_relay(serve: Callable[[socket.socket, bytes], None]) -> Iterator[FakeRelay]:
    relay = FakeRelay(serve)
    try:
        yield relay
    finally:
        relay.close()


def sender_over(conn: socket.socket, code: Code, hinted: Sequence[Hint] = ()) -> Session:
    """Play a sender over a raw connection (for a fake relay that is also the peer), up to
    the receiver's HINTS; it hints `hinted` (an honest one that listens nowhere: none)."""
    session = Session(Side.SENDER, code)
    conn.sendall(session.start())
    while True:
        event = session.next_event()
        conn.sendall(session.data_to_send())
        if isinstance(event, Confirmed):
            conn.sendall(session.send_hints(list(hinted)))
        if isinstance(event, Hinted):
            return session
        if event is None:
            data = conn.recv(65536)
            if not data:
                raise EOFError
            session.receive_data(data)


class Handed:
    """A sender's rendezvous that hands over the given connections, already paired, all
    at once if asked (as a hostile relay could)."""

    def __init__(self, links: list[Link], nameplate: str = CODE.nameplate) -> None:
        self.links = links
        self.nameplate = nameplate
        self.closed = False

    async def open(self, nameplate: str | None) -> str:
        return self.nameplate

    async def next(self) -> tuple[Link, str]:
        if self.closed or not self.links:
            raise Closed
        return self.links.pop(0), "10.0.0.9:1"

    def one_more(self) -> None:
        """It hands over what it was given, no more."""

    async def close(self) -> None:
        self.closed = True


class Heard:
    """A reporter (aio.Reporter) that keeps the lines a user would see, and resumes."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self.resumes: list[Claim] = []

    def code(self, code: Code) -> None: ...
    def paired(self, peer: str) -> None: ...
    def path(self, which: str) -> None: ...
    def progress(self, done: int, total: int | None) -> None: ...
    def saved(self, name: str) -> None: ...
    def text(self, text: str) -> None: ...

    def say(self, line: str) -> None:
        self.said.append(line)

    def resumed(self, offer: Offer, claim: Claim, start: Claim) -> None:
        self.resumes.append(start)
