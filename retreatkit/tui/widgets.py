"""Widgets that show untrusted text safely, and the dashboard's two small dialogs."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.geometry import Size
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, Static

from retreatkit.tui import columns
from retreatkit.tui.escape import visible
from retreatkit.tui.fmt import MAX_LINES, MAX_ROWS, more


def plain(value: object, style: str = "") -> Text:
    """A cell that shows `value` literally: escaped, and never read as markup."""
    return Text(visible(value), style=style, no_wrap=True, overflow="ellipsis")


class Lines(Static):
    """A few lines of figures; each line escaped, never markup."""

    _shown: tuple[str, ...] | None = None

    def show(self, lines: Iterable[str]) -> None:
        given = list(lines)
        if len(given) > MAX_LINES + 1:  # a peer's list: lines past a screenful say how many
            given[MAX_LINES:] = [more(len(given) - MAX_LINES)]
        shown = tuple(visible(line) for line in given)
        if shown == self._shown:
            return
        self._shown = shown
        content = Content("\n".join(shown))
        # as many rows as before, wrapped at this width: its size stays, so it is redrawn
        # alone, not the whole screen laid out again (the Logs screen's counts change ten
        # times a second)
        width, height = self.content_size
        same = width > 0 and content.get_height(self.styles.get_rules(), width) == height
        self.update(content, layout=not same)
        if not same:
            # a layout asked for while the app holds a batch update (a screen being
            # mounted, the footer recomposed) can be lost, leaving this widget its old
            # height and its new rows cut off until a resize: ask again once drawn
            self.call_after_refresh(self.refresh, layout=True)


class Table(DataTable[Text]):
    """A table whose rows are replaced on each refresh, keeping the cursor where it was,
    and whose columns fit its width (columns.fit), so none is pushed off the screen:
    those in `cut_first` (a trend) give way first, then the widest of those in `cut`
    (free text: a name, an error) are cut with an ellipsis (at their start for those in
    `cut_start`). Every other column (a state, an address, a time) is shown whole: those
    in `drop`, in that order, are left out while the others do not fit so. Only where
    even that does not fit (a very narrow terminal, an absurd value) are they cut too."""

    def __init__(
        self,
        *names: str,
        id: str | None = None,
        cut: Collection[str] = (),
        cut_start: Collection[str] = (),
        cut_first: Collection[str] = (),
        drop: Sequence[str] = (),
    ) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.names = names
        self._cut_start = frozenset(cut_start)
        self._cut_first = frozenset(cut_first)
        self._free = frozenset(cut) | self._cut_first  # may be cut
        self._drop = tuple(drop)
        self._keys: list[str] = []
        self._rows: list[tuple[Text, ...]] = []
        self._fitted = -1  # the width the columns were fitted to
        self._given: tuple[object, ...] = ()  # what set_rows was last given
        self.shown: list[str] = list(names)  # the columns shown, after `drop`

    def on_mount(self) -> None:
        self._fill(0)

    def set_rows(
        self,
        rows: Sequence[Sequence[str]],
        empty: str = "none yet",
        keys: Sequence[str] | None = None,
    ) -> None:
        """Replace the rows. With `keys` (one a row), the cursor stays on the row with the
        same key wherever it moved, so an action never lands on another row's item. Past
        MAX_ROWS, a last row says how many more (views cuts a peer's lists so already)."""
        if len(rows) > MAX_ROWS + 1:
            hidden = (more(len(rows) - MAX_ROWS), *[""] * (len(self.names) - 1))
            rows = [*rows[:MAX_ROWS], hidden]
            keys = None if keys is None else keys[:MAX_ROWS]
        given = (tuple(map(tuple, rows)), empty, tuple(keys or ()))
        if given == self._given and self._fitted == self.size.width:
            return  # the same rows: refilling them each poll kept an idle dashboard busy
        self._given = given
        row = self.cursor_row
        if keys is not None and 0 <= row < len(self._keys):
            row = keys.index(self._keys[row]) if self._keys[row] in keys else row
        self._keys = list(keys or [])
        self._rows = [tuple(plain(v, _style(v)) for v in values) for values in rows]
        if not rows:
            self._rows = [(plain(empty, "dim"), *[plain("")] * (len(self.names) - 1))]
        self._fill(row)

    def on_resize(self) -> None:
        if self.size.width != self._fitted:
            self._fill(self.cursor_row)

    def watch_virtual_size(self, old: Size, new: Size) -> None:
        if old.height != new.height:  # rows came or went: its height changes with them
            self.call_after_refresh(self.refresh, layout=True)  # as Lines.show does

    def _room(self, count: int) -> int:
        """Cells `count` columns' text has: the width less each column's padding and,
        when the rows overflow the table's height, its scrollbar."""
        room = self.size.width - 2 * self.cell_padding * count
        limit = self.styles.max_height
        if limit is not None and limit.is_cells and len(self._rows) + 1 > limit.value:
            room -= self.scrollbar_size_vertical
        return room

    def _widths(self, shown: list[int], strict: bool) -> tuple[list[int], bool]:
        """The widths of the columns `shown`, and whether they fit. `strict`: only free
        text is cut; else it is cut as far as it goes first, then the widest of the
        rest are narrowed too (and folded, in _cut)."""
        header = [self.names[i] for i in shown]
        natural = columns.natural_widths(header, [[r[i].plain for i in shown] for r in self._rows])
        trend = {k for k, i in enumerate(shown) if self.names[i] in self._cut_first}
        free = {k for k, i in enumerate(shown) if self.names[i] in self._free}
        whole = set(range(len(shown))) - free if strict else set()
        least = columns.least_widths(header, natural, trend, whole)
        room = self._room(len(shown))
        return columns.fit(natural, least, room, trend if strict else free), sum(least) <= room

    def _choose(self) -> tuple[list[int], list[int]]:
        """The columns shown and their widths: every column, or else all but those
        `drop` leaves out, as few as need be; on a terminal too narrow even so, all
        but every one of those."""
        shown = list(range(len(self.names)))
        widths, fits = self._widths(shown, strict=True)
        dropped: list[int] = []
        for name in self._drop:
            if fits or self._fitted <= 0:  # (0: not laid out yet)
                break
            dropped.append(self.names.index(name))
            shown.remove(dropped[-1])
            widths, fits = self._widths(shown, strict=True)
        if not fits and self._fitted > 0:
            return shown, self._widths(shown, strict=False)[0]
        for i in reversed(dropped[:-1]):  # one left out early that fits beside the rest
            again = sorted([*shown, i])
            found, room = self._widths(again, strict=True)
            if room:
                shown, widths = again, found
        return shown, widths

    def _fill(self, cursor: int) -> None:
        self._fitted = self.size.width
        shown, widths = self._choose()
        self.shown = [self.names[i] for i in shown]
        self.clear(columns=True)
        for name, width in zip(self.shown, widths, strict=True):
            self.add_column(name, width=width, key=name)
        for cells in self._rows:
            row = [
                self._cut(cells[i], w, self.names[i]) for i, w in zip(shown, widths, strict=True)
            ]
            folded = any(not cell.no_wrap for cell in row)  # as tall as its folded cells
            self.add_row(*row, height=None if folded else 1)
        if self._rows:
            self.move_cursor(row=min(max(cursor, 0), len(self._rows) - 1), animate=False)

    def _cut(self, cell: Text, width: int, column: str) -> Text:
        if cell.cell_len <= width:
            return cell
        if column in self._cut_start:
            return Text(columns.cut_start(cell.plain, width), style=cell.style, no_wrap=True)
        if column not in self._free:  # a terminal too narrow for it: folded, never cut
            return Text(cell.plain, style=cell.style, no_wrap=False, overflow="fold")
        return cell  # rich cuts its end with an ellipsis (`plain`)


def _style(value: str) -> str:
    if value in ("DOWN", "down", "looping", "unreachable", "failed", "verify failed", "disk full"):
        return "bold red"
    if value in ("stopped", "restarting"):  # a guest: what it serves is down
        return "bold red"
    if value in ("blocked", "refused", "servfail", "starting"):
        return "yellow"
    return ""


class ConfirmScreen(ModalScreen[bool]):
    """Asks before anything destructive: y or Enter on Yes goes ahead, n or Escape does not."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(Content(visible(self.question)), id="question")
            with Horizontal(id="buttons"):
                yield Button("Yes (y)", variant="error", id="yes")
                yield Button("No (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class AskScreen(ModalScreen[str | None]):
    """One line of input: Enter gives it (on an empty field, the default shown in it),
    Escape gives None; so does Enter on an empty field with no default."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, default: str | None = None, example: str = "") -> None:
        super().__init__()
        self.question = question
        self.default = default
        self.example = example  # what an answer looks like, never taken for one

    def compose(self) -> ComposeResult:
        if self.default is not None:
            shown, hint = self.default, f"Enter: {self.default} · Escape: cancel"
        else:
            shown, hint = f"e.g. {self.example}" if self.example else "", "Escape: cancel"
        with Vertical(id="dialog"):
            yield Label(Content(visible(self.question)), id="question")
            yield Input(placeholder=shown, id="answer")
            yield Label(Content(hint), id="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or self.default)

    def action_cancel(self) -> None:
        self.dismiss(None)
