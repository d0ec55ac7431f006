"""Reading what the user types: lines from stdin without holding up Ctrl-C, and the
passphrase prompt with completion of the word list (Tab, as magic-wormhole offers)."""

from __future__ import annotations

import contextlib
import os
import sys
import termios
from typing import Any

from retreatkit.transfer import codes
from retreatkit.transfer.link import Worker

_saved: list[Any] = []  # the terminal's settings while readline holds it


class _Line:
    """Whether a prompt waits, its line not yet ended by the user's Enter."""

    open = False


def waiting() -> bool:
    """Whether a prompt waits for the user's Enter."""
    return _Line.open


def end_line() -> None:
    """End the line of a prompt still waiting (Ctrl-C, an error while asking), so what
    bob says next starts a line of its own instead of following what was typed."""
    if _Line.open:
        _Line.open = False
        print(file=sys.stderr, flush=True)


class Lines:
    """Lines from stdin (fd 0), read in a daemon thread: the loop goes on meanwhile, and
    Ctrl-C at a prompt stops bob at once instead of when Enter is pressed."""

    def __init__(self) -> None:
        self._buf = b""
        self._eof = False
        self._worker: Worker | None = None

    async def ask(self, prompt: str) -> str | None:
        """The next line after showing `prompt` on stderr; None at end of input."""
        print(prompt, end="", file=sys.stderr, flush=True)
        _Line.open = True
        while b"\n" not in self._buf and not self._eof:
            self._worker = self._worker or Worker()
            chunk = await self._worker.run(lambda: os.read(0, 4096))
            self._eof = not chunk
            self._buf += chunk
        if b"\n" not in self._buf or not os.isatty(0):
            # a terminal's echo of Enter ends the prompt's line; a pipe, or input that
            # ended, echoes nothing: end it here, so what follows has a line of its own
            print(file=sys.stderr, flush=True)
        _Line.open = False
        if not self._buf:
            return None
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode("utf-8", "replace")


def completing() -> bool:
    """Completion needs readline, which needs a terminal on both stdin and stdout."""
    return sys.stdin.isatty() and sys.stdout.isatty()


async def ask_passphrase(lines: Lines) -> str | None:
    """The passphrase, with Tab completing list words where there is a terminal."""
    if not completing():
        return await lines.ask("Enter passphrase: ")
    import readline  # only at an interactive prompt

    def complete(text: str, state: int) -> str | None:
        found = codes.complete(readline.get_line_buffer())
        return found[state] if state < len(found) else None

    readline.set_completer(complete)
    readline.set_completer_delims("")
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
    with contextlib.suppress(termios.error):
        _saved.append(termios.tcgetattr(0))

    def read() -> str | None:
        try:
            return input("Enter passphrase (Tab completes words): ")
        except EOFError:  # Ctrl-D: nothing ended the prompt's line
            print(file=sys.stderr, flush=True)
            return None

    _Line.open = True
    try:
        text = await Worker().run(read)
    finally:
        readline.set_completer(None)
    _Line.open = False  # Enter's echo or read()'s own newline ended it
    return text


def restore_terminal() -> None:
    """Put the terminal back as it was if bob stops while readline holds it (Ctrl-C)."""
    while _saved:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(0, termios.TCSADRAIN, _saved.pop())
