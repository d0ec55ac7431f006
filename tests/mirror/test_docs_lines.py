"""README and the operations guide give the same client lines as the attendee page, which
the end-to-end tests run with real pip, uv, npm and apt-get; the organiser's commands in
the README parse as the `retreatkit` command reads them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from retreatkit.cli.main import parser
from retreatkit.mirror import page

ROOT = Path(__file__).resolve().parents[2]
BASE = "http://mirror.retreat.lan:8000"


@pytest.mark.parametrize("doc", ["README.md", "docs/operations.md"])
def test_the_docs_give_the_pages_lines(doc: str) -> None:
    text = (ROOT / doc).read_text()
    lines = page.lines(BASE, ("debian",), (("debian", "bookworm", "main"),))
    wanted = lines["pip"] + lines["uv"] + lines["npm"] + lines["apt"][:1] + lines["bob"][:1]
    for line in wanted:
        assert line in text, line
    # and no other pip or uv line that would be refused, or point elsewhere
    given = {
        found.strip()
        for found in re.findall(r"^\s*((?:pip|uv pip) install --index-url .*)$", text, re.M)
    }
    assert given <= set(lines["pip"] + lines["uv"]), given
    if doc == "README.md":
        for line in lines["apt"] + lines["bob"] + lines["opam"]:
            assert line in text, line


def test_the_organisers_commands_parse() -> None:
    text = (ROOT / "README.md").read_text()
    commands = re.findall(r"^(retreatkit mirror .*)$", text, re.M)
    assert len(commands) >= 6
    for command in commands:
        args = parser().parse_args(shlex.split(command)[1:])
        assert args.command == "mirror", command


@pytest.mark.parametrize("verb", ["seed", "export DEST", "import SRC", "add FILE"])
def test_the_store_and_upstreams_given_before_a_verb_are_kept(verb: str) -> None:
    """`retreatkit mirror --store DIR seed ...` reads as `mirror --help` shows it: the verb's
    own copies of the flags must not put their defaults over the values given before it
    (which sent a seed to the user's data folder and the public registries)."""
    before = "--store /srv/mirror --pypi http://up.example/simple/ --apt debian=http://up.example/d"
    args = parser().parse_args(["mirror", *before.split(), *verb.split()])
    assert (args.store, args.pypi) == ("/srv/mirror", "http://up.example/simple/")
    assert args.apt == [("debian", "http://up.example/d")]
    after = parser().parse_args(["mirror", "--store", "/a", *verb.split(), "--store", "/b"])
    assert after.store == "/b"


def test_seed_says_it_fetches_exactly_what_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    """No resolver of its own: a bare `demo-pkg==1.0` seeds that package alone, so the
    organiser is told, in --help and the README, to give it what lists every dependency."""
    with pytest.raises(SystemExit):
        parser().parse_args(["mirror", "seed", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "exactly what they list (a requirements.txt from pip freeze or uv pip compile" in shown
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "It fetches exactly what the files list, with no resolver of its own" in readme
