"""Seeding: every file format read as pip, uv, npm, opam and apt read them; wants resolved
against a mirror in process, fetched once, and counted (fetched, already there, failed)."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from retreatkit.cli.main import main
from retreatkit.mirror import fakeupstream, seedfiles
from retreatkit.mirror.seed import Filters, Seeder
from retreatkit.mirror.seedfiles import SeedFileError, Want
from retreatkit.mirror.testing import (
    make_backend,
    make_sdist,
    make_wheel,
    mirror_client,
    settings,
    write_pypi,
)
from tests.mirror.conftest import Env

A, B = "a" * 64, "b" * 64


def test_requirements_as_pip_reads_them(tmp_path: Path) -> None:
    (tmp_path / "base.txt").write_text("Demo_Dep>=1.0  # a comment\n")
    (tmp_path / "requirements.txt").write_text(
        "-r base.txt\n-r requirements.txt\n--index-url https://example.invalid/simple\n"
        f"demo-pkg==1.0 \\\n    --hash=sha256:{A} \\\n    --hash=sha256:{B.upper()}\n"
        "-e ./src\nlocal @ https://example.invalid/local.whl\nnot a requirement!\n"
    )
    kind, path = seedfiles.kind_of(str(tmp_path / "requirements.txt"))
    found = seedfiles.read(kind, path)
    assert found.wants == [
        Want("pypi", "demo-dep", None, ">=1.0", frozenset(), f"{tmp_path}/base.txt:1"),
        Want("pypi", "demo-pkg", "1.0", "", frozenset({A, B}), f"{path}:4"),
    ]
    assert [n.split(": ", 1)[1] for n in found.notes] == [
        "editable, skipped",
        "local comes from a URL, skipped",
        "not a requirement pip would read, skipped",
    ]


UV_LOCK = f"""version = 1
[[package]]
name = "Demo-Pkg"
version = "1.0"
source = {{ registry = "https://index.example.org/simple" }}
sdist = {{ url = "https://x/demo-1.0.tar.gz", hash = "sha256:{A}", size = 10 }}
wheels = [{{ url = "https://x/demo-1.0-py3-none-any.whl", hash = "sha256:{B}", size = 10 }}]

