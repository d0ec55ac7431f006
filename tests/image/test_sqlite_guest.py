"""Our SQLite, built from Debian's source, under the guest's own interpreter: its loader,
its libc, its `_sqlite3`, and the libraries an image would ship beside them (no qemu: the
same programs run here). The store's own code runs on it: WAL, `begin immediate`,
`insert or replace`, the ALTER TABLE that brings an old store's catalog up to date."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from retreatkit.image import debs, payload, sqlitelib, sysroot, testing
from retreatkit.image.elf import Elf

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in sqlitelib.TOOLS),
        reason=f"building SQLite needs {', '.join(sqlitelib.TOOLS)} (.ci/run installs them)",
    ),
]

STORE = """
import json, sqlite3, sys, threading
from pathlib import Path

sys.path.extend(json.loads(sys.argv[2]))
root = Path(sys.argv[1])
# a catalog made before `sources` had its later columns: the store adds them
old = sqlite3.connect(root / "index.sqlite")
old.execute("create table sources (name text primary key, url text not null, hashes text not null)")
old.commit()
old.close()

from retreatkit.mirror import eviction
from retreatkit.mirror.records import Source
from retreatkit.mirror.store import Store

store = Store(root)
source = Source("pypi/ab/a-1.whl", "https://files.example/a-1.whl", {"sha256": "ab" * 32},
                "pypi", "a", 10)
store.add_sources([source])
store.add_sources([source])  # insert or replace, in a transaction begun immediate
obj = store.save("pypi/simple/a/", b"<a href=a-1.whl>", "text/html")
seen = []
reader = threading.Thread(target=lambda: seen.append(store.get(obj.key)))  # its own connection
reader.start()
reader.join()
keys, freed = eviction.forget(store, obj.digest)
maps = Path("/proc/self/maps").read_text().splitlines()
print(json.dumps({
    "version": sqlite3.sqlite_version,
    "journal": store.db().execute("pragma journal_mode").fetchone()[0],
    "columns": [row[1] for row in store.db().execute("pragma table_info(sources)")],
    "source": store.source(source.name).url,
    "read_by_another_thread": seen[0].digest == obj.digest,
    "forgot": [keys, freed, store.get(obj.key)],
    "loaded": sorted({line.split()[-1] for line in maps if "libsqlite3" in line}),
}))
store.close()
"""


def test_the_guests_interpreter_runs_the_store_on_our_sqlite(tmp_path: Path) -> None:
    said: list[str] = []
    ours = sqlitelib.build(said.append)  # at once when `image kernel` built it
    assert said[-1].startswith(f"SQLite ready: {ours.path} (")
    assert ours.kind == "own"
    # no libm: Debian's needs it for the math functions ours leaves out
    assert Elf.read(ours.path).needed() == ["libc.so.6"]
    # compiled without unwind tables (linking.py): at most the C runtime's few bytes stay
    assert len(Elf.read(ours.path).section(".eh_frame") or b"") < 1024
    assert Elf.read(ours.path).section(".eh_frame_hdr") is None
    interp = sysroot.interpreter()
    extension = next((interp.stdlib / "lib-dynload").glob("_sqlite3.*.so"))
    assert sqlitelib.missing(ours.path, sqlitelib.wanted([extension])) == []
    package = debs.package(sqlitelib.BINARY)
    assert ours.label == (
        f"retreatkit build of sqlite3 {package.version} (options {sqlitelib.options_key()})"
    )

    def given(soname: str, path: Path, _: debs.Package) -> Path:
        return ours.path if soname == sqlitelib.SONAME else path

    # the libraries an image ships, in a folder of their own, and nothing else
    libraries = sysroot.Libraries(interp.packages).resolve([interp.binary, extension], given)
    folder = tmp_path / "lib"
    run = testing.guest_libraries(libraries, interp.binary, folder)
    assert (folder / sqlitelib.SONAME).read_bytes() == ours.path.read_bytes()
    store = tmp_path / "store"
    store.mkdir()
    roots = json.dumps([str(p) for p in payload.site_roots()])
    done = subprocess.run(
        [*run, "-I", "-S", "-c", STORE, str(store), roots],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["loaded"] == [str(folder / sqlitelib.SONAME)]
    assert report["version"] == package.version.split("-")[0]
    assert report["journal"] == "wal"
    assert report["columns"] == [
        "name", "url", "hashes", "ecosystem", "package", "size", "aliases", "shown"
    ]  # fmt: skip
    assert report["source"] == "https://files.example/a-1.whl"
    assert report["read_by_another_thread"] is True
    assert report["forgot"] == [["pypi/simple/a/"], 16, None]


def test_the_same_source_and_options_give_the_same_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Built again from scratch in a cache of its own (the source fetched, checked, patched
    and compiled again): the same bytes."""
    first = sqlitelib.build(lambda _: None).path.read_bytes()
    packages = debs.debs_dir()  # the packages only, shared: nothing is built from them
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    debs.debs_dir().parent.mkdir(parents=True)
    debs.debs_dir().symlink_to(packages)
    said: list[str] = []
    again = sqlitelib.build(said.append)
    assert said[0].startswith("Fetching the source of sqlite3 ")
    assert again.path.is_relative_to(tmp_path)
    assert again.path.read_bytes() == first
