"""What bob prints: sizes, offer summaries, the progress bar."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from retreatkit.transfer.codes import Code
from retreatkit.transfer.offer import Offer, display_path, escape
from retreatkit.transfer.receive import Writer

SHOWN_NAMES = 10


def size(n: int | None) -> str:
    """SI sizes as users know them from magic-wormhole: 7.9 kB, 12.0 MB."""
    if n is None:
        return "unknown size"
    if n < 1000:
        return f"{n} byte" + ("" if n == 1 else "s")
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        value /= 1000
        if value < 1000 or unit == "PB":
            break
    return f"{value:.1f} {unit}"


def files_phrase(offer: Offer) -> str:
    count = len(offer.files)
    return f"{count} file{'' if count == 1 else 's'} ({size(offer.total_size)})"


def describe_send(offer: Offer) -> str:
    if offer.text is not None:
        return f"Sending text message ({size(len(offer.text.encode()))})"
    tops = offer.top_level
    if len(tops) == 1 and len(offer.entries) == 1:
        return f"Sending {size(offer.files[0].size)} file named '{escape(tops[0])}'"
    if len(tops) == 1:
        return f"Sending {files_phrase(offer)} in folder '{escape(tops[0])}'"
    return f"Sending {files_phrase(offer)}"


def describe_offer(offer: Offer, writer: Writer, peer: str) -> list[str]:
    lines = [f"Offer from {peer}: {files_phrase(offer)}"]
    entries = [e for e in offer.entries if not e.is_dir or len(e.path) == 1]
    for entry in entries[:SHOWN_NAMES]:
        shown = display_path(writer.final_path(entry)) + ("/" if entry.is_dir else "")
        if writer.top_names[entry.path[0]] != entry.path[0] and len(entry.path) == 1:
            shown += f"  (renamed: '{escape(entry.path[0])}' exists)"
        lines.append(f"  {shown}" + ("" if entry.is_dir else f"  {size(entry.size)}"))
    if len(entries) > SHOWN_NAMES:
        lines.append(f"  ... and {len(entries) - SHOWN_NAMES} more")
    return lines


def safe_text(text: str, stream: TextIO) -> str:
    """Received text as it is safe to print: escaped on a terminal, verbatim into a pipe."""
    if not stream.isatty():
        return text
    return "\n".join(escape(line).replace("\\x09", "\t") for line in text.split("\n"))


class Reporter:
    """Prints to stderr; the progress bar appears only for transfers over a second."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.started = time.monotonic()
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self.codes: list[Code] = []

    def say(self, line: str) -> None:
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.stream, flush=True)

    def code(self, code: Code) -> None:
        self.codes.append(code)

    def paired(self, peer: str) -> None:
        self.started = time.monotonic()

    def progress(self, done: int, total: int | None) -> None:
        if self._bar is None:
            if time.monotonic() - self.started < 1.0 or not self.stream.isatty():
                return
            self._bar = Progress(
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("transfer", total=total)
        assert self._task is not None
        self._bar.update(self._task, completed=done)

    def saved(self, name: str) -> None:
        pass

    def text(self, text: str) -> None:
        pass

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