[[package]]
name = "mine"
version = "0.1"
source = {{ editable = "." }}
"""
PYLOCK = f"""lock-version = "1.0"
created-by = "uv"
[[packages]]
name = "demo-pkg"
version = "1.0"
wheels = [{{ url = "https://x/demo-1.0-py3-none-any.whl", hashes = {{ sha256 = "{B}" }} }}]
[[packages]]
name = "from-git"
vcs = {{ type = "git", url = "https://x/y.git", commit-id = "0" }}
"""


@pytest.mark.parametrize(("name", "text"), [("uv.lock", UV_LOCK), ("pylock.toml", PYLOCK)])
def test_python_locks(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    kind, path = seedfiles.kind_of(str(tmp_path / name))
    (want,) = seedfiles.read(kind, path).wants
    assert (want.name, want.version) == ("demo-pkg", "1.0")
    assert want.hashes == ({A, B} if name == "uv.lock" else {B})


def test_npm_locks_of_every_version(tmp_path: Path) -> None:
    v3 = {
        "lockfileVersion": 3,
        "packages": {
            "": {"name": "app"},
            "node_modules/@rk/util": {"version": "2.0.0", "integrity": "sha512-x",
                                      "resolved": "https://r/@rk/util/-/util-2.0.0.tgz"},
            "node_modules/@rk/util/node_modules/leftpad-rk": {
                "version": "1.0.0", "resolved": "https://r/leftpad-rk/-/leftpad-rk-1.0.0.tgz"},
            "node_modules/mine": {"link": True, "resolved": "packages/mine"},
            "node_modules/gitdep": {"version": "1.0.0", "resolved": "git+ssh://git@x/y.git"},
        },
    }  # fmt: skip
    v1 = {
        "lockfileVersion": 1,
        "dependencies": {
            "a": {"version": "1.0.0", "resolved": "https://r/a/-/a-1.0.0.tgz",
                  "dependencies": {"b": {"version": "2.0.0", "resolved": "https://r/b/-/b-2.0.0.tgz"}}},
        },
    }  # fmt: skip
    for doc, expected in ((v3, [("@rk/util", "2.0.0"), ("leftpad-rk", "1.0.0")]),
                          (v1, [("a", "1.0.0"), ("b", "2.0.0")])):  # fmt: skip
        (tmp_path / "package-lock.json").write_text(json.dumps(doc))
        found = seedfiles.read(*seedfiles.kind_of(str(tmp_path / "package-lock.json")))
        assert [(w.name, w.version) for w in found.wants] == expected
    assert found.wants[0].label == "npm a@1.0.0"


def test_opam_exports_and_lists_and_debian_lists(tmp_path: Path) -> None:
    export = tmp_path / "dev.export"
    export.write_text(
        'opam-version: "2.0"\ncompiler: ["ocaml-base-compiler.5.1.1"]\n'
        'roots: ["hello.1.0"]\n'
        'installed: ["base-unix.base" "hello.1.0" "ocaml-base-compiler.5.1.1"]\n'
    )
    found = seedfiles.read(*seedfiles.kind_of(str(export)))
    assert [(w.name, w.version) for w in found.wants] == [
        ("hello", "1.0"), ("ocaml-base-compiler", "5.1.1")
    ]  # fmt: skip
    (tmp_path / "opam.txt").write_text("# course\ndune\nhello.1.0\n")
    found = seedfiles.read(*seedfiles.kind_of(f"opam:{tmp_path / 'opam.txt'}"))
    assert [(w.name, w.version) for w in found.wants] == [("dune", None), ("hello", "1.0")]
    (tmp_path / "debs.txt").write_text("build-essential\nhello=2.10-3\nBad Name\n")
    found = seedfiles.read(*seedfiles.kind_of(f"apt:{tmp_path / 'debs.txt'}"))
    assert [w.label for w in found.wants] == ["apt build-essential", "apt hello=2.10-3"]
    assert found.notes == [
        f"{tmp_path / 'debs.txt'}: 'Bad Name' is not a Debian package name, skipped"
    ]


def test_a_file_of_no_known_kind_says_how_to_name_it() -> None:
    with pytest.raises(SeedFileError) as exc:
        seedfiles.kind_of("packages.txt")
    assert str(exc.value) == (
        "packages.txt: cannot tell what it lists; name its kind, e.g. requirements:packages.txt"
        " (requirements, pylock, uv.lock, npm, opam, apt)"
    )


@pytest.mark.parametrize(
    ("filters", "ok"),
    [
        (Filters(), {"x-1.0-cp311-cp311-manylinux_2_17_x86_64.whl",
                     "x-1.0-cp312-abi3-win_amd64.whl", "x-1.0-py3-none-any.whl", "x-1.0.tar.gz"}),
        (Filters(platforms=("manylinux*_x86_64",)),
         {"x-1.0-cp311-cp311-manylinux_2_17_x86_64.whl", "x-1.0-py3-none-any.whl", "x-1.0.tar.gz"}),
        (Filters(pythons=("3.12",)),
         {"x-1.0-cp312-abi3-win_amd64.whl", "x-1.0-py3-none-any.whl", "x-1.0.tar.gz"}),
    ],
)  # fmt: skip
def test_wheel_filters(filters: Filters, ok: set[str]) -> None:
    names = ["x-1.0-cp311-cp311-manylinux_2_17_x86_64.whl", "x-1.0-cp312-abi3-win_amd64.whl",
             "x-1.0-py3-none-any.whl", "x-1.0.tar.gz"]  # fmt: skip
    assert {n for n in names if filters.ok(n)} == ok


async def test_seeding_fetches_once_and_says_what_it_did(env: Env) -> None:
    wants = [
        Want("pypi", "demo-pkg", "1.0"),
        Want("pypi", "demo-dep", spec=">=1"),
        Want("pypi", "demo-dep", "9.9"),
        Want("pypi", "no-such-project", "1.0"),
    ]
    base = str(env.client.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as session:
        first = await Seeder(session, base).run(wants)
        again = await Seeder(session, base).run(wants)
    dep_size = len(env.wheels["demo-dep"][1])
    assert (first.fetched, first.already) == (4, 0)  # two wheels and their metadata
    assert first.fetched_bytes > dep_size
    assert (
        sorted(first.failed)
        == [
            (
                "pypi no-such-project==1.0",
                f"the upstream has no {env.upstream.url}simple/no-such-project/",
            ),
            ("pypi demo-dep==9.9", "no file of demo-dep 9.9 in the index for the platforms asked"),
        ][::-1]
    )
    assert first.notes == ["demo-dep>=1: not pinned, took 2.0 (its dependencies are not resolved)"]
    assert (again.fetched, again.already) == (0, 4)
    assert env.fetched(env.wheels["demo-dep"][0]) == 1


@pytest.mark.parametrize(
    ("argv", "code", "said"),
    [
        (["--mirror", "http://127.0.0.1:9", "--kit"], 1,
         "no mirror answers at http://127.0.0.1:9: the mirror did not answer (connection refused)"),
        (["--mirror", "http://127.0.0.1:9", "--pypi", "http://x/", "--kit"], 2,
         "--mirror warms a serving mirror with its own upstreams: drop --pypi"),
        (["--mirror", "http://127.0.0.1:9"], 2, "name the files to seed from (or --kit)"),
        (["--mirror", "http://127.0.0.1:9", "--apt-dist", "bookworm", "--kit"], 2,
         "--apt-dist bookworm: expected NAME/SUITE (debian/bookworm)"),
    ],
)  # fmt: skip
def test_what_seed_says_when_it_cannot(
    argv: list[str], code: int, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["mirror", "seed", *argv]) == code
    assert capsys.readouterr().err == f"retreatkit: {said}\n"


async def test_seeding_an_sdist_fetches_what_builds_it(tmp_path: Path) -> None:
    """A lock names an sdist, never what builds it: pip and uv install its build
    requirements first, from the mirror, so a store seeded from the lock alone could not
    build it offline. The seed reads each sdist's build requirements (setuptools for one
    with no pyproject.toml), then their dependencies, extras left out."""
    root = tmp_path / "upstream"
    write_pypi(
        root,
        {
            "needs-build": [make_sdist("needs-build", "1.0", ("demo-backend>=1",))],
            "legacy": [make_sdist("legacy", "1.0", None)],
            "demo-backend": [
                make_backend("demo-backend", "1.0"),
                make_backend("demo-backend", "2.0", ("helper", "docs-only; extra == 'docs'")),
            ],
            "helper": [make_wheel("helper", "1.0")],
            "docs-only": [make_wheel("docs-only", "1.0")],
            "setuptools": [make_wheel("setuptools", "80.0")],
        },
    )
    async with fakeupstream.serving(root) as upstream:
        config = settings(tmp_path / "store", f"{upstream.url}simple/")
        async with mirror_client(config) as (client, _):
            base = str(client.make_url("")).rstrip("/")
            wants = [Want("pypi", "needs-build", "1.0"), Want("pypi", "legacy", "1.0")]
            totals: list[int] = []
            async with aiohttp.ClientSession() as session:
                seeded = await Seeder(session, base, on_total=totals.append).run(wants)
    assert seeded.failed == []
    assert seeded.notes == [
        "setuptools>=40.8.0: took 80.0 to build legacy-1.0.tar.gz",
        "demo-backend>=1: took 2.0 to build needs_build-1.0.tar.gz",
        "helper: took 1.0 needed by demo_backend-2.0-py3-none-any.whl",
    ]
    fetched = {path.removeprefix("/files/") for path in upstream.counts}
    assert {"demo_backend-2.0-py3-none-any.whl", "setuptools-80.0-py3-none-any.whl",
            "helper-1.0-py3-none-any.whl"} <= fetched  # fmt: skip
    assert not any(name.startswith(("docs_only", "demo_backend-1.0")) for name in fetched)
    assert totals == [4, 8, 10]  # the bar grows by each round, never starts again


async def test_a_metadata_file_made_from_a_wheel_held_counts_as_fetched(env: Env) -> None:
    """The seed asks for a wheel and its metadata file at once; the mirror makes the file
    from the wheel when it holds that already. It was not there before: counted as
    fetched (said as `already there`, the end-to-end seed's count of 12 fetched failed
    whenever the wheel won the race)."""
    r = await env.client.get(await env.file_url("demo-dep"))  # the wheel alone, as uv takes it
    assert r.status == 200
    base = str(env.client.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as session:
        seeded = await Seeder(session, base).run([Want("pypi", "demo-dep", "2.0")])
    assert (seeded.fetched, seeded.already, seeded.failed) == (1, 1, [])
