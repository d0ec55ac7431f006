"""Which answer to a request for the rest of a broken download is taken, and how a
rewritten file is told apart from the one its readers had (pure, and on a temp file)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import cast

import pytest

from retreatkit.mirror.blobs import BlobWriter
from retreatkit.mirror.continuation import (
    MAX_CONTINUATIONS,
    First,
    Progress,
    Take,
    ask,
    judge,
    total_of,
)
from retreatkit.mirror.errors import BadUpstreamData, UpstreamError
from retreatkit.mirror.fill import Fill, FillState, follow
from retreatkit.mirror.records import Source
from retreatkit.mirror.store import Store

F = "torch-2.5.0-cp312-cp312-manylinux1_x86_64.whl"
MODIFIED = "Tue, 01 Oct 2024 10:00:00 GMT"
LATER = "Tue, 01 Oct 2024 10:00:05 GMT"
CHANGED, UNSAID = "(1200 bytes, not 1000)", "without saying which"


@pytest.mark.parametrize(
    ("first", "if_range"),
    [
        (First(100, '"abc"', MODIFIED, LATER), '"abc"'),  # a strong ETag first
        (First(100, 'W/"abc"', MODIFIED, LATER), None),  # weak: never sent (13.1.5)
        (First(100, None, MODIFIED, LATER), MODIFIED),  # a date a second before the answer
        (First(100, None, MODIFIED, MODIFIED), None),  # modified as it was sent: weak
        (First(100, None, MODIFIED, None), None),  # no Date: not known strong
        (First(100, None, "yesterday", LATER), None),
        (First(None), None),
    ],
)
def test_the_rest_is_asked_from_where_it_broke_with_a_strong_validator(
    first: First, if_range: str | None
) -> None:
    headers = {"Range": "bytes=412-"} | ({"If-Range": if_range} if if_range else {})
    assert ask(412, first) == headers


def test_a_part_from_exactly_where_it_broke_is_taken() -> None:
    first = First(1000, '"abc"')
    assert judge(206, "bytes 412-999/1000", 588, 412, first, F) is Take.REST
    assert judge(206, "bytes 412-999/1000", None, 412, first, F) is Take.REST  # chunked
    assert judge(206, "bytes 412-999/*", 588, 412, First(None), F) is Take.REST
    assert judge(206, "bytes 412-499/1000", 88, 412, first, F) is Take.REST  # less: asked on
    assert total_of("bytes 412-999/1000") == 1000
    assert total_of("bytes 412-999/*") is None


def test_a_whole_answer_starts_it_over() -> None:
    """The range ignored, or If-Range not matched (the file changed): the whole file."""
    assert judge(200, None, 1000, 412, First(1000, '"abc"'), F) is Take.WHOLE
    assert judge(200, None, None, 412, First(1000), F) is Take.WHOLE
    assert judge(200, None, 1200, 412, First(None), F) is Take.WHOLE


@pytest.mark.parametrize(
    ("status", "content_range", "length", "words"),
    [
        (206, "bytes 411-999/1000", 589, f"upstream sent {F} from byte 411, not 412 as asked"),
        (206, "bytes 0-999/1000", 1000, f"upstream sent {F} from byte 0, not 412 as asked"),
        (206, "bytes 412-1199/1200", 788, f"upstream changed {F} while sending it {CHANGED}"),
        (206, "bytes 412-999/*", 588, f"upstream sent a part of {F} without its length"),
        (206, None, 588, f"upstream sent a part of {F} without saying which"),
        (206, "bytes 412-999/1000, 0-1/1000", 588, f"upstream sent a part of {F} {UNSAID}"),
        (206, "items 412-999/1000", 588, f"upstream sent a part of {F} without saying which"),
        (206, "bytes 412-1000/1000", 589, f"upstream sent a part of {F} that is not one"),
        (206, "bytes 412-411/1000", 0, f"upstream sent a part of {F} that is not one"),
        (206, "bytes 412-999/1000", 500, f"upstream sent a part of {F} that is not one"),
        (200, None, 1200, f"upstream changed {F} while sending it {CHANGED}"),
        (416, "bytes */1000", 0, f"upstream answered 416 for {F}"),
        (503, None, 0, f"upstream answered 503 for {F}"),
        (304, None, 0, f"upstream answered 304 for {F}"),
    ],
)  # fmt: skip
def test_any_other_answer_is_refused(
    status: int, content_range: str | None, length: int, words: str
) -> None:
    with pytest.raises(UpstreamError) as refused:
        judge(status, content_range, length, 412, First(1000, '"abc"'), F)
    assert str(refused.value) == words
    # a part of the wrong bytes fails a check; an error status is only an error
    assert isinstance(refused.value, BadUpstreamData) == (status in (200, 206))


def test_a_download_is_continued_a_few_times_and_only_while_it_gets_further() -> None:
    progress = Progress()
    assert not progress.another(0)  # nothing came: failed as before
    assert progress.another(500)
    assert not progress.another(500)  # the whole file again, cut at the same byte
    assert progress.another(700)
    assert progress.another(900)
    assert progress.continued == MAX_CONTINUATIONS == 3
    assert not progress.another(950)


def test_a_rewound_writer_says_where_its_bytes_changed_and_keeps_only_the_new(
    tmp_path: Path,
) -> None:
    (tmp_path / "tmp").mkdir()
    data = bytes(range(256)) * 40
    other = bytearray(data)
    other[5000] ^= 0xFF
    writer = BlobWriter(tmp_path / "blobs", tmp_path / "tmp")
    writer.write(data[:4096])
    writer.write(data[4096:6000])
    writer.rewind()
    writer.write(data[:4096])  # the same bytes again: readers that sent them hold the file
    assert writer.changed_since(0) is None
    writer.write(bytes(other[4096:]))
    assert writer.changed_since(0) == 4096  # the chunk that differs
    assert writer.changed_since(1) is None
    assert writer.check({"sha256": hashlib.sha256(other).hexdigest()})
    assert writer.publish(hashlib.sha256(other).hexdigest()).read_bytes() == other

    shorter = BlobWriter(tmp_path / "blobs", tmp_path / "tmp")
    shorter.write(data)
    shorter.rewind()
    shorter.write(data[:100])  # whole again, and shorter: the rest of the old is gone
    digest = hashlib.sha256(data[:100]).hexdigest()
    assert shorter.check({"sha256": digest}) == digest
    assert shorter.publish(digest).read_bytes() == data[:100]


async def test_a_reader_is_cut_where_any_writing_after_its_own_differs(tmp_path: Path) -> None:
    """Started over twice, the file came in three versions: a reader that had the second's
    bytes is cut where the third differs from them, wherever the second differed from the
    first, never handed the two spliced."""
    (tmp_path / "tmp").mkdir()
    first = bytes(range(256)) * 40
    second = bytearray(first)
    second[9000] ^= 0xFF  # late
    third = bytearray(second)
    third[100] ^= 0xFF  # early
    fill = Fill(Source("pypi/f.whl", "http://up/f.whl", {}, "pypi", "f"), 0.0)
    writer = fill.writer = BlobWriter(tmp_path / "blobs", tmp_path / "tmp")
    fill.headers.set()
    writer.write(first)
    writer.rewind()
    fill.rewinds = 1
    writer.write(bytes(second[:5000]))
    fill.written = 5000
    reader = follow(fill, cast(Store, None))  # the file is not published: no store asked
    try:
        assert await anext(reader) == second[:4999]
        writer.write(bytes(second[5000:]))  # differs from the first past the reader
        writer.rewind()
        writer.write(bytes(third))  # differs from the second before it
        fill.written, fill.rewinds, fill.state = len(third), 2, FillState.DONE
        with pytest.raises(BadUpstreamData, match=r"^upstream changed f\.whl while sending it$"):
            await anext(reader)
    finally:
        await reader.aclose()
        writer.discard()
