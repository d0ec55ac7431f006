"""What bob prints: sizes, offer summaries, the progress bar."""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from retreatkit.transfer.codes import Code
from retreatkit.transfer.offer import Entry, Offer, display_path, escape, show_name
from retreatkit.transfer.receive import Writer
from retreatkit.transfer.resume import NOTHING, Claim

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

_SURROGATE = re.compile("[\ud800-\udfff]")


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
    return _count_phrase(len(offer.files), offer.total_size)


def _count_phrase(count: int, total: int | None) -> str:
    return f"{count} file{'' if count == 1 else 's'} ({size(total)})"


def text_size(text: str) -> int:
    """Bytes of the text: a byte argv could not decode (U+DC80..U+DCFF) counts as itself,
    any other lone surrogate as the three bytes it travels as."""
    try:
        return len(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return len(text.encode("utf-8", "surrogatepass"))


def describe_send(offer: Offer) -> str:
    if offer.text is not None:
        return f"Sending text message ({size(text_size(offer.text))})"
    tops = offer.top_level
    if len(tops) == 1 and len(offer.entries) == 1 and offer.files:
        return f"Sending {size(offer.files[0].size)} file named '{show_name(tops[0])}'"
    if len(tops) == 1:
        return f"Sending {files_phrase(offer)} in folder '{show_name(tops[0])}'"
    return f"Sending {files_phrase(offer)}"


@dataclass(slots=True)
class _Tally:
    files: int = 0
    size: int | None = 0

    def add(self, entry: Entry) -> None:
        if not entry.is_dir:
            self.files += 1
            known = self.size is not None and entry.size is not None
            self.size = self.size + entry.size if known else None  # type: ignore[operator]


def hidden(name: str) -> bool:
    return name.startswith(".")


def describe_offer(offer: Offer, writer: Writer, peer: str) -> list[str]:
    """What the receiver is asked to accept: every top-level entry, each folder summed up
    on its line, and every hidden name inside a folder on a line of its own (a hidden
    folder with its sum), so nothing that lands goes unseen (croc's CVE-2023-43619).
    Linear in the number of entries."""
    folders: dict[tuple[str, ...], _Tally] = {}  # top-level folders and named hidden ones
    inner: dict[str, list[Entry]] = {}  # hidden entries named under each top-level folder
    for entry in offer.entries:
        path = entry.path
        if len(path) == 1:
            if entry.is_dir:
                folders[path] = _Tally()
            continue
        folders[path[:1]].add(entry)
        for depth in range(1, len(path)):
            if hidden(path[depth]):  # the outermost hidden name below the top level
                if depth + 1 == len(path):
                    inner.setdefault(path[0], []).append(entry)
                    if entry.is_dir:
                        folders[path] = _Tally()
                else:
                    folders[path[: depth + 1]].add(entry)
                break
    lines = [f"Offer from {peer}: {files_phrase(offer)}"]  # the adapter escaped the relay's text
    for entry in offer.entries:
        if len(entry.path) == 1:
            lines.append("  " + _entry_line(entry, writer, folders))
            for below in inner.get(entry.path[0], ()):
                lines.append("    " + _entry_line(below, writer, folders))
    return lines


def _entry_line(entry: Entry, writer: Writer, folders: dict[tuple[str, ...], _Tally]) -> str:
    shown = display_path(writer.final_path(entry)) + ("/" if entry.is_dir else "")
    top = entry.path[0]
    if len(entry.path) == 1 and writer.top_names[top] != top:
        shown += f"  (renamed: '{show_name(top)}' exists)"
    if entry.is_dir:
        tally = folders[entry.path]
        shown += f"  {_count_phrase(tally.files, tally.size)}"
    else:
        shown += f"  {size(entry.size)}"
    if hidden(entry.path[-1]):
        shown += "  (hidden)"
    return shown


def resume_lines(offer: Offer, claim: Claim, start: Claim) -> list[str]:
    """What the receiver says once it knows where the data starts again."""
    files = offer.files
    if start == NOTHING and claim.index > 0:
        return ["What an earlier transfer left differs from this one: receiving it all again"]
    if start.index >= len(files):
        return ["Every file arrived in an earlier transfer"]
    name = display_path(files[start.index].path)
    if start.length == 0 and claim.length > 0:  # its first block differs: none of it is kept
        return [f"The partial {name} does not match what is offered: receiving all of it again"]
    if start.length < claim.length:
        return [f"The partial {name} did not match past {size(start.length)}: receiving the rest"]
    before = sum(e.size or 0 for e in files[: start.index]) + start.length
    return [f"Resuming {name} from {size(start.length)} ({size(before)} already here)"]


def hidden_tops(offer: Offer) -> list[str]:
    """Top-level names a `--yes` never accepts: hidden ones, such as .bashrc or .ssh."""
    return [show_name(name) for name in offer.top_level if hidden(name)]


def safe_text(text: str, stream: TextIO) -> bytes:
    """Received text as it is safe to print: escaped on a terminal, verbatim into a pipe.

    A lone surrogate cannot be encoded as it is: one from a sender's undecodable argv
    (U+DC80..U+DCFF) goes back to its byte, any other becomes U+FFFD.
    """
    if stream.isatty():
        text = "\n".join(escape(line).replace("\\x09", "\t") for line in text.split("\n"))
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode("utf-8")


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

    def path(self, which: str) -> None:
        """How the data goes: `direct` or `relay`."""
        self.say(f"Path: {which}")

    def resumed(self, offer: Offer, claim: Claim, start: Claim) -> None:
        for line in resume_lines(offer, claim, start):
            self.say(line)

    def progress(self, done: int, total: int | None) -> None:
        if self._bar is None:
            if time.monotonic() - self.started < 1.0 or not self.stream.isatty():
                return
            # rich only for a bar on a terminal: most of bob's start-up otherwise
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

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
