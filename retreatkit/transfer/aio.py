"""The asyncio adapter: a sender's offer to one or more receivers, a receiver's session;
what goes wrong said once, to the user and to the peer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

from retreatkit.relay import wire
from retreatkit.transfer import codes, resume, source
from retreatkit.transfer.direct import Racer
from retreatkit.transfer.errors import (
    PakeFailed,
    Refused,
    RemoteProtocolError,
    TransferError,
)
from retreatkit.transfer.giveup import give_up, tell_peer
from retreatkit.transfer.link import (
    CONNECT_TIMEOUT,
    Link,
    PeerAborted,
    PeerGone,
    Relay,
    RelayError,
    Unreachable,
    Worker,
    connect,
)
from retreatkit.transfer.machine import Session
from retreatkit.transfer.meet import Connector, Place, meet
from retreatkit.transfer.offer import Offer, show_name
from retreatkit.transfer.pake import Side
from retreatkit.transfer.receive import WriteError, Writer
from retreatkit.transfer.receiving import Sink, accepted, asked, offered, receive_data
from retreatkit.transfer.rendezvous import (
    Closed,
    Rendezvous,
)
from retreatkit.transfer.sending import Options, handshake, send_session

__all__ = ["Options", "PeerAborted", "PeerGone", "Relay", "RelayError", "Rendezvous", "Worker"]
__all__ += ["CONNECT_TIMEOUT", "Connector", "Place", "Unreachable", "receive", "send", "tell_peer"]
__all__ += ["Link"]
PEER_TIMEOUT = 120.0  # longest silence from a paired peer outside of a prompt (--timeout)
KEPT = (
    "The partial files are kept: to resume, ask the sender to run the same bob send again,"
    " and receive it into the same folder."
)
KEPT_FULL = (
    "What arrived is kept: free space on that disk, then ask the sender to run the same"
    " bob send again, and receive it into the same folder to resume."
)
STREAM_LOST = "Nothing was kept: a stream cannot be resumed. Ask the sender to send it again."
# Every FILE_END came, so each file is what the key's holder sent (PROTOCOL.md 5); only
# END did not, so no DONE went back and the sender counts the transfer as failed. The
# record stays: the same send again ends it on both sides with no data moving (a stream
# of unknown size is never claimed, so it would travel again: no advice then).
ALL_NAMED = (
    "Every file arrived whole and checked, and has its name; only the sender's final"
    " record did not, so the sender was not told"
)
ALL_NAMED_AGAIN = (
    ". To end it on both sides, ask the sender to run the same bob send again, and"
    " receive it into the same folder: no data travels again."
)


class Reporter(Protocol):
    """What the user sees; the CLI implements it, tests record it."""

    def code(self, code: codes.Code) -> None: ...
    def paired(self, peer: str) -> None: ...
    def path(self, which: str) -> None: ...
    def progress(self, done: int, total: int | None) -> None: ...
    def saved(self, name: str) -> None: ...
    def text(self, text: str) -> None: ...
    def say(self, line: str) -> None: ...
    def resumed(self, offer: Offer, claim: resume.Claim, start: resume.Claim) -> None: ...


Confirm = Callable[[Offer, Writer | None, str], Awaitable[bool]]


# -- the sender ---------------------------------------------------------------------------


async def send(
    rendezvous: Rendezvous,
    sources: source.Sources,
    code: codes.Code | None,
    reporter: Reporter,
    options: Options | None = None,
    count: int = 1,
) -> None:
    """Offer to `count` receivers, one PAKE each, one at a time: a failed one closes the
    offer, so the passphrase gives whoever guesses one try (PROTOCOL.md 2)."""
    options = options or Options()
    nameplate = await rendezvous.open(code.nameplate if code else None)
    try:
        code = code or codes.generate(nameplate)
        reporter.code(code)
        lock = asyncio.Lock()
        if count == 1:
            link, peer = await rendezvous.next()
            await rendezvous.close()
            reporter.paired(peer)
            await _serve(link, code, sources, reporter.progress, reporter.path, options, lock)
            return
        await _serve_many(rendezvous, code, sources, reporter, options, count, lock)
    finally:
        await rendezvous.close()


async def _serve(
    link: Link,
    code: codes.Code,
    sources: source.Sources,
    progress: Callable[[int, int | None], None],
    path: Callable[[str], None],
    options: Options,
    lock: asyncio.Lock,
    gate: Gate | None = None,
    counted: Callable[[], None] = lambda: None,
) -> None:
    """One receiver: `counted` once its key exchange is done (or failed as a guess). A
    connection that sends no well-formed key exchange message made no guess and is no
    receiver (NoKeyExchange); one whose exchange stopped after our confirmation went out
    counts as a failed guess, however it stopped (handshake). With a `gate` (several
    receivers), the gate closes before the lock is let go, so no other key exchange
    starts after it."""
    session = Session(Side.SENDER, code)

    def turn() -> None:
        if gate is not None and gate.closed:
            raise Closed

    def guessed() -> None:
        if gate is not None:
            gate.closed = True
        counted()

    try:
        await handshake(link, session, lock, turn, guessed)
        counted()
        await send_session(link, session, sources, options, progress, path)
    except (TransferError, asyncio.CancelledError) as exc:
        await give_up(link, session, exc)
        raise
    finally:
        await link.close()


async def _serve_many(
    rendezvous: Rendezvous,
    code: codes.Code,
    sources: source.Sources,
    reporter: Reporter,
    options: Options,
    count: int,
    lock: asyncio.Lock,
) -> None:
    """Up to `count` receivers, each numbered once its key exchange is done. Connections
    that join and send no key exchange message are no receivers: each is said, and its
    place goes to whoever joins next. At most `count` joined connections are served at
    once, whether they proved themselves yet or not."""
    failures: list[BaseException] = []
    gate = Gate()
    served = numbered = joined = 0  # joined: connections taking a place, numbered or not
    moved = asyncio.Event()  # a place came free, or the offer closed
    unproven: set[asyncio.Task[None]] = set()  # joined, key exchange not yet done

    async def one(link: Link, peer: str) -> None:
        nonlocal served, numbered, joined
        number = 0

        def counted() -> None:
            nonlocal number, numbered
            numbered += 1
            number = numbered
            reporter.say(f"Receiver {number} of {count} ({peer}): connected")
            unproven.discard(asyncio.current_task())
            moved.set()

        def path(which: str) -> None:
            reporter.say(f"Receiver {number} of {count}: Path: {which}")

        try:
            await _serve(link, code, sources, _quiet, path, options, lock, gate, counted)
        except Closed:
            return
        except PakeFailed as exc:
            gate.closed = True
            for task in unproven:  # those still to send a key exchange message: no more
                task.cancel()
            failures.append(exc)
            reporter.say(f"Receiver {number} of {count}: ERROR: {exc}")
            await rendezvous.close()
            return
        except TransferError as exc:
            if not number:  # no key exchange made (NoKeyExchange, or anything else before
                # one): no receiver, and its place is free again, at the rendezvous too;
                # kept, it would hold a place for ever and the sender would wait on it
                joined -= 1
                rendezvous.one_more()
                reporter.say(f"Not counted as a receiver: {peer} ({exc})")
                return
            failures.append(exc)
            reporter.say(f"Receiver {number} of {count}: ERROR: {exc}")
            return
        finally:
            unproven.discard(asyncio.current_task())
            moved.set()
        served += 1
        reporter.say(f"Receiver {number} of {count}: done")

    async with asyncio.TaskGroup() as group:
        while not gate.closed and numbered < count:
            if joined >= count:  # every place taken: wait for one to come free
                moved.clear()
                await moved.wait()
                continue
            try:
                link, peer = await rendezvous.next()
            except Closed:
                break
            except TransferError as exc:  # the relay went away: those served go on
                failures.append(exc)
                reporter.say(f"Receiver {numbered + 1} of {count}: ERROR: {exc}")
                break
            joined += 1
            unproven.add(group.create_task(one(link, peer)))
        if numbered >= count:
            await rendezvous.close()  # every place is a receiver's: nobody else may join
    if gate.closed:
        raise PakeFailed(
            f"wrong passphrase from a receiver: the offer is closed after {served} of {count}"
        )
    if served < count:
        raise (
            failures[0]
            if len(failures) == 1 and not served
            else TransferError(f"{served} of {count} receivers got it")
        )


class Gate:
    """Whether the offer still takes receivers."""

    closed = False


def _quiet(*_: object) -> None:
    """A receiver's progress among several is not drawn (one bar cannot show them)."""


