"""Widgets that show untrusted text safely, and the dashboard's two small dialogs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar

from rich.cells import cell_len
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, Static

from retreatkit.tui.escape import visible


def plain(value: object, style: str = "") -> Text:
    """A cell that shows `value` literally: escaped, and never read as markup."""
    return Text(visible(value), style=style, no_wrap=True, overflow="ellipsis")


class Lines(Static):
    """A few lines of figures; each line escaped, never markup."""

    _shown: tuple[str, ...] | None = None

    def show(self, lines: Iterable[str]) -> None:
        shown = tuple(visible(line) for line in lines)
        if shown == self._shown:
            return
        # as many lines as before, none wider than the widget: its size stays, so it is
        # redrawn alone, not the whole screen laid out again (the Logs screen's counts
        # change ten times a second)
        width = self.content_size.width
        same = (
            self._shown is not None
            and len(shown) == len(self._shown)
            and all(cell_len(line) <= width for line in shown)
        )
        self._shown = shown
        self.update(Content("\n".join(shown)), layout=not same)


class Table(DataTable[Text]):
    """A table whose rows are replaced on each refresh, keeping the cursor where it was."""

    def __init__(self, *columns: str, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._columns = columns
        self._keys: list[str] = []

    def on_mount(self) -> None:
        for column in self._columns:
            self.add_column(column, key=column)

    def set_rows(
        self,
        rows: Sequence[Sequence[str]],
        empty: str = "none yet",
        keys: Sequence[str] | None = None,
    ) -> None:
        """Replace the rows. With `keys` (one a row), the cursor stays on the row with the
        same key wherever it moved, so an action never lands on another row's item."""
        row = self.cursor_row
        if keys is not None and 0 <= row < len(self._keys):
            row = keys.index(self._keys[row]) if self._keys[row] in keys else row
        self._keys = list(keys or [])
        self.clear()
        if not rows:
            self.add_row(plain(empty, "dim"), *[plain("")] * (len(self._columns) - 1))
        for values in rows:
            self.add_row(*[plain(v, _style(v)) for v in values])
        if rows:
            self.move_cursor(row=min(max(row, 0), len(rows) - 1), animate=False)


def _style(value: str) -> str:
    if value in ("DOWN", "down", "unreachable", "failed", "verify failed", "disk full"):
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
