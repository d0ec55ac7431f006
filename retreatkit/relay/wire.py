"""The relay's handshake lines, shared by the relay and its clients (no I/O).

Client to relay, one line:   `bob/1 send [NAMEPLATE] [KEY]` or `bob/1 recv NAMEPLATE`
                             (KEY, 32 hex digits: a sender's several waiting connections)
Relay to client, lines:      `ok NAMEPLATE` (a sender's nameplate is held),
                             `paired HOST:PORT` (the peer's address; bytes flow from here on),
                             `error TEXT` (then the relay closes),
                             `busy TEXT` (no room: then the relay closes; a sender meets
                             its receivers without this relay).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

MAX_LINE = 128
PREFIX = "bob/1"
# A nameplate in its one written form: 1-6 digits, no leading zero, so `07` and `7`
# never name two nameplates (a client writes what the user typed this way first).
NAMEPLATE = r"0|[1-9][0-9]{0,5}"
_REQUEST = re.compile(r"^bob/1 (send|recv)(?: ([0-9]{1,6}))?(?: ([0-9a-f]{32}))?$")


class Role(enum.Enum):
    SEND = "send"
    RECV = "recv"


class WireError(ValueError):
    """A handshake line that does not parse."""


@dataclass(frozen=True, slots=True)
class Request:
    role: Role
    nameplate: str | None
    key: str | None = None  # a sender's own random key: more connections on its nameplate

    def encode(self) -> bytes:
        parts = [PREFIX, self.role.value] + ([self.nameplate] if self.nameplate else [])
        parts += [self.key] if self.key else []
        return (" ".join(parts) + "\n").encode("ascii")


def parse_request(line: bytes) -> Request:
    """A request line as received, its newline included: MAX_LINE bytes at most, whatever
    it ends with (200 carriage returns before the newline are bytes received too)."""
    if len(line) > MAX_LINE:
        raise WireError("handshake line too long")
    try:
        text = line.decode("ascii").rstrip("\r\n")
    except UnicodeDecodeError:
        raise WireError("not a bob/1 request") from None
    match = _REQUEST.match(text)
    if match is None:
        raise WireError("not a bob/1 request")
    role = Role(match[1])
    if match[2] is not None and re.fullmatch(NAMEPLATE, match[2]) is None:
        raise WireError(f"nameplate {match[2]} has a leading zero")
    if role is Role.RECV and match[2] is None:
        raise WireError("recv needs a nameplate")
    if role is Role.RECV and match[3] is not None:
        raise WireError("not a bob/1 request")
    return Request(role, match[2], match[3])


def reply(word: str, text: str = "") -> bytes:
    line = f"{word} {text}".strip()
    # a reply is one short ASCII line, whatever text went in
    safe = line.encode("ascii", "replace").replace(b"\n", b" ").replace(b"\r", b" ")
    return safe[: MAX_LINE - 1] + b"\n"


@dataclass(frozen=True, slots=True)
class Reply:
    word: str
    text: str


def parse_reply(line: bytes) -> Reply:
    text = line.decode("ascii", "replace").rstrip("\r\n")
    word, _, rest = text.partition(" ")
    if word not in ("ok", "paired", "error", "busy"):
        raise WireError("the relay answered something that is not bob/1")
    return Reply(word, rest)
