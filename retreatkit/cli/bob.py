"""The `bob` command: send and receive files, folders and text; run a relay."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from retreatkit import config, loop
from retreatkit.cli import ui
from retreatkit.transfer import aio, codes, source
from retreatkit.transfer.errors import TransferError
from retreatkit.transfer.offer import MAX_TEXT, Offer, escape
from retreatkit.transfer.receive import Writer

DESCRIPTION = """\
Send files, folders and text to another computer, end-to-end encrypted.
The sender gets a passphrase such as 7-purple-sofa; the receiver types it.
The relay in between sees only ciphertext and the public number.

Not dinosaure/bob: this bob speaks bob/1, a different protocol from the
OCaml tool of the same name, and the two cannot talk to each other."""

EPILOG = """\
examples:
  bob send photo.jpg              then, on the other computer: bob recv 7-purple-sofa
  bob send --text "hello"         the text arrives on the receiver's stdout
  tar c dir | bob send -          stdin is sent as a stream named 'stdin'
  bob relay                       run a relay on 0.0.0.0:9000"""


class Usage(Exception):
    """Bad arguments: exit 2."""


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="bob",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="{send,recv,relay}")
    relay_help = "relay HOST:PORT (default: $BOB_RELAY, else relay.retreat.lan:9000)"

    send = sub.add_parser("send", help="send files, folders, stdin or text")
    send.add_argument("--relay", metavar="HOST:PORT", help=relay_help)
    send.add_argument("--passphrase", metavar="CODE", help="use this passphrase (NUMBER-word-word)")
    send.add_argument("--text", metavar="TEXT", help="send a text message instead of files")
    send.add_argument("--no-compress", action="store_true", help="do not compress")
    send.add_argument("paths", nargs="*", metavar="PATH", help="files or folders; - for stdin")

    recv = sub.add_parser("recv", help="receive with a passphrase")
    recv.add_argument("--relay", metavar="HOST:PORT", help=relay_help)
    recv.add_argument("--yes", "-y", action="store_true", help="accept without asking")
    recv.add_argument("--output", "-o", metavar="DIR", default=".", help="folder to write into")
    recv.add_argument(
        "code", nargs="?", metavar="CODE", help="the passphrase (else $BOB_PASSPHRASE, else asked)"
    )

    relay = sub.add_parser("relay", help="run a relay")
    relay.add_argument("--listen", metavar="HOST:PORT", default="0.0.0.0:9000")
    relay.add_argument("--admin", metavar="HOST:PORT", default="127.0.0.1:8080")
    relay.add_argument("--config", metavar="FILE", type=Path, help="retreat.toml")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "relay":
            return run_relay(args)
        if args.command == "send":
            return loop.run(lambda: send(args))
        return loop.run(lambda: recv(args))
    except Usage as exc:
        print(f"bob: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ERROR: interrupted", file=sys.stderr)
        return 1


def run_relay(args: argparse.Namespace) -> int:
    from retreatkit import serve  # aiohttp and the services: only the relay needs them

    try:
        cfg = config.load(args.config)
        listen = config.host_port(args.listen)
        admin_at = config.host_port(args.admin)
    except ValueError as exc:
        raise Usage(str(exc)) from None
    serve.setup_logging()
    relay = serve.RelayService(listen, serve.relay_limits(cfg["relay"]))
    return loop.run(lambda: serve.serve([relay], admin_at, _say))


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _relay(value: str | None) -> aio.Relay:
    text = value or os.environ.get("BOB_RELAY") or config.DEFAULTS["bob"]["relay"]
    try:
        host, port = config.host_port(text, default_port=9000)
    except ValueError as exc:
        raise Usage(str(exc)) from None
    return aio.Relay(host, port)


def _code(text: str) -> codes.Code:
    try:
        return codes.parse(text)
    except codes.CodeError as exc:
        raise Usage(str(exc)) from None


async def send(args: argparse.Namespace) -> int:
    relay = _relay(args.relay)
    code = _code(args.passphrase) if args.passphrase else None
    if args.text is not None and args.paths:
        raise Usage("give --text or paths, not both")
    if args.text is None and not args.paths:
        raise Usage("nothing to send: give a PATH, - for stdin, or --text TEXT")
    reporter = SendReporter(relay)
    try:
        if args.text is not None:
            if len(args.text.encode()) > MAX_TEXT:
                raise Usage("the text is over 1 MiB; send it as a file")
            sources = source.Sources(Offer(text=args.text), [])
        else:
            sources = source.collect(args.paths)
        for skipped in sources.skipped:
            _say(f"Skipping {skipped}")
        _say(ui.describe_send(sources.offer))
        await aio.send(relay, sources, code, reporter, compress=not args.no_compress)
    except TransferError as exc:
        return _fail(reporter, exc)
    reporter.stop()
    _say("Transfer complete.")
    return 0


class SendReporter(ui.Reporter):
    def __init__(self, relay: aio.Relay) -> None:
        super().__init__()
        self.relay = relay

    def code(self, code: codes.Code) -> None:
        super().code(code)
        command = "bob recv"
        if self.relay != _relay(None):
            command += f" --relay {self.relay}"
        self.say(f"Passphrase: {code}")
        self.say("On the other computer, please run:")
        self.say("")
        self.say(f"{command} {code}")
        self.say("")


def _fail(reporter: ui.Reporter, exc: Exception) -> int:
    reporter.stop()
    _say(f"ERROR: {exc}")
    return 1


async def recv(args: argparse.Namespace) -> int:
    relay = _relay(args.relay)
    text = args.code or os.environ.get("BOB_PASSPHRASE")
    if not text:
        text = await _ask("Enter passphrase: ")
    code = _code(text)
    output = Path(args.output)
    if not output.is_dir():
        raise Usage(f"--output {args.output}: not a folder")
    reporter = RecvReporter(output)

    async def confirm(offer: Offer, writer: Writer | None, peer: str) -> bool:
        if writer is None:  # text goes to stdout, nothing touches the disk
            return True
        for line in ui.describe_offer(offer, writer, peer):
            reporter.say(line)
        if args.yes:
            return True
        answer = await _ask(f"Accept into {escape(str(output.resolve()))}? [Y/n] ")
        return answer.strip().lower() in ("", "y", "yes")

    try:
        offer = await aio.receive(relay, code, output, reporter, confirm)
    except TransferError as exc:
        return _fail(reporter, exc)
    reporter.stop()
    if offer.text is None:
        if len(reporter.written) == 1:
            _say(f"Received file written to: {reporter.written[0]}")
        else:
            _say(f"Received {len(reporter.written)} files into: {escape(str(output))}")
    return 0


class RecvReporter(ui.Reporter):
    def __init__(self, output: Path) -> None:
        super().__init__()
        self.output = output
        self.written: list[str] = []

    def saved(self, name: str) -> None:
        shown = escape(str(self.output))
        self.written.append(name if shown == "." else f"{shown.rstrip('/')}/{name}")

    def text(self, text: str) -> None:
        sys.stdout.write(ui.safe_text(text, sys.stdout))
        if not text.endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()


async def _ask(prompt: str) -> str:
    """A prompt on stderr, read from stdin in a thread: the loop goes on meanwhile."""
    print(prompt, end="", file=sys.stderr, flush=True)
    line: str = await asyncio.to_thread(sys.stdin.readline)
    if not line:
        raise TransferError("no answer on stdin")
    return line.rstrip("\n")


if __name__ == "__main__":
    sys.exit(main())
