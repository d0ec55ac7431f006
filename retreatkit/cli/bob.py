"""The `bob` command: send and receive files, folders and text; run a relay."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from retreatkit import config, loop
from retreatkit.cli import ui
from retreatkit.transfer import aio, codes, source
from retreatkit.transfer.errors import Refused, TransferError
from retreatkit.transfer.offer import MAX_TEXT, Offer, escape
from retreatkit.transfer.receive import Writer
from retreatkit.transfer.rendezvous import RelayRendezvous

DESCRIPTION = """\
Send files, folders and text to another computer, end-to-end encrypted.
The sender gets a passphrase such as 7-purple-sofa; the receiver types it.
The relay in between never sees the words (README: what the relay learns).

Not dinosaure/bob: this bob speaks bob/1, a different protocol from the
OCaml tool of the same name, and the two cannot talk to each other."""

EPILOG = """\
examples:
  bob send photo.jpg              then, on the other computer: bob recv 7-purple-sofa
  bob send --text "hello"         the text arrives on the receiver's stdout
  tar c dir | bob send -          stdin is sent as a stream named 'stdin'
  BOB_PASSPHRASE=12-our-own-words bob send f   a passphrase of your own (never in argv)
  bob relay                       run a relay on 0.0.0.0:9000"""
ARGV_REFUSED = (
    "a passphrase on the command line shows in ps to everyone on this computer"
    " while bob waits; set BOB_PASSPHRASE instead"
)


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
    timeout_help = f"give up on a silent peer after this long (default {aio.PEER_TIMEOUT:g})"
    direct_help = "never connect directly: everything goes through the relay"

    send = sub.add_parser("send", help="send files, folders, stdin or text")
    send.add_argument("--relay", metavar="HOST:PORT", help=relay_help)
    send.add_argument(
        "--passphrase", metavar="CODE", help="refused: set BOB_PASSPHRASE=CODE (ps shows argv)"
    )
    send.add_argument("--text", metavar="TEXT", help="send a text message instead of files")
    send.add_argument("--no-compress", action="store_true", help="do not compress")
    send.add_argument(
        "--count", metavar="N", type=_count, default=1, help="send to N receivers (default 1)"
    )
    send.add_argument("--no-direct", action="store_true", help=direct_help)
    send.add_argument("--timeout", metavar="SECONDS", type=_seconds, help=timeout_help)
    send.add_argument("paths", nargs="*", metavar="PATH", help="files or folders; - for stdin")

    recv = sub.add_parser("recv", help="receive with a passphrase")
    recv.add_argument("--relay", metavar="HOST:PORT", help=relay_help)
    recv.add_argument("--timeout", metavar="SECONDS", type=_seconds, help=timeout_help)
    recv.add_argument("--no-direct", action="store_true", help=direct_help)
    recv.add_argument(
        "--yes", "-y", action="store_true", help="accept without asking (never hidden top names)"
    )
    recv.add_argument("--output", "-o", metavar="DIR", default=".", help="folder to write into")
    recv.add_argument(
        "code", nargs="?", metavar="CODE", help="the passphrase (else $BOB_PASSPHRASE, else asked)"
    )

    relay = sub.add_parser("relay", help="run a relay")
    relay.add_argument("--listen", metavar="HOST:PORT", default="0.0.0.0:9000")
    relay.add_argument("--admin", metavar="HOST:PORT", default="127.0.0.1:8080")
    relay.add_argument("--config", metavar="FILE", type=Path, help="retreat.toml")
    return top


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 10**6:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"not a number of receivers (1 to 1000): {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "relay":
            return run_relay(args)
        command = send if args.command == "send" else recv
        return loop.run(lambda: _interruptible(lambda: command(args)))
    except Usage as exc:
        print(f"bob: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ERROR: interrupted", file=sys.stderr)
        return 1
    except Exception as exc:  # one line, never a traceback, whatever a peer or relay sent
        print(f"ERROR: {type(exc).__name__}: {escape(str(exc))} (a bug in bob)", file=sys.stderr)
        return 1


async def _interruptible(command: Callable[[], Awaitable[int]]) -> int:
    """Ctrl-C cancels the command wherever it waits (a prompt, a full socket), so it can
    tell the peer and clean up, instead of arriving only between two awaits."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGINT, task.cancel)
    try:
        return await command()
    except asyncio.CancelledError:
        _say("ERROR: interrupted")
        return 1
    finally:
        loop.remove_signal_handler(signal.SIGINT)


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
    if args.passphrase is not None:
        raise Usage(ARGV_REFUSED)
    own = os.environ.get("BOB_PASSPHRASE")
    code = _code(own) if own else None
    if code is not None and codes.entropy_bits(code) < codes.MIN_BITS:
        bits = codes.entropy_bits(code)
        raise Usage(
            f"the passphrase in BOB_PASSPHRASE is too easy to guess (about {bits:.0f} bits;"
            f" a generated one has {codes.MIN_BITS}): use longer words, or unset it"
            " and let bob choose"
        )
    if args.text is not None and args.paths:
        raise Usage("give --text or paths, not both")
    if args.text is None and not args.paths:
        raise Usage("nothing to send: give a PATH, - for stdin, or --text TEXT")
    reporter = SendReporter(relay, own=code is not None)
    try:
        if args.text is not None:
            if ui.text_size(args.text) > MAX_TEXT:
                raise Usage("the text is over 1 MiB; send it as a file")
            sources = source.Sources(Offer(text=args.text), [])
        else:
            sources = source.collect(args.paths)
        for skipped in sources.skipped:
            _say(f"Skipping {skipped}")
        _say(ui.describe_send(sources.offer))
        timeout = args.timeout or aio.PEER_TIMEOUT
        options = aio.Options(not args.no_compress, not args.no_direct, timeout)
        rendezvous = RelayRendezvous(relay, args.count, timeout)
        await aio.send(rendezvous, sources, code, reporter, options, args.count)
    except TransferError as exc:
        return _fail(reporter, exc)
    finally:
        reporter.stop()
    _say("Transfer complete.")
    return 0


