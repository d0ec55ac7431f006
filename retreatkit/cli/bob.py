"""The `bob` command: send and receive files, folders and text; run a relay."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from retreatkit import config, loop, version
from retreatkit.cli import prompt, relayhelp, ui
from retreatkit.cli.reporters import RecvReporter, SendReporter
from retreatkit.transfer import aio, codes, find, source
from retreatkit.transfer.anyrelay import AnyRelay, FirstReachable, Said
from retreatkit.transfer.errors import PakeFailed, Refused, TransferError, UnsafeOffer
from retreatkit.transfer.offer import MAX_TEXT, Offer, check_component, escape
from retreatkit.transfer.receive import Writer
from retreatkit.transfer.rendezvous import OwnRendezvous, RelayRendezvous
from retreatkit.transfer.tostdout import StdoutWriter

DESCRIPTION = """\
Send files, folders and text to another computer, end-to-end encrypted.
The sender gets a passphrase such as 7-purple-sofa; the receiver types it.
The relay in between never sees the words (README: what the relay learns).

Where bob connects, in this order: --relay HOST:PORT; else $BOB_RELAY; else the
relays that announce themselves on the LAN (zeroconf, _retreat-relay._tcp), or
for the receiver the sender itself when it announces the passphrase's number
(the LAN's relays first, then every sender announcing it at once: only one that
proves the passphrase counts); else relay.retreat.lan:9000. Anyone can announce
a relay: bob takes one for each address announced, at most 4, in the order of
the addresses, with relay.retreat.lan first when any is announced and the name
resolves. The sender asks them all at once and waits at each that answers (it
stops waiting a moment after the first answer, or after 1 s); the receiver tries
them in that order, each until it answers or for 1 s. Each at up to 4 of the
addresses it announces on this computer's networks (never one elsewhere), each a
moment after the one before: bob names the one that answered. A sender that no
relay takes (none answers, or each is full or busy) waits for the receiver on
the LAN itself. Once both sides proved the passphrase, they try a direct
connection on the LAN and keep the relay if it fails (--no-direct: never; it
needs a relay, and with none to reach bob stops rather than connect to the other
computer).

Not dinosaure/bob: this bob speaks bob/1, a different protocol from the
OCaml tool of the same name, and the two cannot talk to each other."""

EPILOG = """\
examples:
  bob send photo.jpg              then, on the other computer: bob recv 7-purple-sofa
  bob send --text "hello"         the text arrives on the receiver's stdout
  tar c dir | bob send -          stdin is sent as a stream named 'stdin' (--name NAME)
  bob recv CODE --stdout | tar x  one file to stdout
  bob send --count 3 slides.pdf   three receivers, one passphrase
  BOB_PASSPHRASE=12-our-own-words bob send f   a passphrase of your own (never in argv)
  bob relay                       run a relay on 0.0.0.0:9000

