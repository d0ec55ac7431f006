"""A test upstream: serves a folder over HTTP/1.1 and misbehaves on request.

`python -m retreatkit.mirror.fakeupstream ROOT` prints `Upstream listening on URL`;
in a test's own loop, `async with serving(ROOT) as upstream` does the same on port 0.
`ROOT/.behaviours.json` (or `Upstream.rules`) maps a request path to a misbehaviour,
read at each request (`*`: every path with none of its own, a whole upstream's):
  truncate      half the body, no Content-Length, then close
  truncate-cl   the full Content-Length, half the body, then close
  corrupt       the right length, one byte flipped
  stall         headers and half the body, then silence until the client gives up
  reset         half the body, then a TCP reset
  silent        read the request, never answer (a dead uplink that still accepts)
  stuck         the first GET as stall, every other request silent (one object stuck
                on a CDN node)
  nolength      the whole body with no Content-Length, then close
  fail          500
  loop          302 to the same path, for ever (a redirect loop)
  redirect URL  302 to URL (relative to the path asked)
  trickle       the full Content-Length, then a byte a second (or one per item put on
                `Upstream.drips`, each told on `Upstream.dripped`)
  slow          the full Content-Length, then 32 KiB every 0.1 s (an uplink that keeps
                coming, slowly: 320 KiB/s)
  bighead       200 with a 200 KB header line
  wait          the whole answer, once the test sets `Upstream.release`
  hold          the full Content-Length and 3/4 of the body, said on stderr (`holding
                PATH`), then the rest once the test sets `Upstream.release`
  gzip          gzipped on the way (`Content-Encoding: gzip`) to a client that accepts
                it, as a web server's compression of text types does
  cut-once      the first GET: the full Content-Length, half the body, then close; later
                ones get what they ask: `Range: bytes=N-` a 206 from N, unless their
                If-Range is not the file's ETag (then a 200, the whole file)
  cut-whole     as cut-once, but later GETs get the whole file, Range or not
  cut-badrange  as cut-once, but a later GET's 206 starts a byte before the one asked
  cut-changed   as cut-once, but the file changed after the first GET: one byte of its
                first quarter other, and another ETag
  cut-mended    as cut-once, but the first GET got that other file (its own ETag)
  cut-mended-twice  as cut-mended, and the second GET (the file whole) is cut too, 4 kB
                before its end
  cut-longer    as cut-whole, but later GETs get another file, 4 kB longer (one byte of
                its last quarter other), with no Content-Length: its end is the close,
                once the test sets `Upstream.release`
  cut-each      every GET gets half of what it asks (honouring Range), then a close
The cut-* modes count `range PATH VALUE`, `if-range PATH VALUE` and the body bytes
they sent (`sent PATH`); a continuation waits for `Upstream.gate` when a test sets one.
A file answers with its modification time as `Last-Modified`. A folder answers with its
`index.json` (PEP 691, an npm packument) to a client that accepts JSON or when it has no
`index.html`, else its `index.html`. `GET /_stats` gives {path: GETs, "HEAD path": HEADs,
"gzip path": answers sent gzipped, "opam path": requests opam itself sent};
`GET /_release` sets `Upstream.release` (for a test whose upstream is another process).
It is a raw asyncio server because a real server would not let a test send a body cut
short without Content-Length.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import mimetypes
import re
import socket
import struct
import sys
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path
from urllib.parse import unquote, urlsplit

MAX_HEAD = 16 * 1024
SLOW_PIECE, SLOW_PACE = 32 * 1024, 0.1  # "slow": bytes at a time, seconds between


JSON_TYPE = "application/vnd.pypi.simple.v1+json"


class Upstream:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.counts: Counter[str] = Counter()
        self.rules: dict[str, str] = {}  # path -> misbehaviour, beside the file's
        self.url = ""
        self.closing = asyncio.Event()  # ends the silences when the test is over
        self.asked = asyncio.Event()  # set by every request (a test clears it)
        self.drips: asyncio.Queue[None] | None = None  # a trickle's pace, when a test sets it
        self.release = asyncio.Event()  # what a "wait" answers after: the test's word
        self.dripped: asyncio.Queue[int] = asyncio.Queue()  # bytes a trickle has sent
        self.gate: asyncio.Event | None = None  # what a cut-* continuation waits for

    def behaviour(self, path: str) -> str:
        if path in self.rules:
            return self.rules[path]
        try:
            rules = json.loads((self.root / ".behaviours.json").read_text())
        except (OSError, ValueError):
            rules = {}
        return str(rules.get(path, self.rules.get("*", rules.get("*", "ok"))))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = ([*lines[0].split(" "), "", "", ""])[:3]
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])
        }
        path = unquote(urlsplit(target).path)
        self.counts[path if method != "HEAD" else f"HEAD {path}"] += 1
        if headers.get("user-agent", "").startswith("opam/"):  # opam's own, not the mirror's
            self.counts[f"opam {path}"] += 1
        self.asked.set()
        try:
            await self._respond(writer, method, path, headers)
        except ConnectionError:
            pass
        finally:
            if not writer.is_closing():
                writer.close()

    async def _respond(
        self, writer: asyncio.StreamWriter, method: str, path: str, headers: dict[str, str]
    ) -> None:
        if path == "/_stats":
            return await _send(writer, 200, json.dumps(self.counts).encode(), "application/json")
        if path == "/_release":
            self.release.set()
            return await _send(writer, 200, b"released\n", "text/plain")
        mode = self.behaviour(path)
        if mode == "stuck":
            mode = "stall" if self.counts[path] == 1 and method == "GET" else "silent"
        if mode == "silent":  # whether the path is there or not: nothing is said of it
            await self.closing.wait()  # the client's timeout is what ends this
            return
        file = (self.root / path.lstrip("/")).resolve()
        if file.is_dir():
            # JSON to a client that accepts it (PEP 691's type, npm's), or when that is all
            as_json = (file / "index.json").is_file() and (
                "json" in headers.get("accept", "") or not (file / "index.html").is_file()
            )
            file = file / ("index.json" if as_json else "index.html")
        if self.root not in file.parents or not file.is_file() or file.name.startswith("."):
            return await _send(writer, 404, b"not found\n", "text/plain")
        body = file.read_bytes()
        kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if file.name == "index.html":
            kind = "text/html"
        if file.name == "index.json":
            kind = JSON_TYPE
        etag = f'"{zlib.crc32(body):08x}"'
        if mode == "ok" and headers.get("if-none-match") == etag:
            return await _send(writer, 304, b"", kind, etag=etag)
        if mode.startswith("cut-") and method == "GET":
            return await self._cut(writer, path, headers, mode, body, kind, etag)
        half = body[: len(body) // 2]
        if mode == "wait":  # the whole answer, once the test says so (or the test is over)
            await _either(self.release, self.closing)
            if not self.release.is_set():
                return
            return await _send(writer, 200, body, kind, etag=etag)
        if mode == "hold" and method == "GET":  # the rest once the test says so
            cut = len(body) * 3 // 4
            writer.write(_head(200, kind, len(body), etag) + body[:cut])
            await writer.drain()
            print(f"holding {path}", file=sys.stderr, flush=True)
            await _either(self.release, self.closing)
            if self.release.is_set():
                writer.write(body[cut:])
                await writer.drain()
            return
        if mode == "fail":
            return await _send(writer, 500, b"upstream broke\n", "text/plain")
        if mode.startswith("redirect "):
            writer.write(_head(302, kind, 0, extra=f"Location: {mode.removeprefix('redirect ')}"))
            return await writer.drain()
        if mode in ("loop", "bighead"):
            extra = f"Location: {path}" if mode == "loop" else "X-Pad: " + "a" * 200_000
            status = 302 if mode == "loop" else 200
            writer.write(_head(status, kind, 0, extra=extra))
            return await writer.drain()
        if mode == "truncate":
            writer.write(_head(200, kind, None, etag) + half)
            await writer.drain()
            return
        if mode == "nolength":
            writer.write(_head(200, kind, None, etag) + body)
            await writer.drain()
            return
        if mode == "truncate-cl":
            writer.write(_head(200, kind, len(body), etag) + half)
            await writer.drain()
            return
        if mode == "corrupt":
            flipped = bytearray(body)
            if flipped:
                flipped[len(flipped) // 2] ^= 0xFF
            return await _send(writer, 200, bytes(flipped), kind, etag=etag)
        if mode == "trickle":
            writer.write(_head(200, kind, len(body), etag))
            for sent in range(len(body)):
                if not await self._drip():
                    return
                writer.write(body[sent : sent + 1])
                await writer.drain()
                if self.drips is not None:
                    self.dripped.put_nowait(sent + 1)
            return
        if mode == "slow":
            writer.write(_head(200, kind, len(body), etag))
            for start in range(0, len(body), SLOW_PIECE):
                writer.write(body[start : start + SLOW_PIECE])
                await writer.drain()
                if start + SLOW_PIECE < len(body) and not await self._drip(SLOW_PACE):
                    return
            return
        if mode == "stall":
            writer.write(_head(200, kind, len(body), etag) + half)
            await writer.drain()
            await self.closing.wait()  # the client's read timeout is what ends this
            return
        if mode == "reset":
            writer.write(_head(200, kind, len(body), etag) + half)
            await writer.drain()
            sock = writer.get_extra_info("socket")
            if sock is not None:  # SO_LINGER 0: close() sends RST
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        if mode == "gzip" and "gzip" in headers.get("accept-encoding", ""):
            self.counts["gzip " + path] += 1
            packed = gzip.compress(body, mtime=0)
            writer.write(_head(200, kind, len(packed), etag, "Content-Encoding: gzip") + packed)
            return await writer.drain()
        if method == "HEAD":  # the length the GET would have, no body
            writer.write(_head(200, kind, len(body), etag))
            return await writer.drain()
        modified = f"Last-Modified: {formatdate(file.stat().st_mtime, usegmt=True)}"
        await _send(writer, 200, body, kind, etag=etag, extra=modified)

    async def _cut(
        self, writer: asyncio.StreamWriter, path: str, headers: dict[str, str], mode: str,
        body: bytes, kind: str, etag: str,
    ) -> None:  # fmt: skip
        """The cut-* modes (the module's docstring): the first GET of `path` breaks off."""
        nth = self.counts[path]
        first = nth == 1
        other = bytearray(body)
        if other:
            other[len(other) // 4] ^= 0xFF
        mended = mode in ("cut-mended", "cut-mended-twice")
        if (mended and first) or (mode == "cut-changed" and not first):
            body, etag = bytes(other), f'"{zlib.crc32(other):08x}"'
        if mode == "cut-longer" and not first:
            longer = bytearray(body) + bytes(4096)
            longer[len(body) * 3 // 4] ^= 0xFF
            body, etag = bytes(longer), f'"{zlib.crc32(longer):08x}"'
        asked, if_range = headers.get("range"), headers.get("if-range")
        for name, value in (("range", asked), ("if-range", if_range)):
            if value is not None:
                self.counts[f"{name} {path} {value}"] += 1
        if not first and self.gate is not None:
            await _either(self.gate, self.closing)
            if not self.gate.is_set():
                return
        start = 0
        wanted = re.fullmatch(r"bytes=(\d+)-", asked or "")
        if wanted and mode not in ("cut-whole", "cut-longer") and if_range in (None, etag):
            start = min(int(wanted[1]), len(body))
        if start and mode == "cut-badrange":
            start -= 1
        part = body[start:]
        if start:
            where = f"Content-Range: bytes {start}-{len(body) - 1}/{len(body)}"
            head = _head(206, kind, len(part), etag, where)
        else:
            head = _head(200, kind, None if mode == "cut-longer" and not first else len(body), etag)
        if first or mode == "cut-each":
            part = part[: len(part) // 2]
        elif mode == "cut-mended-twice" and nth == 2:
            part = part[:-4096]
        writer.write(head + part)
        self.counts[f"sent {path}"] += len(part)
        await writer.drain()
        if mode == "cut-longer" and not first:
            await _either(self.release, self.closing)

    async def _drip(self, pace: float = 1.0) -> bool:
        """Wait for a trickle's next byte: the test's word, else `pace` seconds. False once
        the test is over."""
        turn = asyncio.ensure_future(
            self.drips.get() if self.drips is not None else asyncio.sleep(pace)
        )
        over = asyncio.ensure_future(self.closing.wait())
        done, _ = await asyncio.wait({turn, over}, return_when=asyncio.FIRST_COMPLETED)
        turn.cancel()
        over.cancel()
        return over not in done


async def _either(*events: asyncio.Event) -> None:
    """Wait until one of `events` is set."""
    waits = {asyncio.ensure_future(e.wait()) for e in events}
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for w in pending:
        w.cancel()


def _head(
    status: int, kind: str, length: int | None, etag: str | None = None, extra: str = ""
) -> bytes:
    reason = {
        200: "OK", 206: "Partial Content", 302: "Found", 304: "Not Modified", 404: "Not Found",
        500: "Internal Server Error",
    }  # fmt: skip
    lines = [f"HTTP/1.1 {status} {reason.get(status, 'X')}", f"Content-Type: {kind}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if etag:
        lines.append(f"ETag: {etag}")
    if extra:
        lines.append(extra)
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _send(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    kind: str,
    etag: str | None = None,
    extra: str = "",
) -> None:
    writer.write(_head(status, kind, len(body), etag, extra) + body)
    await writer.drain()


@contextlib.asynccontextmanager
async def serving(root: Path, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[Upstream]:
    """An upstream in the running loop, for in-process tests; `.url` is where it listens."""
    upstream = Upstream(root)
    server = await asyncio.start_server(upstream.handle, host, port, limit=MAX_HEAD)
    bound = server.sockets[0].getsockname()
    upstream.url = f"http://{bound[0]}:{bound[1]}/"
    try:
        yield upstream
    finally:
        server.close()
        upstream.closing.set()
        await server.wait_closed()


async def main(root: Path, host: str, port: int) -> None:
    upstream = Upstream(root)
    server = await asyncio.start_server(upstream.handle, host, port, limit=MAX_HEAD)
    bound = server.sockets[0].getsockname()
    print(f"Upstream listening on http://{bound[0]}:{bound[1]}/", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.root, args.host, args.port))
