"""DEBUG lines for what a query became and why: the upstream asked and its answer, a
stale answer, a block and its rule, a local answer, a reply turned away, a loop probe.

With the level above DEBUG (the default) each costs one `log.isEnabledFor` (a dict
lookup in logging's own cache): callers check `on()` before they build anything, and
the cache-hit paths say nothing at all. With it on, the log file is what bounds them
(logfile.log_file: rotated at 10 MB, 3 kept).

A query's name is the attendee's: any byte may be in a label. `shown` escapes every
character but printable ASCII, so no newline, escape sequence or bidi override reaches
the log as itself, and a line cannot pass for another.
"""

from __future__ import annotations

import logging
import re

import dns.rcode

log = logging.getLogger("retreatkit.nameserver")
# printable ASCII but the space (a name with one could pass for a line's own words) and
# the backslash, which starts each escape (so "\x0a" typed in a
# label reads as "\x5cx0a", never as a newline that was escaped)
_UNSAFE = re.compile(r"[^\x21-\x5b\x5d-\x7e]")


def on() -> bool:
    return log.isEnabledFor(logging.DEBUG)


def shown(name: str) -> str:
    """A name from the wire, safe to write in a log line."""
    return _UNSAFE.sub(_escape, name) if name else "."


def rcode_text(rcode: int) -> str:
    return dns.rcode.to_text(dns.rcode.Rcode.make(rcode & 0xF))


def _escape(found: re.Match[str]) -> str:
    code = ord(found[0])
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