# -- the receiver -------------------------------------------------------------------------


def via_relay(
    relay: Relay, timeout: float, direct: bool = False, reach: float = CONNECT_TIMEOUT
) -> Connector:
    """Connect to the relay (or, `direct`, to a sender that is its own rendezvous)."""

    async def connector(request: wire.Request) -> Link:
        link = await connect(relay, request, timeout, reach)
        link.direct = direct
        return link

    return connector


async def receive(
    places: Connector | Sequence[Sequence[Place]],
    code: codes.Code,
    output: Path,
    reporter: Reporter,
    confirm: Confirm,
    options: Options | None = None,
    make_writer: Callable[[Path, Offer], Writer] = Writer,
) -> Offer:
    """Receive from the sender met at `places` (a connector: one place; else stages of
    places, meet.meet)."""
    options = options or Options()
    stages = [[Place(places)]] if callable(places) else places
    met = await meet(stages, code, reporter.say)
    link = data_link = met.link
    session = met.session
    writer: Writer | None = None
    racer: Racer | None = None
    try:
        reporter.paired(met.paired.text)
        offer, racer = await offered(link, session, options)
        if offer.text is None:
            writer = make_writer(output, offer)
            session.stream_limit = writer.check_space()
        try:
            ok = await asked(link, session, confirm(offer, writer, met.paired.text))
        except Refused as exc:
            if exc.public is None:  # the user's no; a refusal with a reason is an ABORT
                await link.flush(session.answer(False))
            raise
        if not ok:
            await link.flush(session.answer(False))
            raise Refused("transfer declined")
        await link.flush(session.answer(True, writer.claim if writer else resume.NOTHING))
        if offer.text is not None:
            reporter.text(offer.text)
        sink = Sink(reporter.progress, reporter.saved, reporter.path)
        claim = writer.claim if writer else resume.NOTHING
        data_link = await accepted(link, session, writer, racer, sink)
        if writer is not None and claim != resume.NOTHING:
            reporter.resumed(offer, claim, session.start_at)
        await receive_data(data_link, session, writer, sink)
        if data_link.buffered():
            raise RemoteProtocolError("the sender sent data after its final record")
        await data_link.flush(session.done())
        if writer is not None:
            writer.complete()
            for offered_name, name in writer.renamed:
                reporter.say(
                    f"'{show_name(offered_name)}' appeared meanwhile: saved as '{show_name(name)}'"
                )
        await data_link.until_closed(session)
        return offer
    except (TransferError, asyncio.CancelledError) as exc:
        # a connection that broke or went quiet, or our user's Ctrl-C, leaves the part for
        # a resume (a 4 GB file at 90% must not start over); the sender's stop (an
        # ABORT), a tampered record or a refusal leave nothing
        stopped_here = isinstance(exc, asyncio.CancelledError)
        # a full disk, too: what arrived is as good as before, and the rest needs room
        # (unless not even the record of where it went could be written)
        full = isinstance(exc, WriteError) and exc.full
        full = full and writer is not None and writer.record.fd is not None
        keep = (type(exc) is PeerGone or stopped_here or full) and writer is not None
        if writer is not None:
            recorded = keep and writer.record.fd is not None
            # cut before its first byte: nothing arrived, so nothing stays (no record, no
            # empty folder: the folder as the receive found it) and no word of partial
            # files, which "The partial files are kept" said there were
            empty = recorded and not writer.holds_anything
            lost = recorded and not empty and not writer.worth_keeping
            writer.abort(keep=keep and not empty and not lost)
            if lost:
                reporter.say(STREAM_LOST)
            elif recorded and not empty:
                if not writer.all_named:
                    reporter.say(KEPT_FULL if full else KEPT)
                elif writer.offer.total_size is None:
                    reporter.say(ALL_NAMED + ".")
                else:
                    reporter.say(ALL_NAMED + ALL_NAMED_AGAIN)
        if not isinstance(exc, Refused) or exc.public is not None:
            await give_up(data_link, session, exc)
        raise
    finally:
        if racer is not None:  # a refusal never reaches accepted(), which closes it too:
            await racer.close()  # its dials, dropped pending, were destroyed pending
        if writer is not None:
            writer.close()
        await link.close()
        if data_link is not link:
            await data_link.close()