class SendReporter(ui.Reporter):
    def __init__(self, relay: aio.Relay, own: bool = False) -> None:
        super().__init__()
        self.relay = relay
        self.own = own  # the user chose the words: they are never printed

    def code(self, code: codes.Code) -> None:
        super().code(code)
        command = "bob recv"
        if self.relay != _relay(None):
            command += f" --relay {self.relay}"
        if self.own:
            self.say(f"Passphrase: yours, on nameplate {code.nameplate} (its words are not shown)")
        else:
            self.say(f"Passphrase: {code}")
            command += f" {code}"
        self.say("On the other computer, please run:")
        self.say("")
        self.say(command)
        self.say("")


def _fail(reporter: ui.Reporter, exc: Exception) -> int:
    reporter.stop()
    _say(f"ERROR: {exc}")  # every message is one line, peer and relay text escaped
    return 1


async def recv(args: argparse.Namespace) -> int:
    relay = _relay(args.relay)
    output = Path(args.output)
    if not output.is_dir():
        raise Usage(f"--output {args.output}: not a folder")
    stdin = Lines()
    text = args.code or os.environ.get("BOB_PASSPHRASE")
    if not text:
        text = await stdin.ask("Enter passphrase: ")
        if text is None:
            _say("ERROR: no passphrase: give it as an argument, in BOB_PASSPHRASE, or on stdin")
            return 1
    code = _code(text)
    reporter = RecvReporter(output)

    async def confirm(offer: Offer, writer: Writer | None, peer: str) -> bool:
        if writer is None:  # text goes to stdout, nothing touches the disk
            return True
        for line in ui.describe_offer(offer, writer, peer):
            reporter.say(line)
        if args.yes:
            hidden = ui.hidden_tops(offer)
            if hidden:
                names = ", ".join(hidden[:3]) + (
                    f" and {len(hidden) - 3} more" if hidden[3:] else ""
                )
                raise Refused(
                    f"not accepted: --yes never accepts hidden names at the top ({names});"
                    " receive without --yes to see the offer and choose"
                )
            return True
        answer = await stdin.ask(f"Accept into {escape(str(output.resolve()))}? [Y/n] ")
        if answer is None:
            raise Refused("no answer on stdin: transfer declined")
        return answer.strip().lower() in ("", "y", "yes")

    try:
        timeout = args.timeout or aio.PEER_TIMEOUT
        options = aio.Options(direct=not args.no_direct, timeout=timeout)
        connector = aio.via_relay(relay, timeout)
        offer = await aio.receive(connector, code, output, reporter, confirm, options)
    except TransferError as exc:
        return _fail(reporter, exc)
    finally:
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
        shown = escape(str(output))
        self.prefix = "" if shown == "." else shown.rstrip("/") + "/"
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


class Lines:
    """Lines from stdin (fd 0), read in a daemon thread: the loop goes on meanwhile, and
    Ctrl-C at a prompt stops bob at once instead of when Enter is pressed."""

    def __init__(self) -> None:
        self._buf = b""
        self._eof = False
        self._worker: aio.Worker | None = None

    async def ask(self, prompt: str) -> str | None:
        """The next line after showing `prompt` on stderr; None at end of input."""
        print(prompt, end="", file=sys.stderr, flush=True)
        while b"\n" not in self._buf and not self._eof:
            self._worker = self._worker or aio.Worker()
            chunk = await self._worker.run(lambda: os.read(0, 4096))
            self._eof = not chunk
            self._buf += chunk
        if not self._buf:
            return None
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode("utf-8", "replace")


if __name__ == "__main__":
    sys.exit(main())
