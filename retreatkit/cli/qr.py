"""The passphrase as a QR code on a terminal (half blocks, two rows a line), so a phone
can read it; `bob send --no-qr` leaves it out."""

from __future__ import annotations

from retreatkit.transfer.codes import Code

_INK = "\x1b[30;47m"  # black on white, whatever the terminal's own colours
_RESET = "\x1b[0m"
_HALF = {(True, True): "█", (True, False): "▀", (False, True): "▄", (False, False): " "}


def payload(code: Code) -> str:
    """Upper case fits QR's alphanumeric mode (a smaller code); `bob recv` takes it as is."""
    return f"BOB:{code}".upper()


def lines(code: Code) -> list[str]:
    import segno  # only when a code is drawn

    qr = segno.make(payload(code), error="m", micro=False)
    matrix = [[bool(cell) for cell in row] for row in qr.matrix_iter(border=2)]
    if len(matrix) % 2:
        matrix.append([False] * len(matrix[0]))
    pairs = zip(matrix[::2], matrix[1::2], strict=True)
    return [
        _INK + "".join(_HALF[cell] for cell in zip(upper, lower, strict=True)) + _RESET
        for upper, lower in pairs
    ]


def matrix_of(drawn: list[str]) -> list[list[bool]]:
    """The modules a drawing shows (for tests: what a reader would decode)."""
    rows: list[list[bool]] = []
    for line in drawn:
        cells = line.removeprefix(_INK).removesuffix(_RESET)
        rows.append([c in "█▀" for c in cells])
        rows.append([c in "█▄" for c in cells])
    return rows
