"""A log view that draws only the lines on screen, from the bounded LogBuffer.

A widget per line does not survive 10,000 lines a second; this one keeps no per-line
state beyond the buffer and renders `height` strips per frame (as toolong does). It is
not a Textual ScrollView: a ScrollView's virtual size is laid out again with the whole
screen whenever it changes, which under a flood is every frame; here new lines only
repaint this widget's own region.
"""

from __future__ import annotations

from typing import ClassVar

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget

from retreatkit.tui.logbuffer import ASCII, LEVEL, TEXT, LogBuffer

STYLES = {
    "DEBUG": Style(dim=True),
    "WARNING": Style(color="yellow"),
    "ERROR": Style(color="red", bold=True),
    "CRITICAL": Style(color="red", bold=True, reverse=True),
}
PLAIN = Style()
WHEEL = 3  # lines a mouse-wheel step moves
MORE = "…"  # the last cell of a line that goes on past the right edge


class LogView(Widget, can_focus=True):
    """Follows the newest line until scrolled back; then stays on the same lines while
    new ones arrive, until `end` (or scrolling down to the newest) follows again."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "move(-1)", "Up", show=False),
        Binding("down", "move(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "oldest", "Oldest", show=False),
        Binding("end", "newest", "Newest", show=False),
        # "Scroll", not "Sideways": the footer then keeps `q Quit` at 80 columns
        Binding("left", "sideways(-8)", "Scroll", key_display="←→"),
        Binding("right", "sideways(8)", "Right", show=False),
    ]

    def __init__(self, buffer: LogBuffer, id: str | None = None) -> None:
        super().__init__(id=id)
        self.buffer = buffer
        self.pinned: int | None = None  # the first line shown, counted since the filter
        # was set (so it stays on its lines as the ring moves); None: the newest lines
        self.x = 0
        self._drawn = -1
        self._frame = (0, 0)

    @property
    def following(self) -> bool:
        return self.pinned is None

    def sync(self) -> None:
        """Redraw if the buffer changed since the last frame (called on a timer)."""
        if self._drawn == self.buffer.version:
            return
        self._drawn = self.buffer.version
        self.refresh()

    def first(self) -> int:
        """The index in `buffer.shown` of the top line on screen."""
        newest = max(0, len(self.buffer.shown) - self.content_size.height)
        if self.pinned is None:
            return newest
        return max(0, min(self.pinned - self.buffer.trimmed, newest))

    def position(self) -> str:
        """Where the view is, for the screen's status line."""
        if self.pinned is None:
            return "showing the newest"
        first = self.first()
        last = min(len(self.buffer.shown), first + self.content_size.height)
        return f"lines {first + 1:,}-{last:,} of {len(self.buffer.shown):,} (end: newest)"

    def scroll_lines(self, delta: int) -> None:
        first = self.first() + delta
        newest = max(0, len(self.buffer.shown) - self.content_size.height)
        self.pinned = None if first >= newest else max(0, first) + self.buffer.trimmed
        self.refresh()

    def action_move(self, delta: int) -> None:
        self.scroll_lines(delta)

    def action_page(self, pages: int) -> None:
        self.scroll_lines(pages * max(1, self.content_size.height - 1))

    def action_oldest(self) -> None:
        self.pinned = self.buffer.trimmed
        self.refresh()

    def action_newest(self) -> None:
        self.pinned = None
        self.x = 0
        self.refresh()

    def action_sideways(self, delta: int) -> None:
        self.x = max(0, min(self.x + delta, self.buffer.widest - self.content_size.width))
        self.refresh()

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        event.stop()
        self.scroll_lines(-WHEEL)

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        event.stop()
        self.scroll_lines(WHEEL)

    def filtered(self) -> None:
        """The filter changed: the lines are new ones, so show the newest."""
        self.pinned = None
        self.refresh()

    def render_lines(self, crop: Region) -> list[Strip]:
        # where the view starts and its width, once a frame: each costs a walk up the DOM
        self._frame = (self.first(), self.content_size.width)
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        first, width = self._frame
        index = first + y
        shown = self.buffer.shown
        if index >= len(shown):
            return Strip.blank(width)
        line = shown[index]
        style = STYLES.get(line[LEVEL], PLAIN)
        x = self.x
        # a line that goes on past the right edge ends in an ellipsis: cut silently, "is
        # down: connection re" read as the whole message (left and right scroll to it)
        if line[ASCII]:  # one cell a character: slice and pad, nothing to measure
            text = line[TEXT][x : x + width]
            if len(line[TEXT]) > x + width and width > 0:
                text = text[:-1] + MORE
            return Strip([Segment(text, style), Segment(" " * (width - len(text)))], width)
        more = cell_len(line[TEXT]) > x + width and width > 0
        cut = Strip([Segment(line[TEXT], style)]).crop_extend(x, x + width - more, None)
        return Strip([*cut, Segment(MORE, style)], width) if more else cut
