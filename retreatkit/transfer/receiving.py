"""The receiver's side of one session on a paired connection: key exchange, hints, the
offer and the question, resume, the path, then the data, decrypted and written in a
worker thread while the event loop only moves bytes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from retreatkit.transfer import direct, pace, resume
from retreatkit.transfer.channel import Frame
from retreatkit.transfer.errors import RemoteProtocolError, TransferError
from retreatkit.transfer.link import Link, PeerAborted, PeerGone, Worker, discard
from retreatkit.transfer.machine import (
    Aborted,
    Ended,
    FileData,
    FileEnd,
    Hinted,
    Offered,
    PathChosen,
    Prefixed,
    Session,
)
from retreatkit.transfer.offer import Offer
from retreatkit.transfer.receive import Writer
from retreatkit.transfer.records import RECORD_SIZE
from retreatkit.transfer.sending import Options, race_to, start_racing

OUT = 1 << 20  # plaintext gathered before one write to the file


@dataclass
class Sink:
    """What the data phase reports (from the event loop, never the worker)."""

    progress: Callable[[int, int | None], None]
    saved: Callable[[str], None]
    said: Callable[[str], None] = lambda _: None


async def offered(
    link: Link, session: Session, options: Options
) -> tuple[Offer, direct.Racer | None]:
    """Our hints out, the sender's in (and raced), then its offer: each record within
    --timeout of the one before, and the whole offer within pace.py's bound from its
    first record (else TooSlow)."""
    racer = await start_racing(link, session, options)
    bound = pace.Pace(lambda: session.offer_coming, link.timeout, pace.late_offer, options.clock)
    try:
        while True:
            event = await link.event(session, link.timeout, bound)
            if isinstance(event, Hinted):
                race_to(racer, link, event, options)
            elif isinstance(event, Offered):
                return event.offer, racer
            else:
                raise RemoteProtocolError("the sender sent no offer")
    except BaseException:
        if racer is not None:
            await racer.close()
        raise


async def asked(link: Link, session: Session, question: Awaitable[bool]) -> bool:
    """The user's answer to the offer, unless the sender stops first. Nothing is due from
    an honest sender while its offer waits: what does come is its ABORT (its user pressed
    Ctrl-C), its connection's end, or a record it has no right to send, and each ends the
    question at once. Unwatched, a receiver at the prompt heard of none of them until its
    user answered, and then only "the other side closed the connection"."""
    asking = asyncio.ensure_future(question)
    watching = asyncio.ensure_future(link.event(session, None))
    try:
        await asyncio.wait({asking, watching}, return_when=asyncio.FIRST_COMPLETED)
        if not watching.done():
            return asking.result()
        # the sender's doing wins over an answer given at the same moment: it has gone
        event = watching.result()  # raises for an ABORT, an end, a broken record
        raise RemoteProtocolError(f"the sender sent {type(event).__name__} before the answer")
    finally:
        discard(asking)
        discard(watching)
        # each is cancelled where it waits (stdin's reader, the socket), which it leaves
        await asyncio.gather(asking, watching, return_exceptions=True)


async def accepted(
    link: Link,
    session: Session,
    writer: Writer | None,
    racer: direct.Racer | None,
    sink: Sink,
) -> Link:
    """After our yes: the resume exchange, then PATH. Returns the link the data comes on."""
    try:
        if writer is not None and writer.claim != resume.NOTHING:
            event = await link.event(session, link.timeout)
            if not isinstance(event, Prefixed):
                raise RemoteProtocolError("the sender sent no hashes of what we hold")
            ours = await Worker().run(writer.prefix_hashes)
            start = resume.start(session.files, writer.claim, event.hashes, ours)
            writer.start_at(start)
            await link.flush(session.send_from(start))
        if writer is not None:
            writer.make_folders()
        event = await link.event(session, link.timeout)
        if not isinstance(event, PathChosen):
            raise RemoteProtocolError("the sender chose no path")
        if event.direct is None:
            sink.said("direct" if link.direct else "relay")
            return link
        if racer is None:
            raise RemoteProtocolError("the sender chose a direct path we never offered")
        channel = await racer.take(event.direct)
        await racer.close(keep=channel)
        await link.flush(session.path_ack())
        await link.close()
        sink.said("direct")
        return direct.link_for(channel, link.timeout)
    finally:
        if racer is not None:
            await racer.close()


class _Stopped(Exception):
    """The data phase ended while a batch was in the worker."""


@dataclass
class _Batch:
    frames: list[Frame]
    saved: list[str] = field(default_factory=list)
    ended: bool = False


class Pump:
    """The data phase: the loop hands whole frames to a worker thread, which decrypts them
    straight into one buffer and writes it to the file a megabyte at a time (OpenSSL and
    os.write run without the GIL). Reading pauses while frames wait (channel.HIGH)."""

    def __init__(self, link: Link, session: Session, writer: Writer | None, sink: Sink) -> None:
        self.link = link
        self.session = session
        self.writer = writer
        self.sink = sink
        self.total = session.offer.total_size if session.offer else None
        self._worker = Worker()
        self._lock = threading.Lock()  # the session: the worker's, or the loop's abort
        self._out = bytearray(OUT + RECORD_SIZE)
        self._queued: list[Frame] = []
        self._busy = False
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._shown = 0
        self._job: asyncio.Future[None] | None = None
        self._stopping = False
        self._framed = 0  # channel.framed when a whole record last came
        self._heard = time.monotonic()  # then, or when our worker last held reading up

    async def run(self) -> None:
        channel = self.link.channel
        self._queued.extend(self.link._pending)  # frames read past PATH, if any
        self.link._pending.clear()
        channel.on_frames = self._arrived
        timer = asyncio.ensure_future(self._watch_silence())
        try:
            self._kick()
            await self._done
        finally:
            channel.on_frames = None
            timer.cancel()
            self._queued.clear()
            await self._settle()

    async def _settle(self) -> None:
        """A batch still in the worker stops at its next frame: only then may the caller
        touch the session or the file again (its ABORT, removing the part)."""
        self._stopping = True
        job = self._job
        if job is not None and not job.done():
            await asyncio.wait({job}, timeout=10)

    def _arrived(self) -> None:
        framed = self.link.channel.framed
        if framed != self._framed:
            self._framed, self._heard = framed, time.monotonic()
        self._kick()

    def _kick(self) -> None:
        if self._done.done() or self._busy:
            return
        self._queued.extend(self.link.channel.take())
        if not self._queued:
            if self.link.channel.eof:
                self._finish(self._ended_early())
            return
        batch = _Batch(self._queued)
        self._queued = []
        self._busy = True
        self._job = job = self._worker.run(lambda: self._process(batch))
        job.add_done_callback(lambda future: self._processed(batch, future))

    def _processed(self, batch: _Batch, future: asyncio.Future[None]) -> None:
        self._busy = False
        self._heard = time.monotonic()  # the worker held reading up until now, not the peer
        self.link.channel.release(batch.frames)
        for name in batch.saved:
            self.sink.saved(name)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._finish(exc)
            return
        done = self.session.bytes_done
        if batch.ended or done - self._shown >= 1 << 20:
            self._shown = done
            self.sink.progress(done, self.total)
        if batch.ended:
            self._finish(None)
        else:
            self._kick()

    def _process(self, batch: _Batch) -> None:
        """In the worker: every frame of the batch through the session, into the file."""
        out = memoryview(self._out)
        used = 0
        writer = self.writer
        with self._lock:
            for frame in batch.frames:
                if self._stopping:
                    raise _Stopped
                if batch.ended:
                    raise RemoteProtocolError("the sender sent data after its final record")
                event = self.session.receive_frame(
                    frame.kind, frame.head, frame.body, out[used : used + RECORD_SIZE]
                )
                if isinstance(event, FileData):
                    used += len(event.data)
                    if used > OUT and writer is not None:
                        writer.write(out[:used])
                        used = 0
                    continue
                if used and writer is not None:
                    writer.write(out[:used])
                used = 0
                if isinstance(event, FileEnd) and writer is not None:
                    batch.saved.append(writer.finish_file())
                elif isinstance(event, Ended):
                    batch.ended = True
                elif isinstance(event, Aborted):
                    raise PeerAborted(f"the other side says: {event.reason}")
                elif event is not None:
                    raise RemoteProtocolError(f"unexpected {type(event).__name__} from the sender")
            if used and writer is not None:
                writer.write(out[:used])

    def _ended_early(self) -> BaseException:
        """The connection ended before END. Every record handed over was authenticated and
        written: the part stays for a resume (PeerGone), and the bytes of a record cut off
        (a relay that crashed, a sender that gave up on us) are dropped. Only a frame that
        broke the protocol (its header, channel.py) is the sender's fault."""
        error = self.link.channel.error
        if isinstance(error, TransferError):
            return error
        if error is not None:
            return PeerGone(f"the connection broke: {getattr(error, 'strerror', None) or error}")
        if self.link.channel.buffered:
            return PeerGone("the connection ended in the middle of a record")
        return PeerGone("the other side closed the connection")

    def _finish(self, exc: BaseException | None) -> None:
        if self._done.done():
            return
        if exc is None:
            self._done.set_result(None)
        else:
            self._done.set_exception(exc)

    async def _watch_silence(self) -> None:
        """PeerGone once no whole record came for `timeout` while our worker held nothing
        up. Records, not bytes, as before the data phase (Link.frames): a relay that
        trickles a byte a second would hold the receiver for ever (a record is 64 KiB)."""
        timeout = self.link.timeout
        while True:
            left = self._heard + timeout - time.monotonic()
            if left > 0 or self._busy:
                await asyncio.sleep(left if left > 0 else timeout)
            else:
                self._finish(PeerGone(f"the other side went quiet: nothing for {timeout:g} s"))
                return


async def receive_data(link: Link, session: Session, writer: Writer | None, sink: Sink) -> Pump:
    link.allow_stalls()
    pump = Pump(link, session, writer, sink)
    await pump.run()
    return pump


Confirm = Callable[[Offer, Writer | None, str], Awaitable[bool]]
__all__ = ["Confirm", "Pump", "Sink", "TransferError", "accepted", "asked", "offered"]
__all__ += ["receive_data"]
