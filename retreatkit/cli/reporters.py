"""What `bob send` and `bob recv` tell the user as a transfer goes (on stderr; received
text on stdout)."""

from __future__ import annotations

import os
import sys

from retreatkit.cli import ui
from retreatkit.transfer import codes, find
from retreatkit.transfer.errors import TransferError


def _given_env() -> find.Target | None:
    try:
        return find.given(None)
    except ValueError:
        return None


class SendReporter(ui.Reporter):
    def __init__(
        self, target: find.Target | None, own: bool = False, qr: bool = True, count: int = 1
    ) -> None:
        super().__init__()
        self.target = target
        self.own = own  # the user chose the words: they are never printed
        self.qr = qr
        self.count = count

    def code(self, code: codes.Code) -> None:
        super().code(code)
        command = "bob recv"
        target = self.target
        if target is not None and target.how == "given" and target != _given_env():
            command += f" --relay {target.relay}"
        if self.own:
            self.say(f"Passphrase: yours, on nameplate {code.nameplate} (its words are not shown)")
        else:
            self.say(f"Passphrase: {code}")
            command += f" {code}"
        if self.count > 1:
            self.say(f"It lets {self.count} receivers in; a wrong passphrase closes it.")
        self.say("On the other computer, please run:")
        self.say("")
        self.say(command)
        self.say("")
        if self.qr and not self.own and sys.stdout.isatty() and sys.stderr.isatty():
            from retreatkit.cli import qr

            for line in qr.lines(code):
                self.say(line)
            self.say("")


class RecvReporter(ui.Reporter):
    def __init__(self, folder: str) -> None:
        """`folder`: the output folder as the user is shown it (absolute, escaped)."""
        super().__init__()
        self.prefix = folder.rstrip("/") + "/"
        self.written: list[str] = []

    def saved(self, name: str) -> None:
        self.written.append(self.prefix + name)

    def text(self, text: str) -> None:
        out = sys.stdout.buffer
        try:
            out.write(ui.safe_text(text, sys.stdout))
            if not text.endswith("\n"):
                out.write(b"\n")
            out.flush()
        except OSError as exc:
            # a reader that went away (`| head`): say so once, and let the exit's own
            # flush of stdout find nothing to complain about (Python's signal docs)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise TransferError(f"cannot write the text: {exc.strerror or exc}") from None
