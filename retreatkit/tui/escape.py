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
    """`text` as a string with nothing a terminal would interpret, cut to `limit`."""
    s = text if isinstance(text, str) else str(text)
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    # str.isprintable is False for every Cc, Cf (bidi controls), Zl, Zp and unassigned
    # character: the common case costs one C-level scan
    if s.isprintable():
        return s
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in s)


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
