"""A log view that draws only the lines on screen, from the bounded LogBuffer.

A widget per line does not survive 10,000 lines a second; this one keeps no per-line
state beyond the buffer and renders `height` strips per frame (as toolong does).
"""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from retreatkit.tui.logbuffer import LogBuffer

STYLES = {
    "DEBUG": Style(dim=True),
    "WARNING": Style(color="yellow"),
    "ERROR": Style(color="red", bold=True),
    "CRITICAL": Style(color="red", bold=True, reverse=True),
}
PLAIN = Style()


class LogView(ScrollView, can_focus=True):
    """Follows the newest line while scrolled to the end; stays put when scrolled up."""

    def __init__(self, buffer: LogBuffer, id: str | None = None) -> None:
        super().__init__(id=id)
        self.buffer = buffer
        self._drawn = -1

    def sync(self) -> None:
        """Redraw if the buffer changed since the last frame (called on a timer)."""
        if self._drawn == self.buffer.version:
            return
        self._drawn = self.buffer.version
        follow = self.scroll_y >= self.max_scroll_y - 1
        self.virtual_size = Size(self.buffer.widest, len(self.buffer.shown))
        if follow:
            self.scroll_to(y=self.max_scroll_y, animate=False, immediate=True)
        self.refresh()

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.scrollable_content_region.width
        shown = self.buffer.shown
        if index >= len(shown):
            return Strip.blank(width)
        line = shown[index]
        strip = Strip([Segment(line.text, STYLES.get(line.level, PLAIN))])
        return strip.crop_extend(scroll_x, scroll_x + width, None)
