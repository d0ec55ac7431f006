"""`bob send -` in process: the kit's own Producer reading a real pipe as stdin, sealing
into batches that a receiving Session opens. What a paused stdin gave goes out before
the writer writes again."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

import pytest

from retreatkit.transfer import source
from retreatkit.transfer.machine import Ended, FileData, FileEnd, Session
from retreatkit.transfer.records import RECORD_SIZE
from retreatkit.transfer.testing import accepted_pair

TIMEOUT = 60.0


@pytest.fixture
def stdin(monkeypatch: pytest.MonkeyPatch) -> Iterator[BinaryIO]:
    """The write end of a pipe that is our stdin, and holds four records."""
    ours, theirs = os.pipe2(os.O_CLOEXEC)
    fcntl.fcntl(theirs, fcntl.F_SETPIPE_SZ, 4 * RECORD_SIZE)
    with open(ours, "rb", buffering=0) as reader, open(theirs, "wb", buffering=0) as writer:
        monkeypatch.setattr("sys.stdin", type("In", (), {"buffer": reader})())
        yield writer


def opened(receiver: Session, producer: source.Producer) -> tuple[bytes, list[object]]:
    """What the batch sealed so far says, once the receiver has opened it."""
    data, other = b"", []
    for chunk in producer.take():
        receiver.receive_data(bytes(chunk))
    while (event := receiver.next_event()) is not None:
        if isinstance(event, FileData):
            data += event.data
        else:
            other.append(event)
    return data, other


@pytest.mark.parametrize("records", [1, 3])
def test_a_pause_after_whole_records_sends_them(stdin: BinaryIO, records: int) -> None:
    """Each read filled its buffer, then stdin paused: the batch was held for more (or for
    a megabyte), so a receiver of a live sender saw nothing."""
    first = os.urandom(records * RECORD_SIZE)
    stdin.write(first)  # all in the pipe before the first read: every read is a whole one
    sources = source.collect(["-"])
    sender, receiver = accepted_pair(sources.offer)
    producer = source.Producer(sender, sources, compress=False)
    with ThreadPoolExecutor(1) as worker:
        try:
            # the writer has not closed stdin: the batch ends at the pause
            assert worker.submit(producer.fill).result(TIMEOUT) is True
            assert opened(receiver, producer) == (first, [])
            stdin.write(b"the end\n")
        finally:
            stdin.close()  # a fill still reading (the fault) stops at the end of stdin
        while worker.submit(producer.fill).result(TIMEOUT):
            pass
    assert opened(receiver, producer) == (b"the end\n", [FileEnd(0), Ended()])
