"""The terminal driver: Textual's own, but input that is not UTF-8 cannot end the dashboard.

Textual's input thread decodes the terminal's bytes as strict UTF-8 (textual#6456, #6668,
open in 8.2.8), so one byte that is not UTF-8 ends it, and the dashboard with it. A
terminal sends such bytes in ordinary use: one rebuilt under a running dashboard (tmux
reattached, an SSH session resumed, a terminal window reloaded) reports the mouse in the
old X10 form, one raw byte a coordinate, over 0x7F past column 95; a paste from a Latin-1
terminal is another. Here each such byte reads as U+FFFD, as the fix proposed upstream
does: an X10 mouse report is then one Textual ignores, and the keys after it still count
(dropping the read that held the byte lost the next key after a Latin-1 `é`, which UTF-8
takes for the start of a longer character).
"""

from __future__ import annotations

import codecs
from functools import partial
from typing import Any

from textual.drivers import linux_driver
from textual.drivers.linux_driver import LinuxDriver


def _lenient(encoding: str) -> Any:
    """The decoder factory the input thread calls with no arguments, replacing bad bytes."""
    return partial(codecs.getincrementaldecoder(encoding), errors="replace")


class Driver(LinuxDriver):
    def run_input_thread(self) -> None:
        # Textual reads the name from its module as the thread starts; only the dashboard
        # runs a LinuxDriver in this process, so setting it there changes nothing else
        linux_driver.getincrementaldecoder = _lenient  # type: ignore[attr-defined]
        super().run_input_thread()