Run `bob send` and `bob recv` again after an interruption: the receiver resumes
from what it already holds in its output folder."""
ARGV_REFUSED = (
    "a passphrase on the command line shows in ps to everyone on this computer"
    " while bob waits; set BOB_PASSPHRASE instead"
)


# Ctrl-C: 128 + SIGINT, as a shell reports a command the signal stopped (and as the
# retreatkit command does), so a script can tell its user's stop from a failure
INTERRUPTED = 130
INTERRUPTED_LINE = "ERROR: interrupted"


class Usage(Exception):
    """Bad arguments: exit 2."""


# --version on bob and on each command
VERSION: dict[str, Any] = {
    "action": version.Shown,
    "program": "bob",
    "suffix": " (protocol bob/1)",
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="bob",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", **VERSION)
    sub = top.add_subparsers(dest="command", required=True, metavar="{send,recv,relay}")
    relay_help = (
        "relay HOST:PORT (default: $BOB_RELAY, else one on the LAN, else relay.retreat.lan)"
    )
    timeout_help = f"give up on a silent peer after this long (default {aio.PEER_TIMEOUT:g})"
    direct_help = (
        "never connect to the other computer: everything goes through a relay"
        " (with none to reach, bob stops)"
    )

    send = sub.add_parser("send", help="send files, folders, stdin or text")
    send.add_argument("--version", **VERSION)
    send.add_argument("--relay", metavar="HOST:PORT", help=relay_help)
    send.add_argument(
        "--passphrase", metavar="CODE", help="refused: set BOB_PASSPHRASE=CODE (ps shows argv)"
    )
    send.add_argument("--text", metavar="TEXT", help="send a text message instead of files")
    send.add_argument("--name", metavar="NAME", help="the name the stream - arrives under")
    send.add_argument("--no-compress", action="store_true", help="do not compress")
    send.add_argument(
        "--count", metavar="N", type=_count, default=1, help="send to N receivers (default 1)"
    )
    send.add_argument("--no-direct", action="store_true", help=direct_help)
    send.add_argument("--no-qr", action="store_true", help="no QR code of the passphrase")
    send.add_argument("--timeout", metavar="SECONDS", type=_seconds, help=timeout_help)
    send.add_argument("paths", nargs="*", metavar="PATH", help="files or folders; - for stdin")

    recv = sub.add_parser("recv", help="receive with a passphrase")
    recv.add_argument("--version", **VERSION)
    recv.add_argument("--relay", metavar="HOST:PORT", help=relay_help)
    recv.add_argument("--timeout", metavar="SECONDS", type=_seconds, help=timeout_help)
    recv.add_argument("--no-direct", action="store_true", help=direct_help)
    recv.add_argument(
        "--yes", "-y", action="store_true", help="accept without asking (never hidden top names)"
    )
    recv.add_argument("--output", "-o", metavar="DIR", default=".", help="folder to write into")
    recv.add_argument("--stdout", action="store_true", help="write the one file to stdout")
    recv.add_argument(
        "code", nargs="?", metavar="CODE", help="the passphrase (else $BOB_PASSPHRASE, else asked)"
    )

    relay = sub.add_parser("relay", help="run a relay")
    relay.add_argument("--listen", metavar="HOST:PORT", default="0.0.0.0:9000")
    relay.add_argument("--admin", metavar="HOST:PORT", default="127.0.0.1:8080")
    relay.add_argument("--config", metavar="FILE", type=Path, help="retreat.toml")
    relay.add_argument("--pairs", metavar="N", type=config.pairs, help=config.PAIRS_HELP)
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
        # what the imports made lives until bob exits: the collector need not walk it again,
        # at its collections or at the exit (16 ms of a run's ~170 ms of CPU, bench/RESULTS.md)
        gc.freeze()
        command = send if args.command == "send" else recv
        return loop.run(lambda: _interruptible(lambda: command(args)))
    except Usage as exc:
        print(f"bob: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _over_the_echo()
        _say(INTERRUPTED_LINE)
        return INTERRUPTED
    except Exception as exc:  # one line, never a traceback, whatever a peer or relay sent
        print(f"ERROR: {type(exc).__name__}: {escape(str(exc))} (a bug in bob)", file=sys.stderr)
        return 1
    finally:
        prompt.restore_terminal()


async def _interruptible(command: Callable[[], Awaitable[int]]) -> int:
    """Ctrl-C cancels the command wherever it waits (a prompt, a full socket), so it can
    tell the peer and clean up, instead of arriving only between two awaits."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def interrupt() -> None:
        _over_the_echo()
        task.cancel()

    loop.add_signal_handler(signal.SIGINT, interrupt)
    try:
        return await command()
    except asyncio.CancelledError:
        prompt.restore_terminal()
        _say(INTERRUPTED_LINE)
        return INTERRUPTED
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _over_the_echo() -> None:
    """A terminal echoes Ctrl-C as ^C where the cursor is: at the start of a line, unless
    a prompt waits (its line is ended instead, prompt.end_line). What bob says next
    starts there, over the ^C, rather than after it ("^CERROR: interrupted")."""
    if not prompt.waiting() and sys.stderr.isatty():
        print("\r", end="", file=sys.stderr, flush=True)


