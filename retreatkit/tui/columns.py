"""Column widths that fit a table into the width it has (no Textual here).

At 80 columns a domain or a URL would push the columns after it off the screen; here the
widest columns are cut to one common width instead, so every column shows, and a cut
value ends (or, where its end says most, starts) with an ellipsis. Only free text (a
name, a URL, an error) is cut so: a state, an address, a time or a count is shown whole
(`whole`), since `unreach…` or `[2001:db8…` says nothing an organiser can act on.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from rich.cells import cell_len

ELLIPSIS = "…"
LEAST = 8  # cells a column keeps at the least: a time (10:59:58), a count, a state


def fit(
    natural: Sequence[int], least: Sequence[int], room: int, first: Collection[int] = ()
) -> list[int]:
    """Each column's width: its natural width when they all fit in `room`; else the
    columns in `first` (a trend, say) are cut first, then the widest are cut down to one
    cap (the largest that fits); none below its `least`."""
    widths = list(natural)
    for i in first:
        widths[i] -= min(max(0, sum(widths) - room), widths[i] - least[i])
    if sum(widths) <= room:
        return widths

    def total(cap: int) -> int:
        return sum(min(w, max(cap, low)) for w, low in zip(widths, least, strict=True))

    low, high = 0, max(widths, default=0)
    while low < high:  # the largest cap whose total fits
        middle = (low + high + 1) // 2
        if total(middle) <= room:
            low = middle
        else:
            high = middle - 1
    return [min(w, max(low, least_)) for w, least_ in zip(widths, least, strict=True)]


def natural_widths(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    """The width each column would take uncut: its heading or its widest value."""
    widths = [cell_len(h) for h in header]
    for row in rows:
        for i, value in enumerate(row[: len(widths)]):
            widths[i] = max(widths[i], cell_len(value))
    return widths


def least_widths(
    header: Sequence[str],
    natural: Sequence[int],
    first: Collection[int] = (),
    whole: Collection[int] = (),
) -> list[int]:
    """How far each column may be cut: not at all if it is `whole`; else never below its
    heading, nor `LEAST` cells unless it is one cut `first`."""
    return [
        n if i in whole else min(n, max(cell_len(h), 0 if i in first else LEAST))
        for i, (h, n) in enumerate(zip(header, natural, strict=True))
    ]


def cut_start(text: str, width: int) -> str:
    """`text` in `width` cells, its start cut off (`…/lists/blocks.txt`). A URL keeps its
    host where it can, its scheme going first and then the start of its path
    (`deb.example/…security`): two archives of one host are told apart by their
    path's end, two upstreams by their host."""
    if cell_len(text) <= width:
        return text
    scheme, sep, rest = text.partition("://")
    if sep and "/" not in scheme:
        if cell_len(rest) <= width:
            return rest
        host, slash, path = rest.partition("/")
        room = width - cell_len(host) - 2  # the slash after the host and the ellipsis
        if slash and room >= 4:
            return f"{host}/{_tail(path, room + 1)}"
        text = rest
    return _tail(text, width)


def _tail(text: str, width: int) -> str:
    """An ellipsis and the end of `text` that fits `width` cells (text longer than that)."""
    kept = ""
    for ch in reversed(text):
        if cell_len(ch + kept) > width - 1:
            break
        kept = ch + kept
    return ELLIPSIS + kept
