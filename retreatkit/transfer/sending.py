"""The sender's side of one session on a paired connection: key exchange, hints, offer,
resume, the path, then the data a batch ahead in a thread (the only place that awaits)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from retreatkit.transfer import direct, hints, pace, source
from retreatkit.transfer.errors import (
    NoKeyExchange,
    PakeFailed,
    Refused,
    RemoteProtocolError,
    TransferError,
)
from retreatkit.transfer.giveup import give_up
from retreatkit.transfer.link import Link, PeerGone, Worker, discard
from retreatkit.transfer.machine import (
    Answered,
    Confirmed,
    Done,
    Event,
    Hinted,
    PathAcked,
    Session,
    Started,
)
from retreatkit.transfer.pake import Side
from retreatkit.transfer.resume import NOTHING

Progress = Callable[[int, int | None], None]


@dataclass
class Options:
    compress: bool = True
    direct: bool = True  # offer and try direct connections
    timeout: float = 120.0
    clock: Callable[[], float] = time.monotonic  # what pace.py bounds the offer on


# seconds the peer's key exchange message has to come once paired. Each side sends its
# own first and at once: one key exchange at a time (the lock) holds back the checking
# of it, never the sending, so a sender with --count N sends it to a later receiver
# while it still checks an earlier one's, and it comes a trip across the relay after
# `paired`. A false relay, or a neighbour joining, that sends nothing holds nobody
# longer than this (nor longer than --timeout); a relay's own handshake bound is 10 s.
PAKE_WAIT = 10.0


async def handshake(
    link: Link,
    session: Session,
    lock: asyncio.Lock,
    turn: Callable[[], None] = lambda: None,
    guessed: Callable[[], None] = lambda: None,
) -> Confirmed:
    """Both key exchange messages, then both confirmations (PROTOCOL.md 4). Ours goes at
    once; the peer's must come within PAKE_WAIT seconds. Until it came well formed
    nothing was guessed, and a failure is NoKeyExchange: the words still hold. It is
    checked under `lock`, one key exchange at a time (`turn` is called once it is ours,
    and may refuse it), and from then on our confirmation is out: whatever stops the
    exchange before the peer's checks out is a failed guess (PakeFailed; `guessed` is
    called before the lock is let go), since whoever holds our confirmation can check a
    guess offline and then go quiet."""
    try:
        await link.flush(session.start())
    except PeerGone as exc:
        raise NoKeyExchange(f"{exc} before its key exchange") from None
    await link.arrived(min(PAKE_WAIT, link.timeout))
    async with lock:
        turn()
        try:
            event = await link.event(session, link.timeout)
        except (TransferError, asyncio.CancelledError) as exc:
            if not session.revealed:
                raise
            guessed()
            if isinstance(exc, PakeFailed | asyncio.CancelledError):
                raise
            who = "a receiver" if session.side is Side.SENDER else "the sender"
            raise PakeFailed(f"{who}'s key exchange did not finish: {exc}") from None
    if not isinstance(event, Confirmed):
        raise RemoteProtocolError("the peer skipped key confirmation")
    return event


async def start_racing(link: Link, session: Session, options: Options) -> direct.Racer | None:
    """Send our hints (none when direct is off or this link is direct already)."""
    racer = None
    offered: list[hints.Hint] = []
    if options.direct and not link.direct and session.keys is not None:
        racer = direct.Racer(session.side, session.keys)
        offered = await racer.listen(link.addresses()[0])
    await link.flush(session.send_hints(offered))
    return racer


def race_to(racer: direct.Racer | None, link: Link, event: Hinted, options: Options) -> None:
    """The peer's hints came: try the viable ones (if we race at all). The peer's own
    address is the one the relay's `paired` line named, never the relay's."""
    if racer is not None and options.direct:
        local, _relay = link.addresses()
        racer.connect(event.hints, link.peer_seen, local)


async def send_session(
    link: Link,
    session: Session,
    sources: source.Sources,
    options: Options,
    progress: Progress,
    said: Callable[[str], None],
    pake: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """One receiver, start to finish. `pake` is awaited around nothing: the caller holds
    its lock while `handshake` runs, so several receivers never guess at once."""
    racer = await start_racing(link, session, options)
    try:
        await send_offer(link, session, sources, options)
        answer = await _answer(link, session, racer, options)
        if not answer.accepted:
            raise Refused("the receiver declined the transfer")
        if answer.claim != NOTHING:
            await _resume(link, session, sources)
        chosen = await racer.first() if racer is not None else None
        data_link = link
        if chosen is not None:
            nonce, channel = chosen
            await link.flush(session.send_path(nonce))
            data_link = direct.link_for(channel, link.timeout)
        else:
            await link.flush(session.send_path(None))
        if racer is not None:
            await racer.close(keep=chosen[1] if chosen else None)
        said("direct" if chosen is not None or link.direct else "relay")
        try:
            await _send_data(link, data_link, session, sources, options, progress)
        except (TransferError, asyncio.CancelledError) as exc:
            await give_up(data_link, session, exc)  # where the receiver now reads
            raise
        finally:
            if data_link is not link:
                await data_link.close()
    finally:
        if racer is not None:
            await racer.close()


async def send_offer(
    link: Link, session: Session, sources: source.Sources, options: Options
) -> None:
    """The whole offer out, bounded as a whole (pace.py): a receiver, or a relay, that
    reads a little of it before each --timeout runs out holds us no longer than an honest
    one on a slow link would."""
    offer = session.send_offer(sources.offer)
    await link.flush(offer, pace.sending(len(offer), link.timeout, options.clock))


async def _answer(
    link: Link, session: Session, racer: direct.Racer | None, options: Options
) -> Answered:
    while True:
        # a person decides: a relay's idle bound holds, and TCP keepalive (channel.py)
        # finds a receiver that vanished
        event = await link.event(session, None)
        if isinstance(event, Hinted):
            race_to(racer, link, event, options)
        elif isinstance(event, Answered):
            return event
        else:
            raise RemoteProtocolError("the receiver did not answer the offer")


async def _resume(link: Link, session: Session, sources: source.Sources) -> None:
    hashes = await Worker().run(lambda: source.prefix_hashes(sources, session.claim))
    await link.flush(session.send_prefix(hashes))
    event = await link.event(session, link.timeout)
    if not isinstance(event, Started):
        raise RemoteProtocolError("the receiver did not say where to start")


async def _send_data(
    control: Link,
    data: Link,
    session: Session,
    sources: source.Sources,
    options: Options,
    progress: Progress,
) -> None:
    data.allow_stalls()
    total = sources.offer.total_size
    producer = source.Producer(session, sources, options.compress, session.start_at)
    # read and seal the next batch in a thread while this one goes out
    # (OpenSSL releases the GIL)
    worker = Worker()
    pending = worker.run(producer.fill)
    watcher = asyncio.ensure_future(_watch(control, data, session))
    try:
        more = True
        while more:
            # a source that waits (a quiet stdin) must not hide a receiver that left
            either: set[asyncio.Future[object]] = {pending, watcher}  # type: ignore[arg-type]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if watcher.done():
                # raises PeerGone if the receiver gave up or went away, before the batch
                # can: sealing past the receiver's ABORT fails on the closed session
                watcher.result()
                if not pending.done():
                    break  # DONE: END went out with the last batch
            more = pending.result()
            frames = producer.take()
            if more:
                pending = worker.run(producer.fill)
            data.write(frames)
            drain = asyncio.ensure_future(data.drain())
            await asyncio.wait({drain, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if watcher.done():
                drain.cancel()  # DONE: everything arrived, nothing is left to drain
                watcher.result()
                break
            await drain
            progress(session.bytes_done, total)
        async with asyncio.timeout(data.timeout):
            await asyncio.shield(watcher)
    except TimeoutError:
        raise PeerGone("the receiver did not confirm the transfer in time") from None
    except PeerGone as exc:
        # the connection failed under a write; the receiver's own reason (an ABORT read
        # just before) says more than "the connection broke"
        if not watcher.done():
            await asyncio.wait({watcher}, timeout=0.5)
        if watcher.done() and not watcher.cancelled():
            reason = watcher.exception()
            if isinstance(reason, TransferError) and reason is not exc:
                raise reason from None
        raise
    except (TransferError, asyncio.CancelledError):
        # what was sealed must go out before the ABORT: its nonce comes after theirs
        with contextlib.suppress(TransferError):
            data.write(producer.stop())
        raise
    finally:
        producer.stop()
        discard(watcher)
        discard(pending)
    progress(session.bytes_done, total)


async def _watch(control: Link, data: Link, session: Session) -> None:
    """The receiver's records while data goes out: on a direct path PATH_ACK comes on the
    relay first, everything after it on the direct connection. Returns at DONE."""
    link = control
    while True:
        event: Event = await link.event(session, None)
        if isinstance(event, PathAcked) and data is not control:
            link = data
            await control.close()
            continue
        if isinstance(event, Done):
            return
        raise RemoteProtocolError("the receiver spoke out of turn")