def run_relay(args: argparse.Namespace) -> int:
    from retreatkit import serve, startup  # aiohttp and the services: the relay's alone
    from retreatkit.admin.token import TokenError
    from retreatkit.relay.hosted import RelayService, relay_limits

    try:
        cfg = config.load(args.config)
        listen = config.host_port(args.listen)
        admin_at = config.host_port(args.admin)
    except ValueError as exc:
        raise Usage(str(exc)) from None
    if args.pairs:
        cfg["relay"]["pairs"] = args.pairs
    cfg["relay"]["listen"], cfg["admin"]["listen"] = args.listen, args.admin
    # the relay's limits are checked as `retreatkit relay` checks them: at 0 or nan a
    # limit or timeout turns every sender away
    flags = {"relay": "--listen", "admin": "--admin", "relay.pairs": "--pairs"}
    problems = startup.check_config(cfg, ["relay"], flags)
    if problems:
        for problem in problems:
            print(f"bob: {problem}", file=sys.stderr)
        return 2
    serve.setup_logging()
    relay = RelayService(listen, relay_limits(cfg["relay"]))
    try:
        return loop.run(lambda: serve.serve([relay], admin_at, _say))
    except (TokenError, serve.StartError) as exc:  # the organiser's to mend: no bug
        print(f"bob relay: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # its port taken, an address not this machine's
        print(f"bob relay: cannot start: {exc.strerror or exc}", file=sys.stderr)
        return 1


def _say(line: str) -> None:
    prompt.end_line()  # a line said while a prompt waits starts on a line of its own
    print(line, file=sys.stderr, flush=True)


def _given(value: str | None) -> find.Target | None:
    try:
        return find.given(value)
    except ValueError as exc:
        raise Usage(str(exc)) from None


def _code(text: str) -> codes.Code:
    try:
        return codes.expand(codes.parse(text))
    except codes.CodeError as exc:
        raise Usage(str(exc)) from None


def _sources(args: argparse.Namespace) -> source.Sources:
    if args.text is not None and args.paths:
        raise Usage("give --text or paths, not both")
    if args.text is None and not args.paths:
        raise Usage("nothing to send: give a PATH, - for stdin, or --text TEXT")
    if args.name is not None:
        if args.paths != [source.STDIN]:
            raise Usage("--name names the stream: give it with - alone")
        try:
            check_component(args.name)
        except UnsafeOffer as exc:
            raise Usage(f"--name: {exc}") from None
    if args.count > 1 and source.STDIN in args.paths:  # a second receiver would get nothing
        raise Usage(
            "--count: stdin (-) can be read only once, so it goes to one receiver; save it to"
            " a file to send it to several"
        )
    if args.text is not None:
        if ui.text_size(args.text) > MAX_TEXT:
            raise Usage("the text is over 1 MiB; send it as a file")
        return source.Sources(Offer(text=args.text), [])
    return source.collect(args.paths, stdin_name=args.name or source.STDIN_NAME)


async def send(args: argparse.Namespace) -> int:
    target = _given(args.relay)
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
    reporter = SendReporter(target, own=code is not None, qr=not args.no_qr, count=args.count)
    try:
        sources = _sources(args)
        for skipped in sources.skipped:
            _say(f"Skipping {skipped}")
        _say(ui.describe_send(sources.offer))
        timeout = args.timeout or aio.PEER_TIMEOUT
        options = aio.Options(not args.no_compress, not args.no_direct, timeout)
        rendezvous: aio.Rendezvous
        heard = None if target is not None else await find.on_lan(None)
        if heard is not None and heard.relays:
            target = heard.relays[0]
            # each one that answers holds the nameplate; none that answers: our own
            relays = Said(
                AnyRelay(
                    [t.relay for t in heard.relays], args.count, timeout, find.REACH, find.HELLO
                ),
                lambda held: _say_relays(held, heard.relays),
            )
            rendezvous = relays
            if not args.no_direct:
                rendezvous = FirstReachable(relays, OwnRendezvous(args.count, timeout), _say)
        elif heard is not None:
            target = heard.default
            at_default = Said(
                RelayRendezvous(target.relay, args.count, timeout, find.REACH, find.HELLO),
                lambda held: _say_relays(held, [heard.default]),
            )
            # our own rendezvous would be a direct connection: --no-direct needs a relay
            rendezvous = (
                at_default
                if args.no_direct
                else FirstReachable(at_default, OwnRendezvous(args.count, timeout), _say)
            )
        else:
            assert target is not None
            rendezvous = RelayRendezvous(target.relay, args.count, timeout)
        await aio.send(rendezvous, sources, code, reporter, options, args.count)
    except TransferError as exc:
        if args.no_direct:
            exc = relayhelp.needs_relay(exc, target, "to let the receiver connect to this computer")
        return _fail(reporter, relayhelp.advised(exc, target), "start a new bob send")
    finally:
        reporter.stop()
    _say("Transfer complete." if args.count == 1 else f"Sent to {args.count} receivers.")
    return 0


def _say_relays(held: list[aio.Relay], tried: list[find.Target]) -> None:
    """The relays that took the offer (or met the sender), at the addresses that answered,
    in the order of those (not of their answers): the one the event's nameserver names,
    and those found on the LAN."""
    named = {t.relay for t in tried if t.how == "default"}
    held = sorted(held, key=find.in_order)
    lan = [relay for relay in held if relay not in named]
    if len(lan) == 1:
        found = f"the relay at {lan[0]} (found on the LAN)"
    else:
        found = f"the {len(lan)} relays found on the LAN: {', '.join(map(str, lan))}"
    own = [f"the relay at {relay} ({find.DEFAULT.host})" for relay in held if relay in named]
    if held:
        _say("Using " + " and ".join(own + ([found] if lan else [])))


def _fail(reporter: ui.Reporter, exc: Exception, advice: str) -> int:
    reporter.stop()
    line = f"ERROR: {exc}"  # every message is one line, peer and relay text escaped
    if isinstance(exc, PakeFailed):
        # the nameplate is burned: one guess per passphrase
        line += f". The passphrase is used up: {advice}"
    _say(line)
    return 1


def _place(target: find.Target, timeout: float) -> aio.Place:
    """Where a receiver may meet its sender, as the user is told of it: one found on the
    LAN is named where it answered, once the sender is met there."""
    # the user's own relay (--relay) may be far: the bounds of a relay on the LAN are not its
    nearby = target.how in ("lan", "default")
    reach = find.REACH if nearby else aio.CONNECT_TIMEOUT
    hello = find.HELLO if nearby else aio.CONNECT_TIMEOUT
    connector = aio.via_relay(target.relay, timeout, direct=target.direct, reach=reach)
    if target.direct:

        def found(link: aio.Link) -> None:
            _say(f"Found the sender on the LAN at {link.relay or target.relay}")

        return aio.Place(connector, f"the sender announced at {target.relay}", found)

    def used(link: aio.Link) -> None:
        if nearby:
            _say_relays([link.relay or target.relay], [target])

    return aio.Place(connector, f"the relay at {target.relay}", used, hello)


async def _passphrase(args: argparse.Namespace, lines: prompt.Lines) -> codes.Code | None:
    env = os.environ.get("BOB_PASSPHRASE") if not args.code else None
    text = args.code or env
    if not text:
        text = await prompt.ask_passphrase(lines)
        if text is None:
            _say("ERROR: no passphrase: give it as an argument, in BOB_PASSPHRASE, or on stdin")
            return None
    code = _code(text)
    better = codes.suggest(code)
    if better is None:
        return code
    # a typo burns the passphrase: ask before the key exchange, not after
    if sys.stdin.isatty():
        answer = await lines.ask(
            f"'{code}' has a word bob never chooses: did you mean {better}?"
            " [Y/n, n keeps it as typed] "
        )
        if answer is None:  # Ctrl-D: neither, and nothing is used up
            raise Usage("no answer: nothing was sent")
        return better if answer.strip().lower() in ("", "y", "yes") else code
    # Nobody to ask. One word off by one typo from one of bob's is a typo far more often
    # than a passphrase of one's own: stop before it is used up. Several such words
    # look chosen; and BOB_PASSPHRASE is how a script says "as typed".
    typos = sum(a != b for a, b in zip(code.secret_words, better.secret_words, strict=True))
    if typos == 1 and not env:
        raise Usage(
            f"'{code}' has a word bob never chooses: did you mean {better}? Nothing was"
            " sent: run again with the passphrase you mean (from BOB_PASSPHRASE it is"
            " taken as typed)"
        )
    _say(f"Note: '{code}' has a word bob never chooses (did you mean {better}?); using it as typed")
    return code


# Why a receiver refuses an offer its user never saw a question about, as the sender
# hears it (an ABORT in place of the answer, PROTOCOL.md 6): "declined" would be untrue,
# and the sender is the one who can mend it. Said as the sender reads it, after its
# "the other side says: ". No path: an ABORT says what failed, never where.
STDOUT_REFUSED = (
    "the receiver asked for the offer on its standard output, which takes one file or"
    " text: send it one file, or ask it to receive into a folder"
)
HIDDEN_REFUSED = (
    "the receiver was told to accept without asking (--yes), which never takes hidden"
    " names at the top: ask it to receive without --yes, to see the offer and choose"
)
UNANSWERED = (
    "nobody answered the receiver's question (its input ended): ask it to receive where"
    " it can answer, or with --yes"
)


def _check_output(given: str, output: Path) -> str:
    """A folder we can write into, found out before the key exchange: after it, the
    passphrase would be used up for nothing. Returns it as the user is shown it: absolute
    (`.` tells nobody where the files went), escaped as names are."""
    try:
        shown = escape(str(output.resolve()))
    except OSError as exc:  # the working folder was removed
        raise Usage(f"--output {escape(given)}: {exc.strerror or exc}") from None
    if not output.is_dir():
        raise Usage(f"--output {escape(given)}: not a folder")
    effective = os.access in os.supports_effective_ids
    if not os.access(output, os.W_OK | os.X_OK, effective_ids=effective):
        read_only = os.statvfs(output).f_flag & os.ST_RDONLY
        why = "Read-only file system" if read_only else "Permission denied"
        raise Usage(f"--output {escape(given)}: cannot write there ({why})")
    return shown


async def recv(args: argparse.Namespace) -> int:
    target = _given(args.relay)
    output = Path(args.output)
    if args.stdout and args.output != ".":
        raise Usage("give --stdout or --output, not both")
    # the folder as the prompt shows it and the last line names it: the same
    folder = "stdout" if args.stdout else _check_output(args.output, output)
    stdin = prompt.Lines()
    code = await _passphrase(args, stdin)
    if code is None:
        return 1
    reporter = RecvReporter(folder)

    async def confirm(offer: Offer, writer: Writer | None, peer: str) -> bool:
        if writer is None:  # text goes to stdout, nothing touches the disk
            return True
        if args.stdout and (len(offer.entries) != 1 or len(offer.files) != 1):
            raise Refused(
                f"not accepted: --stdout takes one file, and this is {ui.files_phrase(offer)}"
                + (" in folders" if len(offer.entries) != len(offer.files) else "")
                + ": ask the sender to send it again, and receive it without --stdout",
                STDOUT_REFUSED,
            )
        for line in ui.describe_offer(offer, writer, peer):
            reporter.say(line)
        if args.yes:
            hidden = ui.hidden_tops(offer)
            if hidden and not args.stdout:
                names = ", ".join(hidden[:3]) + (
                    f" and {len(hidden) - 3} more" if hidden[3:] else ""
                )
                raise Refused(
                    f"not accepted: --yes never accepts hidden names at the top ({names});"
                    " receive without --yes to see the offer and choose",
                    HIDDEN_REFUSED,
                )
            return True
        answer = await stdin.ask(f"Accept into {folder}? [Y/n] ")
        if answer is None:
            raise Refused("no answer on stdin: transfer declined", UNANSWERED)
        return answer.strip().lower() in ("", "y", "yes")

    def writer(folder: Path, offer: Offer) -> Writer:
        return StdoutWriter(offer) if args.stdout else Writer(folder, offer)

    try:
        timeout = args.timeout or aio.PEER_TIMEOUT
        stages = (
            [[target]]
            if target is not None
            else await find.meeting_places(code.nameplate, senders=not args.no_direct)
        )
        target = stages[-1][0]  # what a receiver that met nobody is told about
        options = aio.Options(direct=not args.no_direct, timeout=timeout)
        places = [[_place(t, timeout) for t in stage] for stage in stages]
        offer = await aio.receive(places, code, output, reporter, confirm, options, writer)
    except TransferError as exc:
        told = relayhelp.unreached(exc, target, code, args.no_direct)
        return _fail(
            reporter, relayhelp.advised(told, target), "ask the sender to start a new bob send"
        )
    finally:
        reporter.stop()
    if offer.text is None and not args.stdout:
        if len(reporter.written) == 1:
            _say(f"Received file written to: {reporter.written[0]}")
        else:
            _say(f"Received {len(reporter.written)} files into: {folder}")
    return 0


Lines = prompt.Lines  # where tests and older callers find it

if __name__ == "__main__":
    sys.exit(main())
