"""`bob recv --stdout`: the one file of an offer to stdout, nothing to disk."""

from __future__ import annotations

import os

from retreatkit.transfer import partial, resume
from retreatkit.transfer.offer import Offer
from retreatkit.transfer.receive import WriteError, Writer


class StdoutWriter(Writer):
    """`bob recv --stdout`: the one file of an offer goes to stdout, nothing to disk
    (no resume, no space check: the reader's pace bounds it)."""

    def __init__(self, offer: Offer, fd: int = 1) -> None:
        self.offer = offer
        self._files = offer.files
        self._fd_out = fd
        self._index = 0
        self._in_part = 0
        self.claim = resume.NOTHING
        self.resuming = False
        self.record = partial.Record(-1, "")
        self.top_names = {top: top for top in offer.top_level}
        self.written = []
        self.renamed = []

    def check_space(self) -> int | None:
        return None

    def make_folders(self) -> None:
        pass

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd_out, view) :]
            except OSError as exc:
                raise WriteError(
                    f"cannot write to stdout: {exc.strerror or exc}",
                    "the receiver's output closed",
                ) from None

    def finish_file(self) -> str:
        self._index += 1
        return "stdout"

    def complete(self) -> None:
        pass

    def abort(self, keep: bool = False) -> None:
        pass

    def close(self) -> None:
        pass
