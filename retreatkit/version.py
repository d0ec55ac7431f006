"""The kit's version, as its installed metadata says; images carry that metadata too."""

from __future__ import annotations

import argparse
import sys

NAME = "retreatkit"


def command(*args: str) -> list[str]:
    """This retreatkit as the command line of a process of its own (`up`'s dashboard, a
    supervisor in the background). `-P` keeps the current folder off the new process's
    import path: there a folder named retreatkit (another checkout, another version)
    would stand in for the code that is running."""
    return [sys.executable, "-P", "-m", "retreatkit.cli.main", *args]


def number() -> str:
    # importlib.metadata is a slow import: loaded when asked (--version, the first
    # /status), never while a command or a service starts
    from importlib import metadata

    try:
        return metadata.version(NAME)
    except metadata.PackageNotFoundError:
        return "unknown"


class Shown(argparse.Action):
    """--version: `PROGRAM NUMBER[SUFFIX]`, worked out only when given."""

    def __init__(
        self,
        option_strings: list[str],
        dest: str,
        program: str = NAME,
        suffix: str = "",
        **kwargs: object,
    ) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")
        self.program = program
        self.suffix = suffix

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(f"{self.program} {number()}{self.suffix}")
        parser.exit()
