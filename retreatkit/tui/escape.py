"""Text from the network made safe to show: every control character in a visible form.

File names, domains, package names, client names and log lines come from peers. Textual
strips only a few control characters from content, so ESC/CSI/OSC sequences, C1 controls
(0x9B is a one-byte CSI) and bidi overrides (U+202E turns `exe.txt` into `txt.exe`, the
"Trojan Source" trick) would reach the terminal. Here each one becomes `\\xNN` or `\\uNNNN`.
This module has no Textual in it; widgets wrap its output in Text/Content, never markup.
"""

from __future__ import annotations

LIMIT = 400  # characters shown of one value; a log line or a name cannot fill the screen


def visible(text: object, limit: int = LIMIT) -> str:
    """`text` as a string with nothing a terminal would interpret, at most `limit`
    characters: cut once escaped (an escape is up to 10 characters, so a line cut before
    grew tenfold), never inside an escape, and ending `…` when cut."""
    s = text if isinstance(text, str) else str(text)
    head = s[:limit]  # each character shows as one or more: none past these is shown
    # str.isprintable is False for every Cc, Cf (bidi controls), Zl, Zp and unassigned
    # character: the common case costs one C-level scan
    if head.isprintable():
        return head if len(s) <= limit else head[: limit - 1] + "…"
    pieces = [ch if ch.isprintable() else _escape(ch) for ch in head]
    shown = "".join(pieces)
    if len(s) <= limit and len(shown) <= limit:
        return shown
    kept, used = [], 0
    for piece in pieces:
        if used + len(piece) > limit - 1:
            break
        kept.append(piece)
        used += len(piece)
    return "".join(kept) + "…"


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
